//! `/admin/v1/clients/{id}/knowledge` (documents for retrieval) and
//! `/admin/v1/clients/{id}/usage` (messages and tokens per day).

use axum::body::Body;
use axum::extract::State;

use crate::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::db::Registered;

use super::resolve;
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::wire::{KnowledgeDocumentOut, UsageDayOut, UsageMonthOut, UsageOut, UsageTotalOut};

/// Largest document accepted.
const MAX_DOCUMENT_BYTES: usize = 5 * 1024 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/clients/{id}/knowledge", get(list).post(create))
        .route(
            "/admin/v1/clients/{id}/knowledge/{document_id}",
            delete(remove),
        )
        .route("/admin/v1/clients/{id}/usage", get(usage))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDocumentBody {
    title: String,
    source: Option<String>,
    /// Plain text or markdown, at most 5 MiB.
    content: String,
}

/// The client's knowledge documents.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/knowledge", params(("id" = String, Path, description = "client id or slug")),
    security(("admin_token" = [])), responses((status = 200, body = Vec<KnowledgeDocumentOut>)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<KnowledgeDocumentOut>>> {
    let client = resolve(&state, &id).await?;
    let documents = state.db().tenant(client.id).knowledge().list().await?;
    Ok(Json(documents.into_iter().map(Into::into).collect()))
}

/// Add a document: chunked, embedded and stored in the client's own collection.
/// The same content again answers 200 with the existing document.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/knowledge", params(("id" = String, Path, description = "client id or slug")),
    request_body = NewDocumentBody, security(("admin_token" = [])),
    responses((status = 201, body = KnowledgeDocumentOut), (status = 200, body = KnowledgeDocumentOut),
        (status = 413, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
        (status = 502, description = "the embeddings provider or vector store failed; nothing was stored", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Response> {
    let client = resolve(&state, &id).await?;
    let bytes = crate::channels::read_body(raw, MAX_DOCUMENT_BYTES + MAX_DOCUMENT_BYTES / 5)
        .await
        .map_err(|_| too_large())?;
    let req: NewDocumentBody = crate::error::parse_json(&bytes)?;
    if req.content.len() > MAX_DOCUMENT_BYTES {
        return Err(too_large());
    }
    if req.content.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_document",
            "content must not be empty",
        ));
    }
    let title = req.title.trim();
    if title.is_empty() || title.len() > 255 {
        return Err(ApiError::invalid("title must be 1-255 characters"));
    }
    let hash: [u8; 32] = Sha256::digest(req.content.as_bytes()).into();
    let document_id = match state
        .db()
        .tenant(client.id)
        .knowledge()
        .register(title, req.source.as_deref(), &hash)
        .await?
    {
        Registered::Existing(existing) => {
            let doc = state
                .db()
                .tenant(client.id)
                .knowledge()
                .get(existing)
                .await?
                .ok_or_else(|| ApiError::not_found("document vanished"))?;
            return Ok((StatusCode::OK, Json(KnowledgeDocumentOut::from(doc))).into_response());
        }
        Registered::New(new) => new,
    };
    // The tenant's own key for the embeddings provider, if it brought one.
    let own = state
        .db()
        .tenant(client.id)
        .llm_credentials()
        .list()
        .await?
        .into_iter()
        .find(|c| c.provider == state.knowledge().provider());
    let own_key = own
        .as_ref()
        .map(|c| {
            state
                .secrets()
                .open_llm_key(client.id, &c.provider, &c.key_sealed)
        })
        .transpose()?;
    let own = own
        .as_ref()
        .zip(own_key.as_deref())
        .map(|(c, api_key)| shared::knowledge::OwnKey {
            api_key,
            base_url: c.base_url.as_deref(),
        });
    match state
        .knowledge()
        .ingest(client.id, document_id, title, &req.content, own)
        .await
    {
        Ok(chunks) => {
            state
                .db()
                .tenant(client.id)
                .knowledge()
                .set_chunk_count(document_id, u32::try_from(chunks).unwrap_or(u32::MAX))
                .await?;
        }
        Err(e) => {
            // Nothing half-stored: the store cleaned its chunks; drop the catalogue row.
            state
                .db()
                .tenant(client.id)
                .knowledge()
                .delete(document_id)
                .await?;
            tracing::error!(error = %e, client_id = %client.id, "knowledge ingestion failed");
            let code = match e {
                shared::Error::Embedding(_) => "embedding_failed",
                _ => "vector_store_failed",
            };
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                code,
                "the document could not be indexed; nothing was stored",
            ));
        }
    }
    let doc = state
        .db()
        .tenant(client.id)
        .knowledge()
        .get(document_id)
        .await?
        .ok_or_else(|| ApiError::not_found("document vanished"))?;
    tracing::info!(client_id = %client.id, document_id, chunks = doc.chunk_count, "knowledge document indexed");
    Ok((StatusCode::CREATED, Json(KnowledgeDocumentOut::from(doc))).into_response())
}

fn too_large() -> ApiError {
    ApiError::too_large(
        "document_too_large",
        format!("content must be at most {MAX_DOCUMENT_BYTES} bytes"),
    )
}

/// Remove a document and its chunks.
#[utoipa::path(delete, path = "/admin/v1/clients/{id}/knowledge/{document_id}",
    params(("id" = String, Path, description = "client id or slug"), ("document_id" = u64, Path)),
    security(("admin_token" = [])), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path((id, document_id)): Path<(String, u64)>,
) -> Result<StatusCode> {
    let client = resolve(&state, &id).await?;
    if state
        .db()
        .tenant(client.id)
        .knowledge()
        .get(document_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no document {document_id}")));
    }
    state
        .knowledge()
        .delete_document(client.id, document_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not remove document chunks");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "vector_store_failed",
                "the document's chunks could not be removed; retry",
            )
        })?;
    state
        .db()
        .tenant(client.id)
        .knowledge()
        .delete(document_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct UsageRange {
    /// First day, YYYY-MM-DD (default: 30 days ago).
    from: Option<NaiveDate>,
    /// Last day, inclusive (default: today).
    to: Option<NaiveDate>,
}

/// Messages answered, tokens spent, tool calls made and cost per day (of the client's
/// timezone), their total, and the client's month against its budget.
#[utoipa::path(get, path = "/admin/v1/clients/{id}/usage", params(("id" = String, Path, description = "client id or slug"), UsageRange),
    security(("admin_token" = [])), responses((status = 200, body = UsageOut)))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(range): Query<UsageRange>,
) -> Result<Json<UsageOut>> {
    let client = resolve(&state, &id).await?;
    let period = shared::cache::SpendPeriod::at(&client.timezone, chrono::Utc::now());
    let to = range.to.unwrap_or(period.day);
    let from = range.from.unwrap_or(to - chrono::Duration::days(30));
    if from > to {
        return Err(ApiError::invalid("from must not be after to"));
    }
    let usage = state.db().tenant(client.id).usage();
    let days = usage.days(from, to).await?;
    let total = UsageTotalOut::from(shared::db::UsageDay::total(to, &days));
    let (month_micros, _) = usage.spent(&period).await?;
    let budget = state
        .db()
        .tenant(client.id)
        .configs()
        .get()
        .await?
        .map(|c| c.budget)
        .unwrap_or_default();
    Ok(Json(UsageOut {
        currency: state.currency().map(str::to_owned),
        total,
        days: days.into_iter().map(UsageDayOut::from).collect(),
        month: UsageMonthOut {
            month: period.month,
            spent: month_micros as f64 / 1e6,
            budget_monthly: budget.monthly,
            over_budget: budget.monthly_micros().is_some_and(|b| month_micros >= b),
        },
    }))
}
