//! The record of every tool call a tenant's turns made, by turn and index: written before
//! a turn goes on, so a turn run again after a crash reuses the results instead of
//! calling again (see `worker/src/turn/tool_loop.rs`).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::guard;
use super::text_column::text_column;
use crate::error::Result;
use crate::ids::{ClientId, ConversationId, EnvelopeId};

/// What a recorded tool call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallStatus {
    /// The endpoint answered 2xx (or a built-in tool ran).
    Ok,
    /// A non-2xx, a timeout, an unreachable endpoint.
    Error,
    /// The URL was refused (a private address, a scheme not allowed, too many redirects).
    Refused,
    /// The arguments did not match the schema, or the tool does not exist.
    Invalid,
    /// Not made: a dry-run replay does not call a side-effect tool.
    NotCalled,
}

text_column!(ToolCallStatus, "tool call status", {
    Ok => "ok",
    Error => "error",
    Refused => "refused",
    Invalid => "invalid",
    NotCalled => "not_called",
});

/// One tool call of a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRecord {
    /// The envelope id of the turn's first message.
    pub turn_id: EnvelopeId,
    /// The call's position in the turn, from 0.
    pub call_index: u32,
    pub tool: String,
    /// The arguments as the model gave them (JSON text).
    pub arguments: String,
    pub status: ToolCallStatus,
    /// What the model was given back.
    pub result: String,
    pub duration_ms: u32,
}

/// A recorded call as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRow {
    pub call: ToolCallRecord,
    pub created_at: DateTime<Utc>,
}

const CALL_COLUMNS: &str =
    "turn_id, call_index, tool, arguments, status, result, duration_ms, created_at";

/// The record of a tenant's tool calls.
#[derive(Debug)]
pub struct ToolCalls<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> ToolCalls<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// The calls a turn made, in order (empty for a turn that has not run before).
    pub async fn for_turn(&self, turn_id: EnvelopeId) -> Result<Vec<ToolCallRecord>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {CALL_COLUMNS} FROM tool_calls WHERE client_id = ? AND turn_id = ? \
             ORDER BY call_index"
        ))?
        .bind(client_id.get())
        .bind(turn_id.as_uuid())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(|r| call_from_row(r).map(|c| c.call))
        .collect()
    }

    /// Records a call (a call of the same index recorded before, by a run of the turn
    /// that made other calls, is replaced).
    pub async fn record(
        &self,
        conversation_id: ConversationId,
        call: &ToolCallRecord,
    ) -> Result<()> {
        let client_id = self.client_id;
        guard::query(
            "INSERT INTO tool_calls (client_id, conversation_id, turn_id, call_index, tool, \
             arguments, status, result, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE tool = VALUES(tool), arguments = VALUES(arguments), \
             status = VALUES(status), result = VALUES(result), duration_ms = VALUES(duration_ms)",
        )?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(call.turn_id.as_uuid())
        .bind(call.call_index)
        .bind(&call.tool)
        .bind(&call.arguments)
        .bind(call.status)
        .bind(&call.result)
        .bind(call.duration_ms)
        .execute(self.pool.get().await?)
        .await?;
        Ok(())
    }

    /// A conversation's latest calls (at most `limit`), oldest first.
    pub async fn for_conversation(
        &self,
        conversation_id: ConversationId,
        limit: u32,
    ) -> Result<Vec<ToolCallRow>> {
        let client_id = self.client_id;
        let mut rows = guard::query(&format!(
            "SELECT {CALL_COLUMNS} FROM tool_calls WHERE client_id = ? AND conversation_id = ? \
             ORDER BY id DESC LIMIT ?"
        ))?
        .bind(client_id.get())
        .bind(conversation_id.get())
        .bind(limit)
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(call_from_row)
        .collect::<Result<Vec<_>>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// Calls per day (UTC) from `from` to `to`, inclusive, ascending.
    pub async fn per_day(&self, from: NaiveDate, to: NaiveDate) -> Result<Vec<(NaiveDate, u64)>> {
        let client_id = self.client_id;
        let rows = guard::query(
            "SELECT DATE(created_at) AS day, COUNT(*) AS calls FROM tool_calls \
             WHERE client_id = ? AND created_at >= ? AND created_at < ? \
             GROUP BY DATE(created_at) ORDER BY day",
        )?
        .bind(client_id.get())
        .bind(from.and_hms_opt(0, 0, 0))
        .bind(to.succ_opt().unwrap_or(to).and_hms_opt(0, 0, 0))
        .fetch_all(self.pool.get().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let calls: i64 = r.try_get("calls")?;
                Ok((r.try_get("day")?, u64::try_from(calls).unwrap_or(0)))
            })
            .collect()
    }
}

fn call_from_row(row: &sqlx::mysql::MySqlRow) -> Result<ToolCallRow> {
    let turn: Uuid = row.try_get("turn_id")?;
    Ok(ToolCallRow {
        call: ToolCallRecord {
            turn_id: EnvelopeId::from_uuid(turn),
            call_index: row.try_get("call_index")?,
            tool: row.try_get("tool")?,
            arguments: row.try_get("arguments")?,
            status: row.try_get("status")?,
            result: row.try_get("result")?,
            duration_ms: row.try_get("duration_ms")?,
        },
        created_at: row.try_get("created_at")?,
    })
}
