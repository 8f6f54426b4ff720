//! A tenant's tools: HTTP endpoints of its own that its bot calls through the model's
//! function calling (the calls are recorded by [`super::tool_calls`]). A definition is
//! part of the tenant's behaviour: every write bumps `config_version`, so caches on every
//! replica see it with the next message.

use serde_json::Value;
use sqlx::Row;

use super::configs::bump_version;
use super::guard;
use super::is_duplicate_key;
use super::text_column::text_column;
use crate::error::{Error, Result};
use crate::ids::ClientId;

/// How a tool's endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMethod {
    /// Arguments not in the URL go as query parameters.
    Get,
    /// Arguments not in the URL go as a JSON body.
    Post,
}

text_column!(ToolMethod, "tool method", { Get => "GET", Post => "POST" });

/// Which kind of credential a tool's endpoint takes (the credential itself is sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolAuthKind {
    Bearer,
    Header,
    Basic,
}

text_column!(ToolAuthKind, "tool auth kind", {
    Bearer => "bearer",
    Header => "header",
    Basic => "basic",
});

/// A tool the platform provides, switched on per tenant in its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BuiltinTool {
    /// The model hands the conversation to a person, as the handoff phrase does.
    HandoffToHuman,
    /// The model answers with a text and choices the user can pick.
    OfferChoices,
}

text_column!(BuiltinTool, "built-in tool", {
    HandoffToHuman => "handoff_to_human",
    OfferChoices => "offer_choices",
});

impl BuiltinTool {
    pub const ALL: [Self; 2] = [Self::HandoffToHuman, Self::OfferChoices];
}

/// A tool definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON Schema object: the arguments the model must give.
    pub parameters: Value,
    pub method: ToolMethod,
    /// May hold `{param}` placeholders, filled URL-encoded from the arguments.
    pub url: String,
    pub auth_kind: Option<ToolAuthKind>,
    /// The credential, sealed (`SecretBox::seal_tool_auth`).
    pub auth_sealed: Option<Vec<u8>>,
    pub timeout_ms: u32,
    /// Whether a call changes something (calls carry an `Idempotency-Key`; a dry-run
    /// replay never makes them).
    pub side_effects: bool,
    pub is_active: bool,
}

/// The longest a tool call may take.
pub const MAX_TOOL_TIMEOUT_MS: u32 = 30_000;
/// Longest tool description.
pub const MAX_TOOL_DESCRIPTION: usize = 2_000;
/// Largest parameters schema, serialized.
pub const MAX_TOOL_SCHEMA_BYTES: usize = 16 * 1024;

impl Tool {
    /// Checks the definition's shape; each problem names its field. (Whether `http://`
    /// is allowed is the operator's setting, checked by the caller.)
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let mut problems = Vec::new();
        if self.description.trim().is_empty() || self.description.len() > MAX_TOOL_DESCRIPTION {
            problems.push(format!(
                "description must be 1-{MAX_TOOL_DESCRIPTION} characters"
            ));
        }
        if let Err(p) = validate_parameters(&self.parameters) {
            problems.push(p);
        }
        if let Err(p) = validate_url(&self.url, &self.parameters) {
            problems.push(p);
        }
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&self.timeout_ms) {
            problems.push(format!("timeout_ms must be 1-{MAX_TOOL_TIMEOUT_MS}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems.join("; ")))
        }
    }

    /// The `{param}` placeholders of the URL, in order.
    pub fn placeholders(&self) -> Vec<&str> {
        placeholders(&self.url)
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(Error::Invalid(
            "name must match ^[a-zA-Z0-9_-]{1,64}$".into(),
        ));
    }
    if name.parse::<BuiltinTool>().is_ok() {
        return Err(Error::Invalid(format!(
            "name {name:?} is a built-in tool's (switch it on in the config's builtin_tools)"
        )));
    }
    Ok(())
}

/// A parameters schema: a valid JSON Schema whose instances are objects.
fn validate_parameters(schema: &Value) -> std::result::Result<(), String> {
    if !schema.is_object() || schema.get("type") != Some(&Value::from("object")) {
        return Err(r#"parameters must be a JSON Schema object with "type": "object""#.into());
    }
    if schema.to_string().len() > MAX_TOOL_SCHEMA_BYTES {
        return Err(format!(
            "parameters must be at most {MAX_TOOL_SCHEMA_BYTES} bytes"
        ));
    }
    if let Err(e) = jsonschema::meta::validate(schema) {
        return Err(format!("parameters is not a valid JSON Schema: {e}"));
    }
    jsonschema::validator_for(schema)
        .map(drop)
        .map_err(|e| format!("parameters is not a usable JSON Schema: {e}"))
}

/// An `http(s)://` URL whose placeholders name properties of the schema and stand only
/// in its path or query.
fn validate_url(url: &str, schema: &Value) -> std::result::Result<(), String> {
    if url.len() > 2048 {
        return Err("url must be at most 2048 characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("url must be http:// or https://".into());
    }
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() || host.contains('{') || host.contains("%7B") {
        return Err("url must name a host (placeholders stand only in the path or query)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not hold credentials (use auth)".into());
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for name in placeholders(url) {
        if !properties.is_some_and(|p| p.contains_key(name)) {
            return Err(format!(
                "url placeholder {{{name}}} is not a property of parameters"
            ));
        }
    }
    Ok(())
}

fn placeholders(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        found.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    found
}

const TOOL_COLUMNS: &str = "name, description, parameters, method, url, auth_kind, \
    auth_sealed, timeout_ms, side_effects, is_active";

/// A tenant's tool definitions.
#[derive(Debug)]
pub struct Tools<'a> {
    pool: crate::db::Placed<'a>,
    /// The tenant every statement is bound to.
    client_id: ClientId,
}

impl<'a> Tools<'a> {
    pub(super) fn new(pool: crate::db::Placed<'a>, client_id: ClientId) -> Self {
        Self { pool, client_id }
    }

    /// Every tool of the tenant, by name.
    pub async fn list(&self) -> Result<Vec<Tool>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {TOOL_COLUMNS} FROM tools WHERE client_id = ? ORDER BY name"
        ))?
        .bind(client_id.get())
        .fetch_all(self.pool.get().await?)
        .await?
        .iter()
        .map(tool_from_row)
        .collect()
    }

    /// The tenant's active tools (what its turns offer the model), by name.
    pub(super) async fn active(&self) -> Result<Vec<Tool>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|t| t.is_active)
            .collect())
    }

    pub async fn get(&self, name: &str) -> Result<Option<Tool>> {
        let client_id = self.client_id;
        guard::query(&format!(
            "SELECT {TOOL_COLUMNS} FROM tools WHERE client_id = ? AND name = ?"
        ))?
        .bind(client_id.get())
        .bind(name)
        .fetch_optional(self.pool.get().await?)
        .await?
        .as_ref()
        .map(tool_from_row)
        .transpose()
    }

    /// Creates a tool: a taken name is [`Error::Conflict`], more than `max` tools
    /// [`Error::Invalid`]. Returns the new configuration version.
    pub async fn create(&self, tool: &Tool, max: u32) -> Result<u64> {
        let client_id = self.client_id;
        tool.validate()?;
        let mut tx = self.pool.get().await?.begin().await?;
        // The version bump locks the tenant's config row: creations queue, so the count
        // below holds until this one commits.
        let version = bump_version(&mut tx, client_id).await?;
        let count: i64 = guard::query_scalar("SELECT COUNT(*) FROM tools WHERE client_id = ?")?
            .bind(client_id.get())
            .fetch_one(&mut *tx)
            .await?;
        if count >= i64::from(max) {
            return Err(Error::Invalid(format!(
                "a tenant may have at most {max} tools (tools.max_per_tenant)"
            )));
        }
        let inserted = guard::query(
            "INSERT INTO tools (client_id, name, description, parameters, method, url, \
             auth_kind, auth_sealed, timeout_ms, side_effects, is_active) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .bind(client_id.get())
        .bind(&tool.name)
        .bind(&tool.description)
        .bind(tool.parameters.to_string())
        .bind(tool.method)
        .bind(&tool.url)
        .bind(tool.auth_kind)
        .bind(&tool.auth_sealed)
        .bind(tool.timeout_ms)
        .bind(tool.side_effects)
        .bind(tool.is_active)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                return Err(Error::Conflict(format!(
                    "a tool named {:?} already exists",
                    tool.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(version)
    }

    /// Replaces a tool's definition (its name stays). `None` when there is no such tool.
    pub async fn replace(&self, tool: &Tool) -> Result<Option<u64>> {
        let client_id = self.client_id;
        tool.validate()?;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE tools SET description = ?, parameters = ?, method = ?, url = ?, \
             auth_kind = ?, auth_sealed = ?, timeout_ms = ?, side_effects = ?, is_active = ? \
             WHERE client_id = ? AND name = ?",
        )?
        .bind(&tool.description)
        .bind(tool.parameters.to_string())
        .bind(tool.method)
        .bind(&tool.url)
        .bind(tool.auth_kind)
        .bind(&tool.auth_sealed)
        .bind(tool.timeout_ms)
        .bind(tool.side_effects)
        .bind(tool.is_active)
        .bind(client_id.get())
        .bind(&tool.name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Deletes a tool. `None` when there is no such tool.
    pub async fn delete(&self, name: &str) -> Result<Option<u64>> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query("DELETE FROM tools WHERE client_id = ? AND name = ?")?
            .bind(client_id.get())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let version = bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Replaces a tool's sealed credential with `new` if it is still `old` (re-sealing
    /// under a new key), bumping the configuration version (caches carry the sealed
    /// bytes); false when it changed meanwhile.
    pub async fn replace_sealed(&self, name: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let client_id = self.client_id;
        let mut tx = self.pool.get().await?.begin().await?;
        let done = guard::query(
            "UPDATE tools SET auth_sealed = ? WHERE client_id = ? AND name = ? AND auth_sealed = ?",
        )?
        .bind(new)
        .bind(client_id.get())
        .bind(name)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        bump_version(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn tool_from_row(row: &sqlx::mysql::MySqlRow) -> Result<Tool> {
    let parameters: String = row.try_get("parameters")?;
    Ok(Tool {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        parameters: serde_json::from_str(&parameters)
            .map_err(|e| Error::Internal(format!("a stored tool schema is not JSON: {e}")))?,
        method: row.try_get("method")?,
        url: row.try_get("url")?,
        auth_kind: row.try_get("auth_kind")?,
        auth_sealed: row.try_get("auth_sealed")?,
        timeout_ms: row.try_get("timeout_ms")?,
        side_effects: row.try_get("side_effects")?,
        is_active: row.try_get("is_active")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(url: &str, parameters: Value) -> Tool {
        Tool {
            name: "order_status".into(),
            description: "Looks up an order".into(),
            parameters,
            method: ToolMethod::Get,
            url: url.into(),
            auth_kind: None,
            auth_sealed: None,
            timeout_ms: 5000,
            side_effects: false,
            is_active: true,
        }
    }

    fn order_schema() -> Value {
        json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]})
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        assert!(
            tool("https://shop.example/orders/{order_id}", order_schema())
                .validate()
                .is_ok()
        );
        let problem = |t: Tool| t.validate().expect_err("refused").to_string();
        assert!(problem(tool("ftp://shop.example/x", order_schema())).contains("url"));
        assert!(
            problem(tool("https://shop.example/{missing}", order_schema())).contains("{missing}")
        );
        assert!(problem(tool("https://{order_id}.example/", order_schema())).contains("host"));
        assert!(
            problem(tool("https://shop.example/", json!({"type": "string"})))
                .contains("parameters")
        );
        assert!(
            problem(tool(
                "https://shop.example/",
                json!({"type": "object", "properties": {"n": {"type": 12}}})
            ))
            .contains("parameters")
        );
        let mut named = tool("https://shop.example/", order_schema());
        named.name = "has space".into();
        assert!(problem(named.clone()).contains("name"));
        named.name = "offer_choices".into();
        assert!(problem(named).contains("built-in"));
        let mut slow = tool("https://shop.example/", order_schema());
        slow.timeout_ms = 30_001;
        assert!(problem(slow).contains("timeout_ms"));
    }
}
