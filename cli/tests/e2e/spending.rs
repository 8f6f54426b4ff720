//! Tenants' own LLM keys, the cost of every turn and budgets, end to end: the simulator
//! records the key each call presented and refuses revoked ones (as OpenAI does, quoting
//! the key masked); budgets are crossed on two workers, each action taken in turn, and
//! lifted by raising the budget; a plan's tokens per day hold messages back.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::db::{KeyOwner, StoredMessage};
use shared::envelope::ReplyKind;
use shared::settings::TokenPrice;
use shared::testkit::{TestTenant, eventually};

use crate::support::{Method, Platform, chatfleet};
use crate::webhooks::{Receiver, add_webhook, delivered};

const WAIT: Duration = Duration::from_secs(30);

/// Webhooks to the receiver double on 127.0.0.2; the operator's own key for the provider.
const SETTINGS: [(&str, &str); 4] = [
    ("CHATFLEET__WEBHOOKS__ALLOW_HTTP", "true"),
    (
        "CHATFLEET__WEBHOOKS__ALLOWED_PRIVATE_NETWORKS",
        "127.0.0.2/32",
    ),
    ("CHATFLEET__LLM__PROVIDERS__OLLAMA__API_KEY", "platform-key"),
    (
        "CHATFLEET__LLM__TENANT_BASE_URL_ALLOWLIST",
        "llm.tenant.example",
    ),
];

/// Sends `text` on a new conversation and waits for its reply; the stored reply.
async fn reply_to(p: &Platform, t: &TestTenant, conversation: &str, text: &str) -> StoredMessage {
    let (status, body) = p.send(&t.api_key, conversation, text, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    p.read_until(&t.api_key, conversation, "", 2).await;
    let id = p.conversation(t.id, conversation).await;
    p.stored(t.id, id)
        .await
        .into_iter()
        .rfind(|m| m.reply_kind.is_some())
        .expect("a reply")
}

/// The key the simulator saw on the call whose last message was `text`.
fn key_seen(p: &Platform, text: &str) -> String {
    p.sim
        .requests()
        .iter()
        .rfind(|r| r.messages.last().is_some_and(|m| m.content == text))
        .map(|r| r.api_key.clone())
        .unwrap_or_else(|| panic!("no call asked {text:?}"))
}

async fn patch_config(p: &Platform, t: &TestTenant, patch: Value) {
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", t.id),
            Some(patch),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_key_is_used_kept_to_it_and_its_refusal_is_its_own() {
    let p = Platform::start_with(&SETTINGS, 1).await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let (a, b) = (p.tenant("alpha").await, p.tenant("beta").await);
    add_webhook(
        &p,
        &a,
        format!("{base}/a/ok"),
        json!(["llm.credentials_failed"]),
    )
    .await;
    let keys = format!("/admin/v1/clients/{}/llm-credentials", a.id);

    // Bad input names its field; nothing is stored.
    for (path, bad, field) in [
        (
            format!("{keys}/nope"),
            json!({ "api_key": "sk-x" }),
            "provider",
        ),
        (
            format!("{keys}/ollama"),
            json!({ "api_key": " " }),
            "api_key",
        ),
        (
            format!("{keys}/ollama"),
            json!({ "api_key": "sk-x", "base_url": "https://evil.example/v1" }),
            "base_url",
        ),
        (
            format!("{keys}/ollama"),
            json!({ "api_key": "sk-x", "base_url": "ftp://llm.tenant.example" }),
            "base_url",
        ),
        (
            format!("{keys}/ollama"),
            json!({ "api_key": "sk-x", "colour": "red" }),
            "colour",
        ),
    ] {
        let (status, body) = p.admin(Method::PUT, &path, Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let (_, listed) = p.admin(Method::GET, &keys, None).await;
    assert_eq!(listed, json!([]));

    let a_key = "sk-tenant-alpha-7Qa9";
    let (status, body) = p
        .admin(
            Method::PUT,
            &format!("{keys}/ollama"),
            Some(json!({ "api_key": a_key })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = p.admin(Method::GET, &keys, None).await;
    assert_eq!(listed[0]["provider"], "ollama", "{listed}");
    assert_eq!(listed[0]["configured"], true);
    assert_eq!(listed[0]["key_last4"], "7Qa9");
    assert!(!listed.to_string().contains(a_key) && !body.to_string().contains(a_key));

    // A's turns present A's key; B's the platform's.
    let reply = reply_to(&p, &a, "a1", "hello from alpha").await;
    assert_eq!(key_seen(&p, "hello from alpha"), a_key);
    assert_eq!(reply.accounting.key_owner, Some(KeyOwner::Tenant));
    assert_eq!(reply.accounting.provider.as_deref(), Some("ollama"));
    let reply = reply_to(&p, &b, "b1", "hello from beta").await;
    assert_eq!(key_seen(&p, "hello from beta"), "platform-key");
    assert_eq!(reply.accounting.key_owner, Some(KeyOwner::Platform));
    // The conversation view says whose key answered.
    let a1 = p.conversation(a.id, "a1").await;
    let (_, view) = p
        .admin(
            Method::GET,
            &format!("/admin/v1/clients/{}/conversations/{}", a.id, a1.get()),
            None,
        )
        .await;
    let shown = &view["messages"][1];
    assert_eq!(shown["key_owner"], "tenant", "{view}");
    assert_eq!(shown["llm_provider"], "ollama", "{view}");
    assert_eq!(shown["unpriced"], true, "{view}");

    // A's key is revoked: A's turns get A's fallback message with the reason, the
    // breaker that opens is A's own, B is answered by the model throughout.
    p.sim.revoke_key(a_key);
    for i in 0..6 {
        let reply = reply_to(&p, &a, &format!("a-revoked-{i}"), "still there?").await;
        assert_eq!(reply.reply_kind, Some(ReplyKind::Fallback), "{reply:?}");
        let reason = reply.accounting.fallback_reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("llm.credentials_failed: ollama"),
            "{reason}"
        );
        assert!(!reason.contains("sk-tenant"), "{reason}");
    }
    let reply = reply_to(&p, &b, "b2", "beta is unaffected").await;
    assert_eq!(reply.reply_kind, Some(ReplyKind::Bot), "{reply:?}");
    assert!(reply.content.contains("beta is unaffected"), "{reply:?}");
    // The tenant's endpoint heard of it, once per hour, without the key.
    let heard = eventually(WAIT, "llm.credentials_failed", || {
        let got = delivered(&receiver.at("/a/ok"));
        async move { got.get("llm.credentials_failed").cloned() }
    })
    .await;
    assert_eq!(heard.len(), 1, "{heard:?}");
    let event = heard[0].event();
    assert_eq!(event["data"]["provider"], "ollama", "{event}");
    assert_eq!(event["data"]["status"], 401, "{event}");
    assert!(!event.to_string().contains("sk-tenant"), "{event}");

    // Allowed, the platform's key answers instead, and says so.
    patch_config(&p, &a, json!({ "fallback_to_platform_key": true })).await;
    let reply = reply_to(&p, &a, "a-platform", "answer me anyway").await;
    assert_eq!(reply.reply_kind, Some(ReplyKind::Bot), "{reply:?}");
    assert_eq!(key_seen(&p, "answer me anyway"), "platform-key");
    assert_eq!(reply.accounting.key_owner, Some(KeyOwner::Platform));
    assert!(
        reply
            .accounting
            .fallback_reason
            .as_deref()
            .is_some_and(|r| r.ends_with("the platform's key answered")),
        "{reply:?}"
    );

    // Removed, the platform's key is A's again; a second removal is a 404.
    patch_config(&p, &a, json!({ "fallback_to_platform_key": false })).await;
    let (status, _) = p
        .admin(Method::DELETE, &format!("{keys}/ollama"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = p
        .admin(Method::DELETE, &format!("{keys}/ollama"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reply = reply_to(&p, &a, "a-after", "back to the platform").await;
    assert_eq!(key_seen(&p, "back to the platform"), "platform-key");
    assert_eq!(reply.accounting.key_owner, Some(KeyOwner::Platform));

    // Neither the audit log nor anything stored holds the key.
    let (_, audit) = p.admin(Method::GET, "/admin/v1/audit", None).await;
    assert!(!audit.to_string().contains(a_key), "{audit}");
    assert!(audit.to_string().contains("llm-credentials"), "{audit}");
    p.stop().await;
}

/// Micro-units a reply's tokens cost at the test's price.
fn priced(m: &StoredMessage) -> u64 {
    u64::from(m.prompt_tokens.unwrap_or(0)) * 1000
        + u64::from(m.completion_tokens.unwrap_or(0)) * 2000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_are_counted_and_budgets_hold_on_every_replica() {
    let p = Platform::start_tweaked(&SETTINGS, 2, |s| {
        // 1,000 and 2,000 per million tokens: a token costs 1,000 or 2,000 micro-units.
        s.llm.prices.insert(
            "ollama/priced".into(),
            TokenPrice {
                prompt_per_million: 1000.0,
                completion_per_million: 2000.0,
                currency: "EUR".into(),
            },
        );
        s.plans.growth.tokens_per_day = Some(1);
    })
    .await;
    let (receiver, base) = Receiver::start(p.shutdown.clone()).await;
    let t = p.tenant("gamma").await;
    add_webhook(
        &p,
        &t,
        format!("{base}/t/ok"),
        json!(["budget.warning", "budget.exceeded"]),
    )
    .await;
    patch_config(
        &p,
        &t,
        json!({ "llm_model": "priced", "fallback_model": "cheap" }),
    )
    .await;

    // Bad budgets name their field.
    for (bad, field) in [
        (json!({ "budget_monthly": -1 }), "budget_monthly"),
        (json!({ "budget_action": "pray" }), "budget_action"),
        (json!({ "budget_warning_pct": 0 }), "budget_warning_pct"),
        (
            json!({ "fallback_model": null, "budget_action": "fallback_model" }),
            "fallback_model",
        ),
    ] {
        let (status, body) = p
            .admin(
                Method::PATCH,
                &format!("/admin/v1/clients/{}/config", t.id),
                Some(bad),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }

    // A turn costs its tokens at the model's price; an unpriced model is reported so.
    let first = reply_to(&p, &t, "c0", "what does this cost").await;
    let cost = priced(&first);
    assert!(cost > 0);
    assert_eq!(first.accounting.cost_micros, Some(cost), "{first:?}");
    assert!(!first.accounting.unpriced);
    patch_config(&p, &t, json!({ "llm_model": "cheap" })).await;
    let unpriced = reply_to(&p, &t, "u0", "and this one").await;
    assert!(unpriced.accounting.unpriced, "{unpriced:?}");
    assert_eq!(unpriced.accounting.cost_micros, None);
    let usage_path = format!("/admin/v1/clients/{}/usage", t.id);
    let (_, usage) = p.admin(Method::GET, &usage_path, None).await;
    assert_eq!(usage["currency"], "EUR", "{usage}");
    assert_eq!(
        usage["days"][0]["cost"].as_f64(),
        Some(cost as f64 / 1e6),
        "{usage}"
    );
    assert_eq!(usage["days"][0]["unpriced_replies"], 1, "{usage}");
    assert_eq!(usage["total"]["messages"], 2, "{usage}");

    // Last month's spending does not count against this month (the tenant's months).
    let period = shared::cache::SpendPeriod::at("UTC", chrono::Utc::now());
    let last_month = period.month_first.pred_opt().expect("a day");
    p.env
        .db
        .tenant(t.id)
        .usage()
        .add_cost(last_month, 0, 1_000_000_000)
        .await
        .expect("last month");

    // A budget of three turns, a warning at half of it: the first turn spent a third.
    let budget = 3.0 * cost as f64 / 1e6;
    patch_config(
        &p,
        &t,
        json!({ "llm_model": "priced", "budget_monthly": budget, "budget_warning_pct": 50,
                "budget_action": "fallback_model" }),
    )
    .await;
    let (_, usage) = p.admin(Method::GET, &usage_path, None).await;
    assert_eq!(usage["month"]["over_budget"], false, "{usage}");
    let second = reply_to(&p, &t, "c1", "what does this cost").await;
    assert_eq!(second.accounting.cost_micros, Some(cost));
    eventually(WAIT, "budget.warning", || {
        let got = delivered(&receiver.at("/t/ok"));
        async move { got.get("budget.warning").map(|_| ()) }
    })
    .await;
    reply_to(&p, &t, "c2", "what does this cost").await;
    let exceeded = eventually(WAIT, "budget.exceeded", || {
        let got = delivered(&receiver.at("/t/ok"));
        async move { got.get("budget.exceeded").cloned() }
    })
    .await;
    let event = exceeded[0].event();
    assert_eq!(event["data"]["currency"], "EUR", "{event}");
    assert_eq!(event["data"]["budget_action"], "fallback_model", "{event}");

    // From the next message, on both workers: the fallback model answers.
    for i in 0..4 {
        let reply = reply_to(&p, &t, &format!("m{i}"), &format!("cheaper {i}")).await;
        assert_eq!(
            reply.accounting.model.as_deref(),
            Some("cheap"),
            "{reply:?}"
        );
    }
    // The fallback message, without an LLM call.
    patch_config(&p, &t, json!({ "budget_action": "fallback_message" })).await;
    let calls = p.sim.requests().len();
    for i in 0..4 {
        let reply = reply_to(&p, &t, &format!("f{i}"), "anyone?").await;
        assert_eq!(reply.reply_kind, Some(ReplyKind::Fallback), "{reply:?}");
        assert_eq!(
            reply.accounting.fallback_reason.as_deref(),
            Some("budget_exceeded")
        );
    }
    assert_eq!(p.sim.requests().len(), calls, "no LLM call past the budget");
    // A human.
    patch_config(&p, &t, json!({ "budget_action": "handoff" })).await;
    let reply = reply_to(&p, &t, "h0", "a person please").await;
    assert_eq!(
        reply.reply_kind,
        Some(ReplyKind::HandoffNotice),
        "{reply:?}"
    );
    let (_, view) = p
        .admin(
            Method::GET,
            &format!(
                "/admin/v1/clients/{}/conversations/{}",
                t.id,
                p.conversation(t.id, "h0").await.get()
            ),
            None,
        )
        .await;
    assert_eq!(view["mode"], "human", "{view}");

    // Raising the budget lifts the action at once.
    patch_config(&p, &t, json!({ "budget_monthly": 1000 })).await;
    let reply = reply_to(&p, &t, "r0", "what does this cost").await;
    assert_eq!(
        reply.accounting.model.as_deref(),
        Some("priced"),
        "{reply:?}"
    );
    assert_eq!(reply.reply_kind, Some(ReplyKind::Bot));
    // Each event once in the month, however many turns passed the thresholds.
    let got = delivered(&receiver.at("/t/ok"));
    assert_eq!(got.get("budget.warning").map(Vec::len), Some(1));
    assert_eq!(got.get("budget.exceeded").map(Vec::len), Some(1));

    // The month's usage: every priced reply's cost, and the operator's view of it.
    let mut stored = Vec::new();
    for c in ["c0", "c1", "c2", "r0"] {
        let id = p.conversation(t.id, c).await;
        stored.extend(p.stored(t.id, id).await);
    }
    let spent: u64 = stored.iter().filter_map(|m| m.accounting.cost_micros).sum();
    for i in 0..4 {
        let id = p.conversation(t.id, &format!("m{i}")).await;
        assert!(
            p.stored(t.id, id)
                .await
                .iter()
                .all(|m| m.accounting.cost_micros.is_none())
        );
    }
    let this_month = format!("{usage_path}?from={}", period.month_first);
    let (_, usage) = p.admin(Method::GET, &this_month, None).await;
    assert_eq!(
        usage["month"]["spent"].as_f64(),
        Some(spent as f64 / 1e6),
        "{usage}"
    );
    assert_eq!(
        usage["total"]["cost"].as_f64(),
        Some(spent as f64 / 1e6),
        "{usage}"
    );
    let (ok, out) = chatfleet(&p, &["usage", "--client", &t.id.to_string(), "--json"]).await;
    assert!(ok, "{out}");
    let printed: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        printed["total"]["cost"].as_f64(),
        Some(spent as f64 / 1e6),
        "{printed}"
    );
    assert_eq!(printed["month"], period.month, "{printed}");

    // A plan's tokens per day: past them a message waits (never dropped) until the
    // tenant may spend again (here: a plan without the limit).
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}", t.id),
            Some(json!({ "plan": "growth" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = p.send(&t.api_key, "w0", "wait for tomorrow", None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let held_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < held_until {
        let w0 = p.conversation(t.id, "w0").await;
        let answered = p
            .stored(t.id, w0)
            .await
            .iter()
            .any(|m| m.reply_kind.is_some());
        assert!(!answered, "a message past the day's tokens was answered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}", t.id),
            Some(json!({ "plan": "enterprise" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    p.read_until(&t.api_key, "w0", "", 2).await;
    p.stop().await;
}
