//! Calling a tenant's tools: the arguments the model gave checked against the tool's
//! schema, the URL filled in, the tenant's credential added, the endpoint called within
//! the tool's timeout under the address rules of [`shared::net`], redirects followed (at most
//! [`MAX_REDIRECTS`], each checked again), the answer cut at [`MAX_RESULT_BYTES`]. A
//! call never fails a turn: whatever goes wrong is the tool's result, for the model to
//! read. Also the built-in tools' definitions ([`builtin_spec`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use serde_json::{Value, json};
use shared::db::{BuiltinTool, Tool, ToolCallStatus, ToolMethod};
use shared::ids::ClientId;
use shared::metric;
use shared::secrets::{SecretBox, ToolCredential};
use shared::settings::ToolsSettings;

use crate::llm::ToolSpec;

/// Most redirects followed.
const MAX_REDIRECTS: usize = 3;
/// Largest part of an answer given to the model.
pub(crate) const MAX_RESULT_BYTES: usize = 64 * 1024;

/// What a call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: ToolCallStatus,
    /// What the model is given back.
    pub result: String,
}

impl Outcome {
    fn failed(status: ToolCallStatus, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            result: format!("error: {message}"),
        }
    }
}

/// Calls tenants' tools for one worker.
#[derive(Clone)]
pub(crate) struct ToolRunner {
    http: reqwest::Client,
    allow_http: bool,
    allowed: Arc<Vec<ipnet::IpNet>>,
    secrets: SecretBox,
    /// Most rounds of tool calls in a turn (`tools.max_rounds`).
    pub max_rounds: u32,
}

impl std::fmt::Debug for ToolRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRunner")
            .field("allow_http", &self.allow_http)
            .field("allowed", &self.allowed)
            .field("max_rounds", &self.max_rounds)
            .finish()
    }
}

impl ToolRunner {
    pub(crate) fn new(settings: &ToolsSettings, secrets: SecretBox) -> anyhow::Result<Self> {
        let allowed = Arc::new(settings.allowed_networks());
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(shared::net::GuardedResolver {
                allowed: allowed.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("chatfleet-tools/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            allow_http: settings.allow_http,
            allowed,
            secrets,
            max_rounds: settings.max_rounds,
        })
    }

    /// Calls `tool` of `client_id` with the model's `arguments`; side-effect calls carry
    /// `idempotency_key`. Counted in [`metric::TOOL_CALLS`] by outcome.
    pub(crate) async fn call(
        &self,
        client_id: ClientId,
        tool: &Tool,
        arguments: &str,
        idempotency_key: &str,
    ) -> Outcome {
        let outcome = match self.prepare(client_id, tool, arguments) {
            Ok(request) => {
                let timeout = Duration::from_millis(u64::from(tool.timeout_ms));
                match tokio::time::timeout(timeout, self.send(request, tool, idempotency_key)).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::failed(
                        ToolCallStatus::Error,
                        format!("the endpoint did not answer within {} ms", tool.timeout_ms),
                    ),
                }
            }
            Err(refused) => refused,
        };
        count(outcome.status);
        outcome
    }

    /// The first request of a call, or why there is none.
    fn prepare(
        &self,
        client_id: ClientId,
        tool: &Tool,
        arguments: &str,
    ) -> Result<Prepared, Outcome> {
        let args = checked_arguments(tool, arguments)?;
        let (url, rest) = fill_url(tool, args)?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| Outcome::failed(ToolCallStatus::Invalid, format!("bad URL: {e}")))?;
        self.check_url(&url)?;
        let credential = match &tool.auth_sealed {
            Some(sealed) => Some(
                ToolCredential::open(&self.secrets, client_id, &tool.name, sealed).map_err(
                    |e| {
                        tracing::error!(tool = %tool.name, error = %e, "a tool's credential does not open");
                        Outcome::failed(ToolCallStatus::Error, "the tool's credential could not be used")
                    },
                )?,
            ),
            None => None,
        };
        Ok(Prepared {
            url,
            method: tool.method,
            rest,
            credential,
        })
    }

    /// Refuses a URL whose scheme is not allowed or whose host is a literal address that
    /// may not be reached (names are checked by the resolver).
    fn check_url(&self, url: &reqwest::Url) -> Result<(), Outcome> {
        shared::net::check_target(url, self.allow_http, &self.allowed)
            .map_err(|reason| Outcome::failed(ToolCallStatus::Refused, reason))
    }

    /// Sends the call, following redirects, and reads the answer.
    async fn send(&self, first: Prepared, tool: &Tool, idempotency_key: &str) -> Outcome {
        let Prepared {
            mut url,
            mut method,
            rest,
            credential,
        } = first;
        let origin = url.origin();
        for hop in 0..=MAX_REDIRECTS {
            let mut request = match method {
                ToolMethod::Get => {
                    let mut request = self.http.get(url.clone());
                    if hop == 0 && !rest.is_empty() {
                        request = request.query(&query_pairs(&rest));
                    }
                    request
                }
                ToolMethod::Post => self
                    .http
                    .post(url.clone())
                    .json(&Value::Object(rest.clone())),
            };
            // The credential goes only to the tool's own origin.
            if let Some(credential) = &credential
                && url.origin() == origin
            {
                request = authorized(request, credential);
            }
            if tool.side_effects {
                request = request.header("Idempotency-Key", idempotency_key);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if hop > 0 => {
                    let failed = transport_outcome(&e);
                    return Outcome {
                        result: format!("{} (redirected)", failed.result),
                        ..failed
                    };
                }
                Err(e) => return transport_outcome(&e),
            };
            let status = response.status();
            if status.is_redirection() {
                if hop == MAX_REDIRECTS {
                    break;
                }
                let Some(next) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                else {
                    return Outcome::failed(
                        ToolCallStatus::Error,
                        format!("the endpoint answered {status} without a usable Location"),
                    );
                };
                if let Err(refused) = self.check_url(&next) {
                    return Outcome {
                        result: format!("{} (redirected)", refused.result),
                        ..refused
                    };
                }
                // 303, and 301/302 after a POST, continue as a GET (as browsers do).
                if status == reqwest::StatusCode::SEE_OTHER
                    || (method == ToolMethod::Post && matches!(status.as_u16(), 301 | 302))
                {
                    method = ToolMethod::Get;
                }
                url = next;
                continue;
            }
            let body = read_capped(response).await;
            return match body {
                Ok(text) if status.is_success() => Outcome {
                    status: ToolCallStatus::Ok,
                    result: text,
                },
                Ok(text) => Outcome::failed(
                    ToolCallStatus::Error,
                    format!("the endpoint answered {status}: {text}"),
                ),
                Err(e) => Outcome::failed(ToolCallStatus::Error, e),
            };
        }
        Outcome::failed(
            ToolCallStatus::Refused,
            format!("more than {MAX_REDIRECTS} redirects"),
        )
    }
}

/// The first request of a call.
struct Prepared {
    url: reqwest::Url,
    method: ToolMethod,
    /// The arguments not in the URL.
    rest: serde_json::Map<String, Value>,
    credential: Option<ToolCredential>,
}

/// The model's arguments, parsed and checked against the tool's schema.
fn checked_arguments(
    tool: &Tool,
    arguments: &str,
) -> Result<serde_json::Map<String, Value>, Outcome> {
    let text = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Outcome::failed(
            ToolCallStatus::Invalid,
            format!("the arguments are not JSON: {e}"),
        )
    })?;
    let validator = jsonschema::validator_for(&tool.parameters).map_err(|e| {
        Outcome::failed(
            ToolCallStatus::Invalid,
            format!("the tool's schema is unusable: {e}"),
        )
    })?;
    let problems: Vec<String> = validator
        .iter_errors(&value)
        .take(3)
        .map(|e| format!("{} (at {})", e, e.instance_path()))
        .collect();
    if !problems.is_empty() {
        return Err(Outcome::failed(
            ToolCallStatus::Invalid,
            format!(
                "the arguments do not match the tool's parameters: {}",
                problems.join("; ")
            ),
        ));
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Outcome::failed(
            ToolCallStatus::Invalid,
            "the arguments must be a JSON object",
        )),
    }
}

/// The URL with its placeholders filled (URL-encoded), and the arguments left over.
fn fill_url(
    tool: &Tool,
    mut args: serde_json::Map<String, Value>,
) -> Result<(String, serde_json::Map<String, Value>), Outcome> {
    let mut url = tool.url.clone();
    for name in tool.placeholders() {
        let Some(value) = args.remove(name) else {
            return Err(Outcome::failed(
                ToolCallStatus::Invalid,
                format!("the argument {name:?} is required (the URL uses it)"),
            ));
        };
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let encoded: String = url::form_urlencoded::byte_serialize(text.as_bytes()).collect();
        url = url.replace(&format!("{{{name}}}"), &encoded.replace('+', "%20"));
    }
    Ok((url, args))
}

/// Query parameters of a GET: strings as they are, other values as JSON text.
fn query_pairs(args: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    args.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn authorized(
    request: reqwest::RequestBuilder,
    credential: &ToolCredential,
) -> reqwest::RequestBuilder {
    match credential {
        ToolCredential::Bearer { token } => request.bearer_auth(token),
        ToolCredential::Basic { username, password } => {
            request.basic_auth(username, Some(password))
        }
        ToolCredential::Header { name, value } => {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(true);
                    request.header(name, value)
                }
                _ => request,
            }
        }
    }
}

/// A transport failure as the tool's result: a refused address, a timeout, a
/// connection that failed.
fn transport_outcome(e: &reqwest::Error) -> Outcome {
    if let Some(refused) = shared::net::refusal(e) {
        return Outcome::failed(ToolCallStatus::Refused, refused);
    }
    if e.is_timeout() {
        return Outcome::failed(ToolCallStatus::Error, "the endpoint timed out");
    }
    Outcome::failed(ToolCallStatus::Error, "the endpoint could not be reached")
}

/// The answer's text, cut at [`MAX_RESULT_BYTES`] (with a note saying so).
async fn read_capped(response: reqwest::Response) -> Result<String, String> {
    use futures::StreamExt;
    let mut read: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| "the endpoint's answer broke off".to_owned())?;
        let room = MAX_RESULT_BYTES - read.len();
        if chunk.len() > room {
            read.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        read.extend_from_slice(&chunk);
    }
    let mut text = String::from_utf8_lossy(&read).into_owned();
    if cut {
        // A cut inside a character leaves a replacement character; drop it.
        text = text.trim_end_matches('\u{fffd}').to_owned();
        text.push_str(&format!(
            "\n[the answer was longer than {} KiB and was cut here]",
            MAX_RESULT_BYTES / 1024
        ));
    }
    Ok(text)
}

/// Counts a call by outcome.
pub(crate) fn count(status: ToolCallStatus) {
    metrics::counter!(metric::TOOL_CALLS, "outcome" => status.as_str()).increment(1);
}

/// What the model is told about a tenant's tool.
pub(crate) fn spec(tool: &Tool) -> ToolSpec {
    ToolSpec {
        name: tool.name.clone(),
        description: tool.description.clone(),
        parameters: tool.parameters.clone(),
    }
}

/// What the model is told about a built-in tool.
pub(crate) fn builtin_spec(tool: BuiltinTool) -> ToolSpec {
    match tool {
        BuiltinTool::HandoffToHuman => ToolSpec {
            name: tool.as_str().to_owned(),
            description: "Hand the conversation to a human agent, when the user asks for a \
                person or you cannot help."
                .to_owned(),
            parameters: json!({
                "type": "object",
                "properties": { "reason": { "type": "string", "description": "Why, in a few words." } },
            }),
        },
        BuiltinTool::OfferChoices => ToolSpec {
            name: tool.as_str().to_owned(),
            description: "Answer with a short text and a few choices the user can pick \
                (shown as buttons); use it instead of a text answer."
                .to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string" },
                    "choices": { "type": "array", "items": { "type": "string", "minLength": 1, "maxLength": 100 }, "minItems": 1, "maxItems": 10 },
                },
                "required": ["text", "choices"],
            }),
        },
    }
}

/// `offer_choices` arguments, checked: the text and the choices.
pub(crate) fn offered_choices(arguments: &str) -> Result<(String, Vec<String>), String> {
    let spec = builtin_spec(BuiltinTool::OfferChoices);
    let value: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("error: the arguments are not JSON: {e}"))?;
    let validator = jsonschema::validator_for(&spec.parameters).map_err(|e| e.to_string())?;
    if let Some(problem) = validator.iter_errors(&value).next() {
        return Err(format!("error: {problem}"));
    }
    let text = value["text"].as_str().unwrap_or_default().to_owned();
    let choices = value["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    Ok((text, choices))
}

/// How long since `started`, in whole milliseconds, for the record.
pub(crate) fn elapsed_ms(started: Instant) -> u32 {
    u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(url: &str) -> Tool {
        Tool {
            name: "order_status".into(),
            description: "Looks up an order".into(),
            parameters: json!({"type": "object", "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}}, "required": ["order_id"]}),
            method: ToolMethod::Get,
            url: url.into(),
            auth_kind: None,
            auth_sealed: None,
            timeout_ms: 1000,
            side_effects: false,
            is_active: true,
        }
    }

    #[test]
    fn arguments_are_checked_and_placeholders_filled_encoded() {
        let t = tool("https://shop.example/orders/{order_id}");
        let args =
            checked_arguments(&t, r#"{"order_id": "A/1 2", "verbose": true}"#).expect("valid");
        let (url, rest) = fill_url(&t, args).expect("filled");
        assert_eq!(url, "https://shop.example/orders/A%2F1%202");
        assert_eq!(rest.get("verbose"), Some(&Value::Bool(true)));
        let refused = checked_arguments(&t, r#"{"verbose": "yes"}"#).expect_err("invalid");
        assert_eq!(refused.status, ToolCallStatus::Invalid);
        assert!(refused.result.contains("order_id"), "{}", refused.result);
        let not_json = checked_arguments(&t, "{order").expect_err("not JSON");
        assert!(not_json.result.contains("not JSON"), "{}", not_json.result);
    }

    #[test]
    fn choices_are_read_from_their_arguments() {
        let (text, choices) =
            offered_choices(r#"{"text": "Which size?", "choices": ["S", "M"]}"#).expect("valid");
        assert_eq!(
            (text.as_str(), choices),
            ("Which size?", vec!["S".to_owned(), "M".to_owned()])
        );
        assert!(offered_choices(r#"{"text": "x", "choices": []}"#).is_err());
    }
}
