//! Tenant knowledge for retrieval (RAG): documents are split into overlapping chunks,
//! embedded, and stored in ChromaDB (HTTP API v2), in a collection that belongs to one
//! tenant alone ([`collection_name`] is the only way to name one). Every chunk also
//! carries `client_id` in its metadata and every query filters on it, so even a
//! misrouted collection could not leak another tenant's text.
//!
//! The embedding wire formats live here (not in the worker's LLM module) because both
//! ingress (ingestion) and the worker (retrieval) embed.

mod chroma;
mod chunk;
mod embed;

pub use chunk::chunks;
pub use embed::{Embedder, OwnKey};

use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::settings::{EmbeddingsSettings, LlmSettings, VectorSettings};

/// The collection of one tenant's knowledge.
pub fn collection_name(prefix: &str, client_id: ClientId) -> String {
    format!("{prefix}-t-{client_id}")
}

/// Ingests and retrieves tenant knowledge.
#[derive(Debug, Clone)]
pub struct Knowledge {
    chroma: chroma::Chroma,
    embedder: Embedder,
    /// `embeddings.provider`: a tenant's own key for it embeds the tenant's knowledge.
    provider: String,
    prefix: String,
    chunk_chars: usize,
    chunk_overlap: usize,
}

impl Knowledge {
    pub fn new(
        vector: &VectorSettings,
        embeddings: &EmbeddingsSettings,
        llm: &LlmSettings,
    ) -> Result<Self> {
        let provider = llm.providers.get(&embeddings.provider).ok_or_else(|| {
            Error::Settings(format!(
                "embeddings.provider {:?} is not configured",
                embeddings.provider
            ))
        })?;
        Ok(Self {
            chroma: chroma::Chroma::new(&vector.url, vector.timeout, vector.token.expose()),
            embedder: Embedder::new(provider, &embeddings.model),
            provider: embeddings.provider.clone(),
            prefix: vector.prefix.clone(),
            chunk_chars: vector.chunk_chars,
            chunk_overlap: vector.chunk_overlap,
        })
    }

    /// The provider embeddings are made with (`embeddings.provider`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    fn collection(&self, client_id: ClientId) -> String {
        collection_name(&self.prefix, client_id)
    }

    /// Splits, embeds and stores a document; returns its number of chunks. On failure
    /// nothing of the document is left in the store.
    pub async fn ingest(
        &self,
        client_id: ClientId,
        document_id: u64,
        title: &str,
        content: &str,
        own: Option<OwnKey<'_>>,
    ) -> Result<usize> {
        let pieces = chunks(content, self.chunk_chars, self.chunk_overlap);
        if pieces.is_empty() {
            return Err(Error::Invalid("the document has no text".into()));
        }
        let vectors = self.embedder.embed(&pieces, own).await?;
        let collection = self
            .chroma
            .collection(&self.collection(client_id), client_id)
            .await?;
        let stored = self
            .chroma
            .upsert(
                &collection,
                client_id,
                document_id,
                title,
                &pieces,
                &vectors,
            )
            .await;
        if let Err(e) = stored {
            let _ = self
                .chroma
                .delete_document(&collection, client_id, document_id)
                .await;
            return Err(e);
        }
        Ok(pieces.len())
    }

    /// The `top_k` chunks of the tenant's knowledge closest to `query`, best first.
    pub async fn search(
        &self,
        client_id: ClientId,
        query: &str,
        top_k: u32,
        own: Option<OwnKey<'_>>,
    ) -> Result<Vec<String>> {
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let Some(collection) = self
            .chroma
            .find_collection(&self.collection(client_id))
            .await?
        else {
            return Ok(Vec::new());
        };
        let vector = self.embedder.embed(&[query.to_owned()], own).await?;
        let Some(vector) = vector.into_iter().next() else {
            return Ok(Vec::new());
        };
        self.chroma
            .query(&collection, client_id, &vector, top_k)
            .await
    }

    /// Removes a document's chunks.
    pub async fn delete_document(&self, client_id: ClientId, document_id: u64) -> Result<()> {
        match self
            .chroma
            .find_collection(&self.collection(client_id))
            .await?
        {
            Some(collection) => {
                self.chroma
                    .delete_document(&collection, client_id, document_id)
                    .await
            }
            None => Ok(()),
        }
    }
}
