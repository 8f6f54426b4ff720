//! The isolation guard: every statement the repositories run passes [`query`] or
//! [`query_scalar`], which refuse (with [`Error::Unscoped`]) a statement that touches a
//! tenant table without tying it to one tenant. The statement is parsed (sqlparser's
//! MySQL dialect) and judged on its syntax tree, so no spelling talks it round:
//!
//! - every `SELECT` — the statement itself, each branch of a `UNION`, each subquery and
//!   derived table — that reads a tenant table ties every tenant table it reads: the
//!   conditions that must all hold (the `WHERE` split at its top-level `AND`s, and the
//!   `ON` of an inner join) include `client_id = ?` for it, or `t.client_id =
//!   u.client_id` with a table `u` tied already (an outer join's `ON` ties only the table
//!   it joins). A top-level `OR` splits nothing, so `… WHERE id = ? OR client_id = ?` or
//!   `… AND client_id = ? OR 1=1` ties nothing;
//! - `UPDATE` and `DELETE` likewise, over the tables they change and join;
//! - `INSERT` into a tenant table names a `client_id` column (an `INSERT … SELECT`'s
//!   query is a `SELECT` as above);
//! - `CALL`: a bound first argument, the tenant id (the write procedures, whose current
//!   bodies are in `procedures/`, take it first and tie their own statements to it;
//!   `tests/guard_scan.rs` checks their bodies with these same rules);
//! - a statement that does not parse is refused when it names a tenant table.
//!
//! It checks chatfleet's own SQL (no user input ever reaches a statement's text), once
//! per statement text: a statement that passed is remembered (there are a few hundred),
//! so the message path pays a hash lookup, not a parse. The one statement that must find
//! a tenant rather than start from one (API key lookup) goes through [`tenant_lookup`],
//! which names why.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::{LazyLock, RwLock};

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments,
    JoinConstraint, JoinOperator, ObjectName, Select, Statement, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind, Value, Visit, Visitor,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use sqlx::MySql;
use sqlx::mysql::MySqlArguments;
use sqlx::query::{Query, QueryScalar};

use crate::error::{Error, Result};

/// Tables that hold tenant data (each has a `client_id` column; `tests/guard_scan.rs`
/// fails when a migration creates one that is not listed here).
pub const TENANT_TABLES: [&str; 17] = [
    "client_configs",
    "agent_modes",
    "conversations",
    "messages",
    "channel_accounts",
    "api_keys",
    "knowledge_documents",
    "usage_daily",
    "mobile_devices",
    "tools",
    "tool_calls",
    "webhooks",
    "webhook_events",
    "webhook_deliveries",
    "webhook_attempts",
    "llm_credentials",
    "conversation_keys",
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
    // MariaDB's shared-lock clause, which the parser does not know, scopes nothing.
    let parsed = sql.trim_end().trim_end_matches(';');
    let parsed = match parsed.len().checked_sub(LOCK_IN_SHARE_MODE.len()) {
        Some(at)
            if parsed.is_char_boundary(at)
                && parsed[at..].eq_ignore_ascii_case(LOCK_IN_SHARE_MODE) =>
        {
            &parsed[..at]
        }
        _ => parsed,
    };
    let statements = match Parser::parse_sql(&MySqlDialect {}, parsed) {
        Ok(statements) => statements,
        Err(_) => {
            // Not SQL this guard can read: fine only if it touches no tenant table.
            let lower = sql.to_ascii_lowercase();
            let words: Vec<&str> = lower
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            return if words.iter().any(|w| TENANT_TABLES.contains(w)) {
                Err(unscoped(sql))
            } else {
                Ok(())
            };
        }
    };
    let mut scope = ScopeCheck::default();
    for statement in &statements {
        if statement.visit(&mut scope).is_break() {
            return Err(unscoped(sql));
        }
    }
    Ok(())
}

const LOCK_IN_SHARE_MODE: &str = "LOCK IN SHARE MODE";

/// The visitor that breaks on the first unscoped part of a statement.
#[derive(Default)]
struct ScopeCheck {
    /// The tied relations of each enclosing `SELECT`, innermost last: a correlated
    /// subquery may tie its table to one of them (`c.client_id = m.client_id`).
    enclosing: Vec<Vec<String>>,
}

impl Visitor for ScopeCheck {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        let scoped = match statement {
            Statement::Insert(insert) => match &insert.table {
                TableObject::TableName(name) if is_tenant_table(name) => insert
                    .columns
                    .iter()
                    .any(|c| last_part(c).as_deref() == Some("client_id")),
                TableObject::TableName(_) => true,
                _ => false,
            },
            Statement::Update(update) => {
                let mut tables = vec![&update.table];
                if let Some(UpdateTableFromKind::AfterSet(from) | UpdateTableFromKind::BeforeSet(from)) =
                    &update.from
                {
                    tables.extend(from);
                }
                tied(&tables, update.selection.as_ref(), &[]).is_some()
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                let mut tables: Vec<&TableWithJoins> = from.iter().collect();
                tables.extend(delete.using.iter().flatten());
                tied(&tables, delete.selection.as_ref(), &[]).is_some()
            }
            Statement::Call(function) => match &function.args {
                FunctionArguments::List(list) => list.args.first().is_some_and(|arg| {
                    matches!(arg, FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) if is_placeholder(e))
                }),
                _ => false,
            },
            _ => true,
        };
        if scoped {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        let tables: Vec<&TableWithJoins> = select.from.iter().collect();
        let outer: Vec<String> = self.enclosing.iter().flatten().cloned().collect();
        match tied(&tables, select.selection.as_ref(), &outer) {
            Some(tied) => {
                self.enclosing.push(tied);
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }
    }

    fn post_visit_select(&mut self, _select: &Select) -> ControlFlow<()> {
        self.enclosing.pop();
        ControlFlow::Continue(())
    }
}

/// The relations of `tables` (and their joins) tied to the bound tenant id by
/// `selection` and the joins' conditions, as the module documents — or `None` when a
/// tenant table among them is not. `outer`: relations an enclosing query tied.
fn tied(
    tables: &[&TableWithJoins],
    selection: Option<&Expr>,
    outer: &[String],
) -> Option<Vec<String>> {
    // (name the statement refers to the table by, whether it is a tenant table)
    let mut relations: Vec<(String, bool)> = Vec::new();
    // Conditions that must hold, and the one table each may tie (None: any).
    let mut conditions: Vec<(&Expr, Option<String>)> = Vec::new();
    for table in tables {
        let factors =
            std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation));
        if factors
            .into_iter()
            .any(|f| matches!(f, TableFactor::NestedJoin { .. }))
        {
            // Parenthesised joins are not used here; judging them is not worth the rules.
            return None;
        }
        relations.extend(relation_name(&table.relation));
        for join in &table.joins {
            let joined = relation_name(&join.relation);
            let (constraint, outer) = match &join.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                    (Some(c), false)
                }
                JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => (Some(c), true),
                _ => (None, true),
            };
            if let Some(JoinConstraint::On(on)) = constraint {
                let only = if outer {
                    Some(joined.as_ref().map_or_else(String::new, |(n, _)| n.clone()))
                } else {
                    None
                };
                conditions.extend(conjuncts(on).into_iter().map(|c| (c, only.clone())));
            }
            relations.extend(joined);
        }
    }
    if !relations.iter().any(|(_, tenant)| *tenant) {
        return Some(Vec::new());
    }
    conditions.extend(
        selection
            .map(conjuncts)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c, None)),
    );
    let only_relation = (relations.len() == 1).then(|| relations[0].0.clone());
    let mut tied: Vec<String> = Vec::new();
    loop {
        let before = tied.len();
        for (condition, only) in &conditions {
            let Some((left, right)) = equality(condition) else {
                continue;
            };
            for (column, other) in [(left, right), (right, left)] {
                let Some(table) = client_id_of(column, only_relation.as_deref()) else {
                    continue;
                };
                let local = |name: &str| relations.iter().any(|(n, _)| n == name);
                let ties = is_placeholder(other)
                    || client_id_of(other, only_relation.as_deref()).is_some_and(|o| {
                        o != table && (tied.contains(&o) || (!local(&o) && outer.contains(&o)))
                    });
                let allowed = only.as_ref().is_none_or(|o| *o == table);
                if ties && allowed && !tied.contains(&table) {
                    tied.push(table);
                }
            }
        }
        if tied.len() == before {
            break;
        }
    }
    relations
        .iter()
        .filter(|(_, tenant)| *tenant)
        .all(|(name, _)| tied.contains(name))
        .then_some(tied)
}

/// The name a table factor is referred to by (its alias, else its table name), and
/// whether it is a tenant table; `None` for a derived table or function (its own query
/// is checked where the visitor meets it).
fn relation_name(factor: &TableFactor) -> Option<(String, bool)> {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            let table = last_part(name)?;
            let by = alias
                .as_ref()
                .map_or_else(|| table.clone(), |a| a.name.value.to_ascii_lowercase());
            Some((by, TENANT_TABLES.contains(&table.as_str())))
        }
        _ => None,
    }
}

/// The conditions that must all hold for `expr` to: its top-level `AND` operands
/// (parentheses looked through).
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

/// The two sides of `a = b`.
fn equality(expr: &Expr) -> Option<(&Expr, &Expr)> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => Some((left, right)),
        _ => None,
    }
}

/// The relation whose `client_id` column `expr` is (`t.client_id`, or a bare `client_id`
/// in a statement over one relation).
fn client_id_of(expr: &Expr, only_relation: Option<&str>) -> Option<String> {
    match expr {
        Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("client_id") => {
            only_relation.map(str::to_owned)
        }
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => parts[1]
            .value
            .eq_ignore_ascii_case("client_id")
            .then(|| parts[0].value.to_ascii_lowercase()),
        Expr::Nested(inner) => client_id_of(inner, only_relation),
        _ => None,
    }
}

fn is_placeholder(expr: &Expr) -> bool {
    matches!(expr, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)))
}

fn is_tenant_table(name: &ObjectName) -> bool {
    last_part(name).is_some_and(|t| TENANT_TABLES.contains(&t.as_str()))
}

/// The last part of a dotted name, lower-cased (`db.messages` is `messages`).
fn last_part(name: &ObjectName) -> Option<String> {
    name.0
        .last()?
        .as_ident()
        .map(|i| i.value.to_ascii_lowercase())
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
            "SELECT content FROM messages WHERE (client_id = ? AND id = ?) AND role = 'user'",
            "SELECT content FROM messages WHERE client_id = ? AND (id = ? OR id = ?)",
            "SELECT content FROM messages WHERE client_id = ? \
             UNION ALL SELECT content FROM messages WHERE client_id = ? LOCK IN SHARE MODE",
            // A correlated subquery tied to its enclosing query's tied table.
            "SELECT (SELECT c.mode FROM conversations c WHERE c.client_id = m.client_id \
             AND c.id = m.conversation_id) AS mode FROM messages m WHERE m.client_id = ?",
            "SELECT push_token FROM mobile_devices WHERE client_id = ? AND device_id = ?",
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
            // A top-level OR escapes the tenant condition.
            "SELECT content FROM messages WHERE id = ? OR client_id = ?",
            "SELECT content FROM messages WHERE client_id = ? AND id = ? OR 1=1",
            "SELECT content FROM messages WHERE (client_id = ? OR 1=1) AND id = ?",
            "UPDATE messages SET state = ? WHERE client_id = ? AND id = ? OR id > 0",
            "DELETE FROM api_keys WHERE id = ? OR client_id = ?",
            // Each branch of a UNION stands alone.
            "SELECT content FROM messages WHERE id = ? \
             UNION SELECT content FROM messages WHERE client_id = ?",
            "SELECT content FROM messages WHERE client_id = ? \
             UNION ALL SELECT content FROM messages WHERE id = ?",
            // The text after the last WHERE is not the statement's WHERE.
            "SELECT content FROM messages WHERE id = ? AND conversation_id IN \
             (SELECT id FROM conversations WHERE client_id = ?)",
            "SELECT id FROM conversations WHERE client_id = ? AND id IN \
             (SELECT conversation_id FROM messages WHERE id = ?)",
            "SELECT x.content FROM (SELECT * FROM messages) x WHERE x.client_id = ?",
            // Compared with itself, with another column, or the wrong table's.
            "SELECT content FROM messages WHERE client_id = client_id",
            "SELECT content FROM messages WHERE client_id = conversation_id",
            "SELECT m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.client_id = ?",
            // An outer join's ON ties only the table it joins.
            "SELECT u.content FROM messages u LEFT JOIN conversations c ON u.client_id = ? \
             AND c.client_id = u.client_id",
            // Tables added later are tenant tables too.
            "SELECT push_token FROM mobile_devices WHERE device_id = ?",
            "INSERT INTO mobile_devices (device_id, push_token) VALUES (?, ?)",
            // What the parser cannot read is refused when it names a tenant table.
            "SELEKT content FROM messages WHERE client_id = ?",
        ] {
            assert!(check(sql).is_err(), "accepted: {sql}");
        }
    }
}
