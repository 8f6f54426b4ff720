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

    /// One vector per text, in order. Any failure is [`Error::Embedding`].
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            out.extend(self.embed_batch(batch).await?);
        }
        Ok(out)
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let base = self.provider.base_url.trim_end_matches('/');
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
        if !self.provider.api_key.expose().is_empty() {
            request = request.bearer_auth(self.provider.api_key.expose());
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
