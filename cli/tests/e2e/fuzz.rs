//! The whole HTTP surface fuzzed by a real third-party client: schemathesis (PyPI,
//! installed by `scripts/test`) reads `/openapi.json` of a live ingress and sends every
//! operation a bounded, seeded set of generated requests — documented examples, the
//! coverage phase's edge cases, random fuzzing and stateful sequences. Every response
//! must be no 5xx, a documented status, content type and headers, a body matching the
//! documented schema (errors in the `ErrorBody` format), and no operation may answer
//! without its credentials. Tenant-facing routes are fuzzed with one tenant's
//! credentials while another tenant's conversation is watched: nothing of it may change
//! or be read.

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use shared::db::Role;
use shared::testkit::eventually;

use crate::support::{Platform, WAIT};

/// The same cases every run.
const SEED: &str = "20261205";
/// What every response is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,ignored_auth";

fn schemathesis() -> PathBuf {
    let st = std::env::var("CHATFLEET_SCHEMATHESIS").map_or_else(
        |_| {
            let home = std::env::var("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/chatfleet-venv/bin/st")
        },
        PathBuf::from,
    );
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: scripts/test installs it \
         (or: pip install schemathesis==4.32.5, then set CHATFLEET_SCHEMATHESIS)",
        st.display()
    );
    st
}

/// One bounded schemathesis run over the operations `filter` selects; panics with its
/// report when it found anything.
async fn fuzz(config: &std::path::Path, base: &str, filter: [&str; 2]) {
    let mut command = std::process::Command::new(schemathesis());
    command
        // Its own cache (.schemathesis/) goes beside the config, not into the checkout.
        .current_dir(config.parent().expect("a directory"))
        .arg("--config-file")
        .arg(config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(filter)
        // One worker: schemathesis's threads share Python's parser, which has failed
        // with "AST constructor recursion depth mismatch" under two.
        .args(["--checks", CHECKS, "--seed", SEED, "--workers", "1"])
        .args(["--request-timeout", "40", "--no-color"]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis {filter:?} found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "no case ran:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_the_whole_http_surface() {
    let origin = "https://fuzz.example";
    let p = Platform::start_with(
        &[
            // The fuzzer sends bad tokens and many sessions on purpose: limits would
            // leave most cases answered 429.
            ("CHATFLEET__ADMIN__FAILED_AUTH_PER_MINUTE", "1000000"),
            ("CHATFLEET__EDGE__SESSIONS_PER_IP_PER_MINUTE", "1000000"),
            ("CHATFLEET__EDGE__SENDS_PER_SESSION_PER_MINUTE", "1000000"),
            ("CHATFLEET__PLANS__STARTER__SESSIONS_PER_MINUTE", "1000000"),
        ],
        1,
    )
    .await;
    let tenant = p.widget_tenant("fuzzed", origin).await;
    let (status, _) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/channels", tenant.id),
            Some(json!({ "channel": "mobile", "external_account_id": "fuzz-app" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, widget) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let mobile: Value = p
        .http
        .post(format!("{}/mobile/v1/sessions", p.base))
        .header("x-app-key", "fuzz-app")
        .json(&json!({ "device_id": "fuzz-device" }))
        .send()
        .await
        .expect("mobile session")
        .json()
        .await
        .expect("json");

    // Another tenant's conversation, watched through the run.
    let bystander = p.tenant("bystander").await;
    let (reply, _) = p
        .ask(&bystander.api_key, "private", "my secret order 4711", "")
        .await;
    assert!(reply["text"].is_string());
    let conversation = p.conversation(bystander.id, "private").await;
    // Settled: the reply's delivery recorded.
    let before = eventually(WAIT, "the reply's delivery recorded", || async {
        let stored = p.stored(bystander.id, conversation).await;
        stored
            .iter()
            .all(|m| m.role != Role::Assistant || m.delivery_status.is_some())
            .then(|| format!("{stored:?}"))
    })
    .await;

    let dir = std::env::temp_dir().join(format!("cf-fuzz-{}", p.env.id));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("schemathesis.toml");
    let token = |v: &Value| v["token"].as_str().expect("token").to_owned();
    std::fs::write(
        &config,
        format!(
            r#"headers = {{ Origin = "{origin}" }}

[generation]
max-examples = 10
codec = "ascii"
allow-x00 = false

# Long-polls answer at once: a case waits for nothing.
[parameters]
wait = 0

[auth.openapi.admin_token]
bearer = "{admin}"

[auth.openapi.api_key]
bearer = "{api_key}"

[auth.openapi.session_token]
bearer = "{widget}"

[[operations]]
include-path-regex = "^/mobile/"
headers = {{ Authorization = "Bearer {mobile}" }}
"#,
            admin = p.env.settings.admin.token.expose(),
            api_key = tenant.api_key,
            widget = token(&widget),
            mobile = token(&mobile),
        ),
    )
    .expect("config");

    // The channels first, as the fuzzed tenant: the bystander's conversation must come
    // out unchanged and unread.
    // SSE streams never end: a request/response fuzzer waits out its timeout on each
    // (their refusals are tested in streaming.rs).
    fuzz(
        &config,
        &p.base,
        ["--exclude-path-regex", "^/admin/|/stream$"],
    )
    .await;
    assert_eq!(
        format!("{:?}", p.stored(bystander.id, conversation).await),
        before,
        "another tenant's conversation changed"
    );
    let read = p
        .http
        .get(format!("{}/api/v1/conversations/private/messages", p.base))
        .bearer_auth(&tenant.api_key)
        .send()
        .await
        .expect("read");
    assert_eq!(
        read.status(),
        StatusCode::NOT_FOUND,
        "a conversation id is per tenant"
    );
    // Then the admin API, which may touch every tenant.
    fuzz(&config, &p.base, ["--include-path-regex", "^/admin/"]).await;
    let _ = std::fs::remove_dir_all(&dir);
    p.stop().await;
}

/// Findings of the fuzzer, each pinned: a path segment or query parameter of the wrong
/// type is a 400 in the documented error format (axum answered in plain text), and an
/// error of any operation is documented (the `default` response).
#[tokio::test]
async fn malformed_paths_and_queries_are_errors_in_the_documented_format() {
    let p = Platform::start().await;
    let tenant = p.tenant("typed").await;
    for (method, path, code) in [
        (
            Method::DELETE,
            format!("/admin/v1/clients/{}/api-keys/abc", tenant.id),
            "invalid_path",
        ),
        (
            Method::GET,
            "/admin/v1/clients?limit=lots".to_owned(),
            "invalid_query",
        ),
        (
            Method::GET,
            "/admin/v1/audit?after=-1".to_owned(),
            "invalid_query",
        ),
    ] {
        let response = p
            .http
            .request(method, format!("{}{path}", p.base))
            .bearer_auth(p.env.settings.admin.token.expose())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let doc: Value = p
        .http
        .get(format!("{}/openapi.json", p.base))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            assert!(
                operation["responses"].get("default").is_some(),
                "{method} {path} documents no default error"
            );
        }
    }
    p.stop().await;
}
