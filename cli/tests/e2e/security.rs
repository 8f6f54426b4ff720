//! Security: widget and mobile sessions end on every replica within a second of the four
//! events that revoke them; operators are told apart, scoped, audited and throttled; the
//! admin API can leave the public port.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::testkit::eventually;
use tokio::time::Instant;

use crate::support::{Platform, chatfleet};

/// How soon every replica must refuse a revoked session.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// A quick look (no wait) at the session's conversation: 200/204 while it stands.
async fn look(p: &Platform, base: &str, channel: &str, token: &str) -> (StatusCode, Value) {
    p.session_poll(base, channel, token, "", 0).await
}

/// Asserts the session works on `base` now and is refused there (401 `session_revoked`)
/// within [`REVOCATION_BOUND`] of `revoke` returning.
async fn revoked_within_bound<F, Fut>(
    p: &Platform,
    base: &str,
    channel: &str,
    token: &str,
    what: &str,
    revoke: F,
) where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let (status, body) = look(p, base, channel, token).await;
    assert!(
        status.is_success(),
        "{what}: the session works before: {status} {body}"
    );
    revoke().await;
    let revoked_at = Instant::now();
    let body = eventually(REVOCATION_BOUND, what, || async {
        let (status, body) = look(p, base, channel, token).await;
        (status == StatusCode::UNAUTHORIZED).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "session_revoked", "{what}: {body}");
    eprintln!(
        "{what}: refused on the other replica after {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn sessions_end_on_every_replica_within_a_second_of_each_revocation() {
    let p = Platform::start().await;
    let other = p.another_ingress().await;
    let origin = "https://shop.example";
    let widget_session = |slug: String| {
        let p = &p;
        async move {
            let (status, s) = p
                .widget_session(&p.base, origin, json!({ "client": slug }))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{s}");
            s["token"].as_str().expect("token").to_owned()
        }
    };
    let admin = |method: Method, path: String, body: Option<Value>| {
        let p = &p;
        async move {
            let (status, answer) = p.admin(method, &path, body).await;
            assert!(status.is_success(), "{path}: {status} {answer}");
            answer
        }
    };

    // 1. The origin is removed from the widget account's allowed_origins.
    let shop = p.widget_tenant("shop", origin).await;
    let token = widget_session(shop.slug.clone()).await;
    let accounts = admin(
        Method::GET,
        format!("/admin/v1/clients/{}/channels", shop.id),
        None,
    )
    .await;
    let account = accounts[0]["id"].as_u64().expect("account id");
    revoked_within_bound(&p, &other, "widget", &token, "origin removed", || async {
        admin(
            Method::PATCH,
            format!("/admin/v1/clients/{}/channels/{account}", shop.id),
            Some(json!({ "settings": { "allowed_origins": ["https://new-shop.example"] } })),
        )
        .await;
    })
    .await;
    let (status, _) = p
        .widget_session(&p.base, origin, json!({ "client": shop.slug }))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the removed origin opens no session"
    );

    // 2. The mobile channel account is deleted.
    let app = p.tenant("app").await;
    let created = admin(
        Method::POST,
        format!("/admin/v1/clients/{}/channels", app.id),
        Some(json!({ "channel": "mobile", "external_account_id": "app-key-revoked" })),
    )
    .await;
    let opened = p
        .http
        .post(format!("{}/mobile/v1/sessions", p.base))
        .header("x-app-key", "app-key-revoked")
        .json(&json!({ "device_id": "device-1" }))
        .send()
        .await
        .expect("mobile session");
    assert_eq!(opened.status(), StatusCode::CREATED);
    let mobile: Value = opened.json().await.expect("json");
    let mobile_token = mobile["token"].as_str().expect("token");
    let account = created["id"].as_u64().expect("id");
    revoked_within_bound(
        &p,
        &other,
        "mobile",
        mobile_token,
        "account deleted",
        || async {
            admin(
                Method::DELETE,
                format!("/admin/v1/clients/{}/channels/{account}", app.id),
                None,
            )
            .await;
        },
    )
    .await;

    // 3. The tenant is suspended; no new session either.
    let suspended = p.widget_tenant("suspended", origin).await;
    let token = widget_session(suspended.slug.clone()).await;
    revoked_within_bound(&p, &other, "widget", &token, "tenant suspended", || async {
        admin(
            Method::PATCH,
            format!("/admin/v1/clients/{}", suspended.id),
            Some(json!({ "status": "suspended" })),
        )
        .await;
    })
    .await;
    let (status, body) = p
        .widget_session(&p.base, origin, json!({ "client": suspended.slug }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "client_inactive");

    // 4. The operator revokes every session of the tenant; a new one works.
    let revoked = p.widget_tenant("revoked", origin).await;
    let token = widget_session(revoked.slug.clone()).await;
    let bystander = p.widget_tenant("bystander", origin).await;
    let bystander_token = widget_session(bystander.slug.clone()).await;
    revoked_within_bound(&p, &other, "widget", &token, "sessions revoked", || async {
        let answer = admin(
            Method::POST,
            format!("/admin/v1/clients/{}/sessions/revoke", revoked.id),
            None,
        )
        .await;
        assert!(answer["sessions_revoked_at"].is_string(), "{answer}");
    })
    .await;
    let (status, _) = look(&p, &other, "widget", &bystander_token).await;
    assert!(
        status.is_success(),
        "another tenant's session is untouched: {status}"
    );
    let fresh = widget_session(revoked.slug.clone()).await;
    let (status, body) = p
        .session_send(&other, "widget", &fresh, json!({ "text": "hello again" }))
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a session opened afterwards works: {body}"
    );
    p.stop().await;
}

/// Operators have tokens of their own; every write is recorded with its operator, and
/// configuration, mode, channel and key changes with the fields before and after (secrets
/// masked); a read-scope operator cannot write; a revoked operator is refused; ten failed
/// authentications from one address block it for a minute.
#[tokio::test]
async fn operators_are_told_apart_and_every_write_is_audited() {
    let p = Platform::start().await;
    let token_for = |name: &'static str, scope: &'static str| {
        let p = &p;
        async move {
            let (ok, out) = chatfleet(
                p,
                &["admin-token", "create", "--name", name, "--scope", scope],
            )
            .await;
            assert!(ok, "admin-token create {name}");
            out.trim().to_owned()
        }
    };
    let alice = token_for("alice", "write").await;
    let bob = token_for("bob", "read").await;
    assert_ne!(alice, bob);

    let tenant = p.tenant("audited").await;
    let base = format!("/admin/v1/clients/{}", tenant.id);
    let as_alice = |method: Method, path: String, body: Option<Value>| {
        let (p, alice) = (&p, alice.clone());
        async move {
            let (status, answer) = p.admin_as(&alice, method, &path, body).await;
            assert!(status.is_success(), "{path}: {status} {answer}");
            answer
        }
    };
    as_alice(
        Method::PATCH,
        format!("{base}/config"),
        Some(json!({ "persona_name": "Ada" })),
    )
    .await;
    as_alice(
        Method::POST,
        format!("{base}/modes"),
        Some(json!({ "module_key": "sales", "prompt_fragment": "Sell.", "priority": 5, "is_active": true })),
    )
    .await;
    as_alice(
        Method::PATCH,
        format!("{base}/modes/sales"),
        Some(json!({ "is_active": false })),
    )
    .await;
    let channel = as_alice(
        Method::POST,
        format!("{base}/channels"),
        Some(json!({
            "channel": "whatsapp",
            "external_account_id": "15550001",
            "credentials": { "access_token": "EAAG-super-secret-token" },
            "settings": { "display": "main" },
        })),
    )
    .await;
    let account = channel["id"].as_u64().expect("account id");
    as_alice(
        Method::PATCH,
        format!("{base}/channels/{account}"),
        Some(json!({ "settings": { "display": "renamed" } })),
    )
    .await;
    let key = as_alice(
        Method::POST,
        format!("{base}/api-keys"),
        Some(json!({ "name": "crm" })),
    )
    .await;
    let key_id = key["id"].as_u64().expect("key id");
    as_alice(Method::DELETE, format!("{base}/api-keys/{key_id}"), None).await;

    // Read scope reads, and cannot write.
    let (status, _) = p
        .admin_as(&bob, Method::GET, &format!("{base}/config"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = p
        .admin_as(
            &bob,
            Method::PATCH,
            &format!("{base}/config"),
            Some(json!({ "persona_name": "Mallory" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope");

    let (status, audit) = p
        .admin_as(
            &bob,
            Method::GET,
            &format!("/admin/v1/audit?client={}", tenant.slug),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = audit["entries"].as_array().expect("entries").clone();
    let routes: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["operator"], "alice", "{e}");
            assert_eq!(e["client_id"], tenant.id.get(), "{e}");
            assert!(
                e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
                "{e}"
            );
            (
                e["method"].as_str().unwrap_or("").to_owned(),
                e["route"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("PATCH", format!("{base}/config")),
            ("POST", format!("{base}/modes")),
            ("PATCH", format!("{base}/modes/sales")),
            ("POST", format!("{base}/channels")),
            ("PATCH", format!("{base}/channels/{account}")),
            ("POST", format!("{base}/api-keys")),
            ("DELETE", format!("{base}/api-keys/{key_id}")),
        ]
        .map(|(m, r)| (m.to_owned(), r)),
        "bob's refused write is not among them"
    );
    let config = &entries[0]["changes"];
    assert_eq!(config["after"]["persona_name"], "Ada", "{config}");
    assert_ne!(config["before"]["persona_name"], "Ada", "{config}");
    assert_eq!(entries[2]["changes"]["before"]["is_active"], true);
    assert_eq!(entries[2]["changes"]["after"]["is_active"], false);
    assert_eq!(
        entries[3]["changes"]["after"]["credentials"]["access_token"],
        "[masked]"
    );
    assert_eq!(
        entries[4]["changes"]["before"]["settings"]["display"],
        "main"
    );
    assert_eq!(
        entries[4]["changes"]["after"]["settings"]["display"],
        "renamed"
    );
    assert!(
        !audit.to_string().contains("super-secret"),
        "a secret reached the audit log"
    );

    // A revoked operator is refused from the next request on.
    let (ok, _) = chatfleet(&p, &["admin-token", "revoke", "--name", "alice"]).await;
    assert!(ok);
    let (status, _) = p
        .admin_as(&alice, Method::GET, "/admin/v1/clients", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Ten failures from one address in a minute (the revoked token's was the first):
    // every admin request from it is 429.
    for _ in 0..8 {
        let (status, _) = p
            .admin_as("guess-guess-guess", Method::GET, "/admin/v1/clients", None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _) = p.admin(Method::GET, "/admin/v1/clients", None).await;
    assert_eq!(status, StatusCode::OK, "nine failures do not block");
    let (status, _) = p
        .admin_as("guess-guess-guess", Method::GET, "/admin/v1/clients", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = p
        .http
        .get(format!("{}/admin/v1/clients", p.base))
        .bearer_auth(p.env.settings.admin.token.expose())
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the right token too"
    );
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    p.stop().await;
}

/// With `admin.bind` set, the admin API and /metrics answer only there; the channel port
/// serves the channels and the probes.
#[tokio::test]
async fn the_admin_api_and_metrics_can_leave_the_public_port() {
    let p = Platform::start().await;
    let mut settings = p.env.settings.clone();
    settings.admin.bind = Some("127.0.0.1:0".parse().expect("addr"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = ingress::start(settings, shutdown.clone())
        .await
        .expect("ingress");
    let public = format!("http://{}", running.addr);
    let admin = format!("http://{}", running.admin_addr.expect("an admin listener"));
    let token = p.env.settings.admin.token.expose();
    let get = |url: String| {
        let http = p.http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    assert_eq!(
        get(format!("{public}/admin/v1/clients")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(format!("{public}/metrics")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(format!("{public}/healthz")).await, StatusCode::OK);
    assert_eq!(
        get(format!("{admin}/admin/v1/clients")).await,
        StatusCode::OK
    );
    assert_eq!(get(format!("{admin}/metrics")).await, StatusCode::OK);
    assert_eq!(get(format!("{admin}/healthz")).await, StatusCode::OK);
    // The operator console goes with the admin API.
    assert_eq!(
        get(format!("{public}/console/")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(format!("{admin}/console/")).await, StatusCode::OK);
    let (status, _) = p
        .session_send(&public, "widget", "not-a-token", json!({ "text": "hi" }))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the channels are on the public port"
    );
    shutdown.cancel();
    running.task.await.expect("ingress stops");
    p.stop().await;
}

/// A process started on a weak secret outside a loopback developer machine exits at once,
/// naming the secret.
#[tokio::test]
async fn a_process_refuses_to_start_on_a_weak_secret_and_names_it() {
    let strong = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1yZWFsbHktISE=";
    let good = [
        ("CHATFLEET__ADMIN__TOKEN", "an-operator-token-of-ours"),
        ("CHATFLEET__SECURITY__ENCRYPTION_KEY", strong),
        ("CHATFLEET__SECURITY__SESSION_KEYS", strong),
        (
            "CHATFLEET__WHATSAPP__APP_SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
        (
            "CHATFLEET__WHATSAPP__VERIFY_TOKEN",
            "a-verify-token-of-ours",
        ),
    ];
    let dev_key = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktMzItYnl0ZSE=";
    for (role, var, weak, key) in [
        (
            "ingress",
            "CHATFLEET__ADMIN__TOKEN",
            "dev-admin-token-change-me",
            "admin.token",
        ),
        (
            "ingress",
            "CHATFLEET__ADMIN__TOKEN",
            "CHANGE-ME-at-least-16-characters",
            "admin.token",
        ),
        (
            "worker",
            "CHATFLEET__SECURITY__ENCRYPTION_KEY",
            dev_key,
            "security.encryption_key",
        ),
        (
            "ingress",
            "CHATFLEET__SECURITY__SESSION_KEYS",
            "CHANGE-ME",
            "security.session_keys",
        ),
        (
            "ingress",
            "CHATFLEET__WHATSAPP__APP_SECRET",
            "CHANGE-ME",
            "whatsapp.app_secret",
        ),
        (
            "worker",
            "CHATFLEET__WHATSAPP__VERIFY_TOKEN",
            "short",
            "whatsapp.verify_token",
        ),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chatfleet"));
        command
            .arg(role)
            .env_clear()
            .env("CHATFLEET_ENV", "staging")
            .env("CHATFLEET_CONFIG_DIR", "/nonexistent")
            .envs(good)
            .env(var, weak);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("runner")
            .expect("chatfleet runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role} started with {var}={weak}");
        assert!(
            stderr.contains(&format!("{key}:")),
            "{var}={weak}: {stderr}"
        );
    }
}

/// Keys rotate without logging anyone out or losing a credential: a new session key
/// added first keeps old tokens working; `chatfleet secrets reseal` under a new
/// encryption key first, then the old key removed, keeps every credential readable.
#[tokio::test]
async fn keys_rotate_without_logging_anyone_out_or_losing_a_credential() {
    use base64::Engine;
    let p = Platform::start().await;
    let origin = "https://rotate.example";
    let tenant = p.widget_tenant("rotate", origin).await;
    let (_, session) = p
        .widget_session(&p.base, origin, json!({ "client": tenant.slug }))
        .await;
    let token = session["token"].as_str().expect("token").to_owned();
    for (channel, external, credentials) in [
        (
            "whatsapp",
            "15550002",
            json!({ "access_token": "EAAG-rotate" }),
        ),
        (
            "mobile",
            "app-rotate",
            json!({ "fcm_access_token": "ya29.rotate" }),
        ),
    ] {
        let (status, body) = p
            .admin(
                Method::POST,
                &format!("/admin/v1/clients/{}/channels", tenant.id),
                Some(json!({ "channel": channel, "external_account_id": external, "credentials": credentials })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // A tool's credential is sealed under the same ring.
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/tools", tenant.id),
            Some(json!({
                "name": "lookup", "description": "Looks things up", "method": "GET",
                "url": "https://tools.example/lookup",
                "parameters": { "type": "object", "properties": {} },
                "auth": { "type": "header", "name": "X-Api-Key", "value": "rotate-tool-key" },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let new_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let old_session_key = p.env.settings.security.session_keys[0].expose().clone();
    let replica = |session_keys: Vec<String>| {
        let mut settings = p.env.settings.clone();
        settings.security.session_keys = session_keys
            .into_iter()
            .map(shared::pii::Secret::new)
            .collect();
        let shutdown = tokio_util::sync::CancellationToken::new();
        async move {
            let running = ingress::start(settings, shutdown.clone())
                .await
                .expect("ingress");
            (format!("http://{}", running.addr), shutdown, running.task)
        }
    };
    let (rotated, stop, task) = replica(vec![new_key.clone(), old_session_key]).await;
    let (status, _) = look(&p, &rotated, "widget", &token).await;
    assert!(status.is_success(), "the old key still verifies: {status}");
    let (status, fresh) = p
        .widget_session(&rotated, origin, json!({ "client": tenant.slug }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    stop.cancel();
    task.await.expect("stops");
    let (retired, stop, task) = replica(vec![new_key.clone()]).await;
    let (status, _) = look(&p, &retired, "widget", &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the removed key verifies nothing"
    );
    let (status, _) = look(
        &p,
        &retired,
        "widget",
        fresh["token"].as_str().expect("token"),
    )
    .await;
    assert!(status.is_success(), "the new key's token: {status}");
    stop.cancel();
    task.await.expect("stops");

    // Re-seal under a new encryption key first; then only the new key opens everything.
    let old_key = p.env.settings.security.encryption_key.expose().clone();
    let mut command = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command.args(["secrets", "reseal"]).env(
        "CHATFLEET__SECURITY__ENCRYPTION_KEYS",
        format!("{new_key},{old_key}"),
    );
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("runner")
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 credentials re-sealed"), "{stdout}");
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&new_key)
        .expect("b64")
        .try_into()
        .expect("32 bytes");
    let only_new = shared::secrets::SecretBox::new(&[key]);
    let sealed = p
        .env
        .db
        .tenant(tenant.id)
        .channel_accounts()
        .sealed_all()
        .await
        .expect("sealed");
    assert_eq!(sealed.len(), 2);
    for (_, channel, stored) in sealed {
        let plain = only_new
            .open(tenant.id, channel, &stored)
            .expect("the new key opens it");
        assert!(String::from_utf8_lossy(&plain).contains("rotate"));
    }
    let tool = p
        .env
        .db
        .tenant(tenant.id)
        .tools()
        .get("lookup")
        .await
        .expect("tool")
        .expect("the tool");
    let credential = shared::secrets::ToolCredential::open(
        &only_new,
        tenant.id,
        "lookup",
        tool.auth_sealed.as_deref().expect("sealed"),
    )
    .expect("the new key opens the tool's credential");
    assert_eq!(
        credential,
        shared::secrets::ToolCredential::Header {
            name: "X-Api-Key".into(),
            value: "rotate-tool-key".into()
        }
    );
    p.stop().await;
}

/// Ingress and worker need no more than the grants the README lists for the application
/// user (SELECT, INSERT, UPDATE, DELETE, EXECUTE on the schema): a message is answered,
/// an admin write audited and a mobile device claimed through a fleet connected as it.
#[tokio::test]
async fn the_fleet_runs_as_the_least_privilege_database_user() {
    let mut p = Platform::start_with(&[], 0).await;
    let user = format!("cf_app_{}", p.env.id);
    let schema = format!("cf_t_{}", p.env.id);
    let root = sqlx::MySqlPool::connect(p.env.settings.database.url.expose())
        .await
        .expect("root connects");
    for statement in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-of-the-app'"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON `{schema}`.* TO '{user}'@'%'"),
    ] {
        sqlx::query(&statement).execute(&root).await.expect("grant");
    }
    let mut settings = p.env.settings.clone();
    let url = p.env.settings.database.url.expose().replacen(
        "root@",
        &format!("{user}:pw-of-the-app@"),
        1,
    );
    settings.database.url = shared::pii::Secret::new(url);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = ingress::start(settings.clone(), shutdown.clone())
        .await
        .expect("ingress as the app user");
    let worker = tokio::spawn(worker::run(settings, shutdown.clone()));
    p.base = format!("http://{}", running.addr);

    let tenant = p.tenant("least").await;
    let (reply, _) = p.ask(&tenant.api_key, "c1", "hello there", "").await;
    assert!(
        reply["text"]
            .as_str()
            .is_some_and(|t| t.ends_with("You said: hello there")),
        "{reply}"
    );
    let (status, body) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{}/channels", tenant.id),
            Some(json!({ "channel": "mobile", "external_account_id": "app-least" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let opened = p
        .http
        .post(format!("{}/mobile/v1/sessions", p.base))
        .header("x-app-key", "app-least")
        .json(&json!({ "device_id": "d1" }))
        .send()
        .await
        .expect("session");
    assert_eq!(opened.status(), StatusCode::CREATED);
    let (status, audit) = p.admin(Method::GET, "/admin/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );

    shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker ran cleanly");
    running.task.await.expect("ingress stops");
    let _ = sqlx::query(&format!("DROP USER '{user}'@'%'"))
        .execute(&root)
        .await;
    root.close().await;
    p.stop().await;
}
