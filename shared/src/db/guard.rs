//! The isolation guard: every statement the repositories run passes [`query`] or
//! [`query_scalar`], which refuse (with [`Error::Unscoped`]) a statement that touches a
//! tenant table without tying it to one tenant:
//!
//! - `SELECT` / `UPDATE` / `DELETE`: a `client_id = ?` predicate after `WHERE`, and a
//!   `client_id` condition for every further tenant table joined in;
//! - `INSERT`: a `client_id` column;
//! - `CALL`: a bound first argument, the tenant id (the write procedures, whose current
//!   bodies are in `procedures/`, take it first and tie their own statements to it;
//!   `tests/guard_scan.rs` checks their bodies with these same rules).
//!
//! It is a syntactic check over chatfleet's own SQL (no user input ever reaches a
//! statement's text), cheap next to the round trip it guards, and cheaper still the
//! second time: a statement that passed is remembered by its text (there are a few
//! hundred; the check lowercases, splits and rejoins the text, which showed in a
//! worker's profile when it ran on every execution). The one statement that
//! must find a tenant rather than start from one (API key lookup) goes through
//! [`tenant_lookup`], which names why.

use std::collections::HashSet;
use std::sync::{LazyLock, RwLock};

use sqlx::MySql;
use sqlx::mysql::MySqlArguments;
use sqlx::query::{Query, QueryScalar};

use crate::error::{Error, Result};

/// Tables that hold tenant data (each has a `client_id` column).
pub const TENANT_TABLES: [&str; 8] = [
    "client_configs",
    "agent_modes",
    "conversations",
    "messages",
    "channel_accounts",
    "api_keys",
    "knowledge_documents",
    "usage_daily",
];

/// Statements that passed [`check`], by text. Refusals are not remembered: they end
/// in an error, and the next try is checked again.
static PASSED: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(RwLock::default);
/// Most statements remembered; past it the rest are checked every time.
const MAX_PASSED: usize = 4096;

/// [`check`], remembering what passed.
fn checked(sql: &str) -> Result<()> {
    if PASSED.read().is_ok_and(|passed| passed.contains(sql)) {
        return Ok(());
    }
    check(sql)?;
    if let Ok(mut passed) = PASSED.write()
        && passed.len() < MAX_PASSED
    {
        passed.insert(sql.to_owned());
    }
    Ok(())
}

/// A checked statement.
pub(super) fn query(sql: &str) -> Result<Query<'_, MySql, MySqlArguments>> {
    checked(sql)?;
    Ok(sqlx::query(sql))
}

/// A checked statement returning one column.
pub(super) fn query_scalar<O>(sql: &str) -> Result<QueryScalar<'_, MySql, O, MySqlArguments>>
where
    (O,): for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>,
{
    checked(sql)?;
    Ok(sqlx::query_scalar(sql))
}

/// A statement that resolves *which* tenant a credential belongs to, so it cannot be
/// scoped to one beforehand. `why` documents the exception at the call site.
pub(super) fn tenant_lookup<'q>(
    sql: &'q str,
    why: &'static str,
) -> Query<'q, MySql, MySqlArguments> {
    debug_assert!(!why.is_empty());
    sqlx::query(sql)
}

/// Checks one statement against the rules above.
pub fn check(sql: &str) -> Result<()> {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let tenant_refs = words
        .windows(2)
        .filter(|pair| {
            matches!(pair[0], "from" | "join" | "into" | "update")
                && TENANT_TABLES.contains(&pair[1])
        })
        .count();
    if words.first() == Some(&"call") {
        return match lower.split_once('(') {
            Some((_, args)) if args.trim_start().starts_with('?') => Ok(()),
            _ => Err(unscoped(sql)),
        };
    }
    if tenant_refs == 0 {
        return Ok(());
    }
    // Whitespace collapsed and removed around '=', so `u.client_id = ?` is one term.
    let normal = lower
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" =", "=")
        .replace("= ", "=");
    let scoped = match words.first().copied() {
        Some("insert") => {
            let columns = normal
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(cols, _)| cols);
            columns.is_some_and(|cols| cols.split(',').any(|c| c.trim() == "client_id"))
        }
        Some("select" | "update" | "delete") => {
            let where_part = normal.rsplit_once(" where ").map(|(_, w)| w).unwrap_or("");
            let tied = where_part
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
                .any(|term| term == "client_id=?" || term.ends_with(".client_id=?"));
            tied && normal.matches("client_id").count() >= tenant_refs
        }
        _ => false,
    };
    if scoped { Ok(()) } else { Err(unscoped(sql)) }
}

/// The refusal, showing the start of the statement.
fn unscoped(sql: &str) -> Error {
    let mut shown: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    shown.truncate(160);
    Error::Unscoped(shown)
}

#[cfg(test)]
mod tests {
    use super::{check, checked};

    #[test]
    fn remembered_verdicts_are_the_checks_verdicts() {
        let scoped = "SELECT id FROM usage_daily WHERE client_id = ? AND day = ? -- remembered";
        let unscoped = "SELECT id FROM usage_daily WHERE day = ? -- remembered";
        for _ in 0..2 {
            checked(scoped).expect("a scoped statement passes, again");
            assert!(
                checked(unscoped).is_err(),
                "an unscoped one is refused, again"
            );
        }
    }

    #[test]
    fn scoped_statements_pass() {
        for sql in [
            "SELECT id FROM conversations WHERE client_id = ? AND channel = ?",
            "UPDATE messages SET state = ? WHERE client_id = ? AND id = ?",
            "DELETE FROM agent_modes WHERE client_id = ? AND module_key = ?",
            "INSERT INTO messages (client_id, conversation_id) VALUES (?, ?)",
            "SELECT u.id FROM messages u LEFT JOIN messages r ON r.client_id = u.client_id \
             AND r.id = u.reply_message_id WHERE u.client_id = ? AND u.envelope_id = ?",
            "SELECT id, slug FROM clients WHERE slug = ?",
            "SELECT 1",
            "CALL store_reply(?, ?, ?)",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn unscoped_statements_are_refused() {
        for sql in [
            "SELECT id, content FROM messages WHERE conversation_id = ?",
            "SELECT * FROM conversations",
            "UPDATE client_configs SET persona_name = ? WHERE id = ?",
            "DELETE FROM api_keys WHERE id = ?",
            "INSERT INTO agent_modes (module_key, prompt_fragment) VALUES (?, ?)",
            // The second table is joined without a tenant condition.
            "SELECT u.id FROM messages u JOIN conversations c ON c.id = u.conversation_id \
             WHERE u.client_id = ?",
            // client_id compared with something other than a bound tenant id.
            "SELECT id FROM messages WHERE client_id > 0",
            // A procedure takes the tenant id first, bound.
            "CALL store_reply(7, ?)",
            "CALL store_reply()",
        ] {
            assert!(check(sql).is_err(), "accepted: {sql}");
        }
    }
}
