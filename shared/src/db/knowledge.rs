//! The `knowledge_documents` catalogue (the chunks themselves live in the vector store).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::{guard, is_duplicate_key};
use crate::error::Result;
use crate::ids::ClientId;

#[derive(Debug, Clone)]
pub struct KnowledgeDocument {
    pub id: u64,
    pub title: String,
    pub source: Option<String>,
    /// SHA-256 of the content, hex.
    pub content_hash: String,
    pub chunk_count: u32,
    pub created_at: DateTime<Utc>,
}

/// Whether a document was new or already known (same content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New(u64),
    Existing(u64),
}

const COLUMNS: &str = "id, title, source, content_hash, chunk_count, created_at";

#[derive(Debug)]
pub struct KnowledgeDocuments<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> KnowledgeDocuments<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Registers a document by content hash (re-uploading the same content is a no-op).
    pub async fn register(
        &self,
        title: &str,
        source: Option<&str>,
        hash: &[u8; 32],
    ) -> Result<Registered> {
        let client_id = self.client_id;
        let inserted = guard::query(
            "INSERT INTO knowledge_documents (client_id, title, source, content_hash) VALUES (?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(title)
        .bind(source)
        .bind(hash.as_slice())
        .execute(self.pool.get().await?)
        .await;
        match inserted {
            Ok(done) => Ok(Registered::New(done.last_insert_id())),
            Err(e) if is_duplicate_key(&e) => {
                let id: u64 = guard::query_scalar(
                    "SELECT id FROM knowledge_documents WHERE client_id = ? AND content_hash = ?",
                )?
                .bind(client_id.get())
                .bind(hash.as_slice())
                .fetch_one(self.pool.get().await?)
                .await?;
                Ok(Registered::Existing(id))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn set_chunk_count(&self, id: u64, chunks: u32) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "UPDATE knowledge_documents SET chunk_count = ? WHERE client_id = ? AND id = ?",
        )?
        .bind(chunks)
        .bind(client_id.get())
        .bind(id)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: u64) -> Result<Option<KnowledgeDocument>> {
        let client_id = self.client_id;
        let row = guard::query(&format!(
            "SELECT {COLUMNS} FROM knowledge_documents WHERE client_id = ? AND id = ?"
        ))?
        .bind(client_id.get())
        .bind(id)
        .fetch_optional(self.pool.get().await?)
        .await?;
        row.as_ref().map(document).transpose()
    }

    pub async fn list(&self) -> Result<Vec<KnowledgeDocument>> {
        let client_id = self.client_id;
        let rows = guard::query(&format!(
            "SELECT {COLUMNS} FROM knowledge_documents WHERE client_id = ? ORDER BY id ASC"
        ))?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter().map(document).collect()
    }

    pub async fn delete(&self, id: u64) -> Result<bool> {
        let client_id = self.client_id;
        let done = guard::query("DELETE FROM knowledge_documents WHERE client_id = ? AND id = ?")?
            .bind(client_id.get())
            .bind(id)
            .execute(self.pool.get().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn document(r: &MySqlRow) -> Result<KnowledgeDocument> {
    let hash: Vec<u8> = r.try_get("content_hash")?;
    Ok(KnowledgeDocument {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        source: r.try_get("source")?,
        content_hash: hex::encode(hash),
        chunk_count: r.try_get("chunk_count")?,
        created_at: r.try_get("created_at")?,
    })
}
