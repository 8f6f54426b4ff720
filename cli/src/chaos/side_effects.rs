//! The chaos run's side effects: a fraction of the main tenant's messages ask the model
//! to call `record`, a POST tool (side effects) on a recording endpoint, with the
//! message's own marker as arguments. Whatever dies meanwhile, a message's call may reach
//! the endpoint more than once only with the same `Idempotency-Key` (a call made but not
//! recorded before its worker died), never under another key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use shared::db::{Db, Tool, ToolMethod};
use shared::ids::ClientId;
use worker::tool_sim::ToolSim;

/// Every this many messages of a main-tenant conversation, one calls the tool.
const EVERY: usize = 5;

/// The settings the fleet's processes need to reach the endpoint (on 127.0.0.2).
pub(super) const SETTINGS: [(&str, &str); 2] = [
    ("CHATFLEET__TOOLS__ALLOW_HTTP", "true"),
    ("CHATFLEET__TOOLS__ALLOWED_PRIVATE_NETWORKS", "127.0.0.2/32"),
];

/// Gives the tenant the `record` tool, pointed at `endpoint`.
pub(super) async fn add_tool(
    db: &Db,
    client_id: ClientId,
    endpoint: &ToolSim,
) -> anyhow::Result<()> {
    let tool = Tool {
        name: "record".into(),
        description: "Records that a message asked for it".into(),
        parameters: json!({ "type": "object", "properties": { "c": { "type": "integer" }, "m": { "type": "integer" } }, "required": ["c", "m"] }),
        method: ToolMethod::Post,
        url: format!("{}/record", endpoint.base_url()),
        auth_kind: None,
        auth_sealed: None,
        timeout_ms: 10_000,
        side_effects: true,
        is_active: true,
    };
    db.tenant(client_id).tools().create(&tool, 32).await?;
    Ok(())
}

/// The text of message `m` of conversation `c` (`main`: a main-tenant conversation).
pub(super) fn message_text(c: usize, m: usize, main: bool) -> String {
    if main && m % EVERY == EVERY - 1 {
        format!("c{c} m{m}\nTOOL record {{\"c\": {c}, \"m\": {m}}}")
    } else {
        format!("c{c} m{m}")
    }
}

/// What the endpoint saw.
#[derive(Debug, Default)]
pub(super) struct SideEffects {
    pub calls: usize,
    pub messages: usize,
    /// Calls of a message made again with the same key.
    pub repeated_same_key: usize,
    /// Messages whose call came under more than one key, or none.
    pub violations: Vec<String>,
}

pub(super) fn check(endpoint: &ToolSim) -> SideEffects {
    let mut keys: BTreeMap<(i64, i64), Vec<Option<String>>> = BTreeMap::new();
    let calls = endpoint.calls();
    for call in &calls {
        let (c, m) = (
            call.body["c"].as_i64().unwrap_or(-1),
            call.body["m"].as_i64().unwrap_or(-1),
        );
        keys.entry((c, m))
            .or_default()
            .push(call.idempotency_key.clone());
    }
    let mut report = SideEffects {
        calls: calls.len(),
        messages: keys.len(),
        ..SideEffects::default()
    };
    for ((c, m), seen) in keys {
        let distinct: BTreeSet<_> = seen.iter().collect();
        if distinct.len() > 1 || seen.iter().any(Option::is_none) {
            report.violations.push(format!(
                "c{c} m{m}: called {} times under keys {distinct:?}",
                seen.len()
            ));
        } else {
            report.repeated_same_key += seen.len() - 1;
        }
    }
    report
}

impl std::fmt::Display for SideEffects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  tool side effects:    {} calls for {} messages ({} made again with the same Idempotency-Key); {} under another key",
            self.calls,
            self.messages,
            self.repeated_same_key,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(10) {
            writeln!(f, "    {v}")?;
        }
        Ok(())
    }
}
