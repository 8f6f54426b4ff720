//! Personal data kept from the LLM (`redact_pii`): the simulator, which echoes the
//! user's words, must see placeholders only — in the question and in the history — while
//! the user gets the reply with the originals back and the stored message keeps them.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Method, Platform};

const SAID: &str = "Mail jane.doe@example.com, call +49 151 2345 6789, card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00; not a card: 4111 1111 1111 1112";
const ORIGINALS: [&str; 4] = [
    "jane.doe@example.com",
    "+49 151 2345 6789",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_reaches_the_model_as_placeholders_and_the_user_as_written() {
    let p = Platform::start().await;
    let (private, plain) = (p.tenant("private").await, p.tenant("plain").await);
    let (status, body) = p
        .admin(
            Method::PATCH,
            &format!("/admin/v1/clients/{}/config", private.id),
            Some(json!({ "redact_pii": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["redact_pii"], true, "{body}");

    let (reply, cursor) = p.ask(&private.api_key, "c1", SAID, "").await;
    // A second turn: the first exchange is history now, and goes redacted too.
    let (again, _) = p
        .ask(&private.api_key, "c1", "and my mail was?", &cursor)
        .await;
    let seen: Vec<String> = p
        .sim
        .requests()
        .iter()
        .flat_map(|r| r.messages.iter().map(|m| m.content.clone()))
        .collect();
    let asked = seen
        .iter()
        .find(|m| m.contains("<EMAIL_1>"))
        .expect("asked");
    for placeholder in ["<EMAIL_1>", "<PHONE_1>", "<CARD_1>", "<IBAN_1>"] {
        assert!(asked.contains(placeholder), "{asked}");
    }
    // A number that fails the Luhn check is left as typed.
    assert!(asked.contains("4111 1111 1111 1112"), "{asked}");
    for original in ORIGINALS {
        assert!(
            seen.iter().all(|m| !m.contains(original)),
            "the model saw {original}"
        );
    }
    assert!(
        p.sim.requests().len() >= 2 && seen.iter().filter(|m| m.contains("<EMAIL_1>")).count() >= 2,
        "the second turn's history holds the first exchange, redacted"
    );
    // The user reads the originals (the simulator echoes what it was told).
    let text = reply["text"].as_str().unwrap_or_default();
    for original in ORIGINALS {
        assert!(text.contains(original), "{original} missing from {text}");
    }
    assert!(!text.contains("<EMAIL_1>"), "{text}");
    assert!(
        again["text"].as_str().is_some_and(|t| !t.contains('<')),
        "{again}"
    );
    // What is stored of the user's message is what they wrote.
    let c1 = p.conversation(private.id, "c1").await;
    assert_eq!(p.stored(private.id, c1).await[0].content, SAID);

    // Without redact_pii the model reads the message as written (the control).
    p.ask(&plain.api_key, "c1", "write to john@example.org", "")
        .await;
    assert!(p.sim.requests().iter().any(|r| {
        r.messages
            .iter()
            .any(|m| m.content.contains("john@example.org"))
    }));
    p.stop().await;
}
