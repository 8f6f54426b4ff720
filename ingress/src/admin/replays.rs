//! `POST /admin/v1/clients/{id}/replays`: a dry-run replay of a tenant's archived
//! messages from the console — today's configuration answers them again, nothing is
//! stored or sent, and each comes back with its original reply beside the new one
//! ([`shared::replay`], as `chatfleet replay --mode dry-run` does it).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::replay::{Archived, Range};
use uuid::Uuid;

use super::{body, channel_param, resolve};
use crate::AppState;
use crate::error::{ApiError, Result};
use crate::extract::Path;

/// How long a replay waits for the workers' answers (inside `http.request_timeout_s`'s
/// default of 40 s); envelopes still unanswered then are counted as failed.
const ANSWERS_WAIT: Duration = Duration::from_secs(30);
/// Most envelopes one replay answers again.
const MAX_ENVELOPES: usize = 100;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/v1/clients/{id}/replays", post(dry_run))
}

/// Which of the tenant's archived messages to answer again.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    /// Messages received at or after this time.
    from: DateTime<Utc>,
    /// … and at or before this time (default: now).
    to: Option<DateTime<Utc>>,
    /// Only this channel (`api`, `widget`, `mobile`, `whatsapp`).
    channel: Option<String>,
    /// Only this conversation (its id in the channel).
    conversation: Option<String>,
    /// 1-100, default 20: the first messages of the range.
    #[schema(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// One message answered again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayedOut {
    envelope_id: Uuid,
    channel: &'static str,
    conversation: String,
    received_at: DateTime<Utc>,
    message: String,
    /// The reply it got at the time (null when the archive holds none).
    original_reply: Option<String>,
    /// Today's answer (null when none came within the wait).
    replayed_reply: Option<String>,
    changed: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayOut {
    replayed: usize,
    changed: usize,
    /// Messages no answer came for within 30 s.
    failed: usize,
    /// Messages of erased conversations in the range (skipped).
    erased: usize,
    items: Vec<ReplayedOut>,
}

/// Answer a tenant's archived messages again with today's configuration, storing and
/// sending nothing; each with its original reply and today's.
#[utoipa::path(post, path = "/admin/v1/clients/{id}/replays", params(("id" = String, Path, description = "client id or slug")),
    request_body = ReplayBody, security(("admin_token" = [])),
    responses((status = 200, body = ReplayOut), (status = 404, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn dry_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: Body,
) -> Result<Json<ReplayOut>> {
    let client = resolve(&state, &id).await?;
    let req: ReplayBody = body(raw).await?;
    let to = req.to.unwrap_or_else(Utc::now);
    if req.from > to {
        return Err(ApiError::invalid("from must not be after to"));
    }
    let limit = req.limit.unwrap_or(20);
    if !(1..=MAX_ENVELOPES).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1-{MAX_ENVELOPES}"
        )));
    }
    let channel = req.channel.as_deref().map(channel_param).transpose()?;
    let range = Range {
        from: req.from,
        to,
        client: Some(client.id),
        channel,
        conversation: req.conversation,
        limit: Some(limit),
    };
    let broker = state.broker();
    let Archived {
        envelopes,
        originals,
        erased,
    } = shared::replay::read_archive(broker, state.data_keys(), &range)
        .await
        .map_err(|e| ApiError::broker_unavailable(&e))?;
    let answers = shared::replay::dry_run(
        broker,
        state.publisher(),
        state.data_keys(),
        &envelopes,
        ANSWERS_WAIT,
        |_| {},
    )
    .await
    .map_err(|e| ApiError::broker_unavailable(&e))?;
    let items: Vec<ReplayedOut> = envelopes
        .iter()
        .map(|env| {
            let original_reply = originals.get(&env.id).cloned();
            let replayed_reply = answers.get(&env.id).map(|(text, _)| text.clone());
            ReplayedOut {
                envelope_id: *env.id.as_uuid(),
                channel: env.channel.as_str(),
                conversation: env.external_id.expose().clone(),
                received_at: env.received_at,
                message: env.message.as_prompt_text(),
                changed: replayed_reply.is_some() && replayed_reply != original_reply,
                original_reply,
                replayed_reply,
            }
        })
        .collect();
    Ok(Json(ReplayOut {
        replayed: items.len(),
        changed: items.iter().filter(|i| i.changed).count(),
        failed: items.iter().filter(|i| i.replayed_reply.is_none()).count(),
        erased: erased.len(),
        items,
    }))
}
