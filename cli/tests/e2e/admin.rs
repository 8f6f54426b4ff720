//! The admin API: a tenant's whole life cycle, its errors, secrets that never come back,
//! and an OpenAPI document that matches the routes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use shared::testkit::eventually;

use crate::support::{Method, Platform, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_life_cycle_through_the_admin_api() {
    let p = Platform::start().await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    // Auth on every route.
    let (s, b) = p
        .admin_as(
            "wrong-token-wrong-token",
            Method::GET,
            "/admin/v1/clients",
            None,
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_admin_token")
    );
    let r = p
        .http
        .get(format!("{}/admin/v1/clients/1/config", p.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Create; duplicate slug; malformed; invalid.
    let (s, client) = p
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({ "slug": "bistro", "name": "Bistro", "plan": "growth" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{client}");

    assert_eq!(
        (
            client["slug"].as_str(),
            client["plan"].as_str(),
            client["status"].as_str()
        ),
        (Some("bistro"), Some("growth"), Some("active"))
    );
    let id = client["id"].as_u64().expect("id");
    let (s, b) = p
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({ "slug": "bistro", "name": "Again" })),
        )
        .await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::CONFLICT, "conflict"));
    let r = p
        .http
        .post(format!("{}/admin/v1/clients", p.base))
        .bearer_auth(p.env.settings.admin.token.expose())
        .body("{\"slug\":")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, b) = p
        .admin(
            Method::POST,
            "/admin/v1/clients",
            Some(json!({ "slug": "Bad Slug", "name": "x" })),
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
    let (s, b) = p.admin(Method::GET, "/admin/v1/clients/999999", None).await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // Get by id and by slug; list; update.
    let (s, by_slug) = p.admin(Method::GET, "/admin/v1/clients/bistro", None).await;
    assert_eq!((s, by_slug["id"].as_u64()), (StatusCode::OK, Some(id)));
    let (_, page) = p
        .admin(Method::GET, "/admin/v1/clients?limit=10", None)
        .await;
    assert!(
        page["clients"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["slug"] == "bistro")
    );
    let (s, updated) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{id}"),
            Some(json!({ "name": "Bistro Central", "locale": "fr" })),
        )
        .await;
    assert_eq!(
        (s, updated["name"].as_str(), updated["locale"].as_str()),
        (StatusCode::OK, Some("Bistro Central"), Some("fr"))
    );

    // Config: invalid values name the field and change nothing.
    let (_, before) = p
        .admin(Method::GET, &format!("/admin/v1/clients/{id}/config"), None)
        .await;
    for (field, value) in [
        ("llm_temperature", json!(2.5)),
        ("max_context_turns", json!(101)),
        ("rag_top_k", json!(51)),
        ("persona_tone", json!("sarcastic")),
        ("llm_max_output_tokens", json!(20_000)),
        ("llm_model", json!("")),
    ] {
        let (s, b) = p
            .admin(
                Method::PATCH,
                &format!("/admin/v1/clients/{id}/config"),
                Some(json!({ field: value })),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {b}");
        assert!(
            b["error"]["message"].as_str().unwrap_or("").contains(field),
            "{field}: {b}"
        );
    }
    let (s, b) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{id}/config"),
            Some(json!({ "config_version": 99 })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (_, after) = p
        .admin(Method::GET, &format!("/admin/v1/clients/{id}/config"), None)
        .await;
    assert_eq!(before, after, "a refused write changed nothing");
    let (s, cfg) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{id}/config"),
            Some(json!({ "persona_name": "Chef", "llm_temperature": 0.1 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{cfg}");
    assert_eq!(cfg["persona_name"], "Chef");
    assert!(cfg["config_version"].as_u64() > before["config_version"].as_u64());
    let mut full = cfg.clone();
    full.as_object_mut()
        .expect("object")
        .remove("config_version");
    full["persona_language"] = json!("French");
    let (s, cfg) = p
        .admin(
            Method::PUT,
            &format!("/admin/v1/clients/{id}/config"),
            Some(full),
        )
        .await;
    assert_eq!(
        (s, cfg["persona_language"].as_str()),
        (StatusCode::OK, Some("French"))
    );

    // Agent modes.
    let mode = json!({ "module_key": "menu", "prompt_fragment": "Recommend the dish of the day.", "is_active": true, "priority": 5 });
    let (s, _) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{id}/modes"),
            Some(mode.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{id}/modes"),
            Some(mode),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, m) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{id}/modes/menu"),
            Some(json!({ "is_active": false })),
        )
        .await;
    assert_eq!((s, m["is_active"].as_bool()), (StatusCode::OK, Some(false)));
    let (_, modes) = p
        .admin(Method::GET, &format!("/admin/v1/clients/{id}/modes"), None)
        .await;
    assert_eq!(modes.as_array().map(Vec::len), Some(1));
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{id}/modes/menu"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{id}/modes/menu"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Channel accounts: credentials sealed, never returned.
    let secret = "EAAG-super-secret-access-token-123";
    let (s, account) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{id}/channels"),
            Some(json!({ "channel": "whatsapp", "external_account_id": "1098765", "credentials": { "access_token": secret },
                         "settings": { "display_name": "Bistro" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{account}");
    assert_eq!(account["has_credentials"], true);
    let (_, accounts) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{id}/channels"),
            None,
        )
        .await;
    assert!(!account.to_string().contains(secret) && !accounts.to_string().contains(secret));
    let sealed = p
        .env
        .db
        .tenant(shared::ids::ClientId::new(id))
        .channel_accounts()
        .sealed_credentials(account["id"].as_u64().expect("id"))
        .await
        .expect("read")
        .expect("stored");
    assert!(
        !String::from_utf8_lossy(&sealed).contains("super-secret"),
        "credentials are unreadable at rest"
    );
    let (s, _) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{id}/channels"),
            Some(json!({ "channel": "whatsapp", "external_account_id": "1098765" })),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "one WhatsApp number belongs to one tenant"
    );

    // API keys: shown once, listed without secret, revocable.
    let (s, key) = p
        .admin(
            Method::POST,
            &format!("/admin/v1/clients/{id}/api-keys"),
            Some(json!({ "name": "pos" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret_key = key["key"].as_str().expect("key").to_owned();
    let (_, keys) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{id}/api-keys"),
            None,
        )
        .await;
    assert!(!keys.to_string().contains(&secret_key[17..]));
    let (reply, _) = p.ask(&secret_key, "table-4", "a table for two?", "0").await;
    assert!(
        reply["text"]
            .as_str()
            .unwrap_or("")
            .contains("You are Chef, an AI assistant for Bistro Central.")
    );

    // Conversations with the config version and tokens each reply used.
    let (_, convs) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{id}/conversations"),
            None,
        )
        .await;
    let conv = &convs["conversations"][0];
    assert_eq!(conv["external_id"], "table-4");
    // The answer, once the API deliverer marked it delivered (in a batch, after it is
    // readable).
    let answer = eventually(WAIT, "the reply marked delivered", || async {
        let (_, detail) = p
            .admin(
                Method::GET,
                &format!("/admin/v1/clients/{id}/conversations/{}", conv["id"]),
                None,
            )
            .await;
        let messages = detail["messages"].as_array().expect("messages");
        let answer = messages
            .iter()
            .find(|m| m["role"] == "assistant")
            .expect("assistant message");
        (answer["delivery_status"] == "delivered").then(|| answer.clone())
    })
    .await;
    let (_, now) = p
        .admin(Method::GET, &format!("/admin/v1/clients/{id}/config"), None)
        .await;
    assert!(
        now["config_version"].as_u64() > cfg["config_version"].as_u64(),
        "mode changes bump the version"
    );
    assert_eq!(answer["config_version"], now["config_version"]);
    assert!(answer["prompt_tokens"].as_u64().unwrap_or(0) > 0);
    assert!(answer["completion_tokens"].as_u64().unwrap_or(0) > 0);

    let (s, _) = p
        .admin(
            Method::DELETE,
            &format!("/admin/v1/clients/{id}/api-keys/{}", key["id"]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = p.send(&secret_key, "table-4", "still there?", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_conversation_is_a_404() {
    let p = Platform::start().await;
    let a = p.tenant("owner").await;
    let b = p.tenant("intruder").await;
    p.ask(&a.api_key, "private-7", "hello", "0").await;
    let r = p
        .http
        .get(format!(
            "{}/api/v1/conversations/private-7/messages",
            p.base
        ))
        .bearer_auth(&b.api_key)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let p = Platform::start().await;
    let doc: Value = p
        .http
        .get(format!("{}/openapi.json", p.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "{} paths", paths.len());
    for (path, operations) in paths {
        let concrete = path
            .replace("{id}", "999999")
            .replace("{module_key}", "none")
            .replace("{channel_account_id}", "1")
            .replace("{key_id}", "1")
            .replace("{conversation_id}", "1");
        for method in operations.as_object().expect("operations").keys() {
            let method: Method = method.to_uppercase().parse().expect("method");
            let (status, body) = p.admin(method.clone(), &concrete, Some(json!({}))).await;
            // Axum answers an unrouted path or method with an empty 404/405; every
            // documented operation must reach a handler (which answers JSON or succeeds).
            let unrouted = (status == StatusCode::NOT_FOUND && body.is_null())
                || status == StatusCode::METHOD_NOT_ALLOWED;
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
    p.stop().await;
}
