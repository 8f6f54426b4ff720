//! A small ChromaDB HTTP API v2 client: get-or-create a collection, upsert, query and
//! delete by metadata. Every call is scoped by `client_id` in the metadata filter too.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::ids::ClientId;

const BASE: &str = "/api/v2/tenants/default_tenant/databases/default_database";

#[derive(Debug, Clone)]
pub(super) struct Chroma {
    http: reqwest::Client,
    url: String,
}

/// A collection's server-side id.
#[derive(Debug, Clone)]
pub(super) struct Collection(String);

#[derive(Deserialize)]
struct CollectionBody {
    id: String,
}

#[derive(Deserialize)]
struct QueryBody {
    documents: Option<Vec<Vec<Option<String>>>>,
}

impl Chroma {
    /// A client of the server at `url`, sending `token` (when not empty) the two ways
    /// Chroma's token authentication accepts it.
    pub(super) fn new(url: &str, timeout: Duration, token: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if !token.is_empty() {
            for (name, value) in [
                (reqwest::header::AUTHORIZATION, format!("Bearer {token}")),
                (
                    reqwest::header::HeaderName::from_static("x-chroma-token"),
                    token.to_owned(),
                ),
            ] {
                if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&value) {
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
            }
        }
        Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
            url: format!("{}{BASE}", url.trim_end_matches('/')),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .map_err(|e| Error::Vector(e.to_string()))?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(response)
        } else {
            let status = response.status();
            let mut body = response.text().await.unwrap_or_default();
            body.truncate(300);
            Err(Error::Vector(format!("ChromaDB answered {status}: {body}")))
        }
    }

    pub(super) async fn collection(&self, name: &str, client_id: ClientId) -> Result<Collection> {
        let response = self
            .call(
                self.http
                    .post(format!("{}/collections", self.url))
                    .json(&json!({
                        "name": name,
                        "get_or_create": true,
                        "metadata": { "client_id": client_id.get(), "hnsw:space": "cosine" },
                    })),
            )
            .await?;
        let body: CollectionBody = response
            .json()
            .await
            .map_err(|e| Error::Vector(e.to_string()))?;
        Ok(Collection(body.id))
    }

    pub(super) async fn find_collection(&self, name: &str) -> Result<Option<Collection>> {
        let response = self
            .call(self.http.get(format!("{}/collections/{name}", self.url)))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| Error::Vector(e.to_string()))?;
        match body.get("id").and_then(Value::as_str) {
            Some(id) => Ok(Some(Collection(id.to_owned()))),
            // Chroma reports a missing collection as an error body on some versions.
            None => Ok(None),
        }
    }

    pub(super) async fn upsert(
        &self,
        collection: &Collection,
        client_id: ClientId,
        document_id: u64,
        title: &str,
        pieces: &[String],
        vectors: &[Vec<f32>],
    ) -> Result<()> {
        let ids: Vec<String> = (0..pieces.len())
            .map(|i| format!("doc{document_id}-{i}"))
            .collect();
        let metadatas: Vec<Value> = (0..pieces.len())
            .map(|i| json!({ "client_id": client_id.get(), "document_id": document_id, "chunk": i, "title": title }))
            .collect();
        self.call(
            self.http
                .post(format!("{}/collections/{}/upsert", self.url, collection.0))
                .json(&json!({
                    "ids": ids, "embeddings": vectors, "documents": pieces, "metadatas": metadatas,
                })),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn query(
        &self,
        collection: &Collection,
        client_id: ClientId,
        vector: &[f32],
        top_k: u32,
    ) -> Result<Vec<String>> {
        let response = self
            .call(
                self.http
                    .post(format!("{}/collections/{}/query", self.url, collection.0))
                    .json(&json!({
                        "query_embeddings": [vector],
                        "n_results": top_k,
                        "where": { "client_id": client_id.get() },
                        "include": ["documents", "distances"],
                    })),
            )
            .await?;
        let body: QueryBody = response
            .json()
            .await
            .map_err(|e| Error::Vector(e.to_string()))?;
        Ok(body
            .documents
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect())
    }

    pub(super) async fn delete_document(
        &self,
        collection: &Collection,
        client_id: ClientId,
        document_id: u64,
    ) -> Result<()> {
        self.call(self.http.post(format!("{}/collections/{}/delete", self.url, collection.0)).json(&json!({
            "where": { "$and": [ { "client_id": client_id.get() }, { "document_id": document_id } ] },
        })))
        .await?;
        Ok(())
    }
}
