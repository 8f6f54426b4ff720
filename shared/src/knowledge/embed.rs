//! Embeddings: Ollama `POST /api/embed` `{ model, input: [..] }` → `{ embeddings }`, or
//! OpenAI-compatible `POST /v1/embeddings` `{ model, input: [..] }` → `{ data: [{ embedding }] }`.

use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::settings::{ProviderKind, ProviderSettings};

/// Most texts sent in one embeddings request.
const BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct Embedder {
    http: reqwest::Client,
    provider: ProviderSettings,
    model: String,
}

/// A tenant's own key for the embeddings provider (and its own base URL, if it set one).
#[derive(Clone, Copy)]
pub struct OwnKey<'a> {
    pub api_key: &'a str,
    pub base_url: Option<&'a str>,
}

impl std::fmt::Debug for OwnKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnKey")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct OllamaEmbed {
    embeddings: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct OpenAiEmbed {
    data: Vec<OpenAiItem>,
}

#[derive(Deserialize)]
struct OpenAiItem {
    embedding: Vec<f32>,
}

impl Embedder {
    pub fn new(provider: &ProviderSettings, model: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(provider.timeout)
                .build()
                .unwrap_or_default(),
            provider: provider.clone(),
            model: model.to_owned(),
        }
    }

    /// One vector per text, in order, with the tenant's own key when it has one. Any
    /// failure is [`Error::Embedding`].
    pub async fn embed(&self, texts: &[String], own: Option<OwnKey<'_>>) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            out.extend(self.embed_batch(batch, own).await?);
        }
        Ok(out)
    }

    async fn embed_batch(
        &self,
        texts: &[String],
        own: Option<OwnKey<'_>>,
    ) -> Result<Vec<Vec<f32>>> {
        let base = own
            .and_then(|k| k.base_url)
            .unwrap_or(&self.provider.base_url)
            .trim_end_matches('/');
        let api_key = own.map_or(self.provider.api_key.expose().as_str(), |k| k.api_key);
        let (url, body) = match self.provider.kind {
            ProviderKind::Ollama => (
                format!("{base}/api/embed"),
                json!({ "model": self.model, "input": texts }),
            ),
            ProviderKind::Openai => (
                format!("{base}/v1/embeddings"),
                json!({ "model": self.model, "input": texts }),
            ),
        };
        let mut request = self.http.post(url).json(&body);
        if !api_key.is_empty() {
            request = request.bearer_auth(api_key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Embedding(e.to_string()))?;
        if !response.status().is_success() {
            return Err(Error::Embedding(format!(
                "provider answered {}",
                response.status()
            )));
        }
        let vectors = match self.provider.kind {
            ProviderKind::Ollama => response.json::<OllamaEmbed>().await.map(|r| r.embeddings),
            ProviderKind::Openai => response
                .json::<OpenAiEmbed>()
                .await
                .map(|r| r.data.into_iter().map(|d| d.embedding).collect()),
        }
        .map_err(|e| Error::Embedding(e.to_string()))?;
        if vectors.len() != texts.len() {
            return Err(Error::Embedding(format!(
                "{} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }
}
