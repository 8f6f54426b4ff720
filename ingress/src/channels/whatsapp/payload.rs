//! WhatsApp Cloud API webhook payloads (`entry[].changes[].value`), and their
//! normalisation into chatfleet message content. These shapes never leave this module.

use serde::Deserialize;
use serde_json::Value;
use shared::envelope::MessageContent;
use shared::pii::Pii;

#[derive(Debug, Deserialize)]
pub(super) struct Webhook {
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Entry {
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Change {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChangeValue {
    pub metadata: Metadata,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub messages: Vec<WaMessage>,
    #[serde(default)]
    pub statuses: Vec<WaStatus>,
}

/// A delivery status of a message we sent (`statuses[]`).
#[derive(Debug, Deserialize)]
pub(super) struct WaStatus {
    /// The wamid of our message.
    pub id: String,
    /// sent | delivered | read | failed (others are ignored).
    pub status: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct Metadata {
    pub phone_number_id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct Contact {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Profile {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WaMessage {
    pub id: String,
    pub from: Option<String>,
    /// Since 2026, users with a username may have no phone number (`from`).
    pub from_user_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub body: serde_json::Map<String, Value>,
}

/// One user message, ready to become an envelope.
#[derive(Debug)]
pub(super) struct Inbound {
    pub wamid: String,
    /// The user: `from` (wa_id), else `from_user_id`.
    pub user: String,
    pub name: Option<String>,
    pub content: MessageContent,
}

impl WaMessage {
    /// The message as chatfleet content; `None` for kinds the bot ignores (reactions).
    pub(super) fn normalise(&self, contacts: &[Contact]) -> Option<Inbound> {
        let user = self.from.clone().or_else(|| self.from_user_id.clone())?;
        let name = contacts
            .iter()
            .find(|c| {
                c.wa_id.as_deref() == Some(user.as_str())
                    || c.user_id.as_deref() == Some(user.as_str())
            })
            .or(contacts.first())
            .and_then(|c| c.profile.as_ref())
            .and_then(|p| p.name.clone());
        let part = |key: &str| self.body.get(key).cloned().unwrap_or(Value::Null);
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let content = match self.kind.as_str() {
            "text" => MessageContent::text(text(&part("text"), "body").unwrap_or_default()),
            "interactive" => {
                let interactive = part("interactive");
                let reply = interactive
                    .get("button_reply")
                    .or_else(|| interactive.get("list_reply"))
                    .cloned()
                    .unwrap_or(Value::Null);
                MessageContent::Postback {
                    payload: text(&reply, "id").unwrap_or_default(),
                    title: text(&reply, "title").map(Pii::new),
                }
            }
            "button" => {
                let button = part("button");
                MessageContent::Postback {
                    payload: text(&button, "payload").unwrap_or_default(),
                    title: text(&button, "text").map(Pii::new),
                }
            }
            "image" | "audio" | "video" | "document" | "sticker" => {
                let media = part(&self.kind);
                MessageContent::Media {
                    media_type: self.kind.clone(),
                    url_or_id: text(&media, "id").unwrap_or_default(),
                    caption: text(&media, "caption").map(Pii::new),
                }
            }
            "location" => {
                let loc = part("location");
                MessageContent::Location {
                    latitude: loc
                        .get("latitude")
                        .and_then(Value::as_f64)
                        .unwrap_or_default(),
                    longitude: loc
                        .get("longitude")
                        .and_then(Value::as_f64)
                        .unwrap_or_default(),
                    name: text(&loc, "name").map(Pii::new),
                    address: text(&loc, "address").map(Pii::new),
                }
            }
            "reaction" => return None,
            other => MessageContent::Unsupported {
                original_type: other.to_owned(),
            },
        };
        Some(Inbound {
            wamid: self.id.clone(),
            user,
            name,
            content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, biased towards the webhook's own keys so the parser gets deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("entry".to_owned()),
            Just("changes".to_owned()),
            Just("value".to_owned()),
            Just("field".to_owned()),
            Just("messages".to_owned()),
            Just("metadata".to_owned()),
            Just("phone_number_id".to_owned()),
            Just("type".to_owned()),
            Just("from".to_owned()),
            Just("id".to_owned()),
            Just("text".to_owned()),
            Just("body".to_owned()),
            Just("interactive".to_owned()),
            Just("location".to_owned()),
            Just("contacts".to_owned()),
            "[a-z_]{1,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("text"),
                Just("image"),
                Just("interactive"),
                Just("location"),
                Just("reaction"),
                Just("messages")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// What the webhook handler does with a body, minus the I/O.
    fn parse_all(raw: &[u8]) -> usize {
        let Ok(webhook) = serde_json::from_slice::<Webhook>(raw) else {
            return 0;
        };
        let mut n = 0;
        for change in webhook.entry.into_iter().flat_map(|e| e.changes) {
            if let Ok(value) = serde_json::from_value::<ChangeValue>(change.value) {
                n += value
                    .messages
                    .iter()
                    .filter_map(|m| m.normalise(&value.contacts))
                    .count();
                n += value.statuses.len();
            }
        }
        n
    }

    proptest! {
        #[test]
        fn the_parser_never_panics_on_arbitrary_json(value in json_value()) {
            parse_all(value.to_string().as_bytes());
        }

        #[test]
        fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            parse_all(&bytes);
        }
    }

    fn inbound(fixture: &str) -> Vec<Inbound> {
        let webhook: Webhook = serde_json::from_str(fixture).expect("fixture parses");
        let mut out = Vec::new();
        for entry in webhook.entry {
            for change in entry.changes {
                let value: ChangeValue = serde_json::from_value(change.value).expect("value");
                assert_eq!(value.metadata.phone_number_id, "106540352242922");
                out.extend(
                    value
                        .messages
                        .iter()
                        .filter_map(|m| m.normalise(&value.contacts)),
                );
            }
        }
        out
    }

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../../tests/fixtures/whatsapp/", $name))
        };
    }

    #[test]
    fn every_message_type_normalises() {
        let text = inbound(fixture!("text.json"));
        assert_eq!(text[0].user, "16505551234");
        assert_eq!(text[0].name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(
            text[0].content,
            MessageContent::text("Does it come in another color?")
        );
        assert!(text[0].wamid.starts_with("wamid."));

        let b = inbound(fixture!("interactive_button_reply.json"));
        assert!(
            matches!(&b[0].content, MessageContent::Postback { payload, title } if payload == "change-button" && title.as_ref().map(|t| t.expose().as_str()) == Some("Change"))
        );
        let l = inbound(fixture!("interactive_list_reply.json"));
        assert!(
            matches!(&l[0].content, MessageContent::Postback { payload, .. } if payload == "priority_express")
        );
        let q = inbound(fixture!("button.json"));
        assert!(
            matches!(&q[0].content, MessageContent::Postback { payload, .. } if payload == "Unsubscribe")
        );
        let i = inbound(fixture!("image.json"));
        assert_eq!(
            i[0].content.as_prompt_text(),
            "[image] Is this the right one?"
        );
        let loc = inbound(fixture!("location.json"));
        assert!(loc[0].content.as_prompt_text().contains("Main Office"));
        assert!(
            inbound(fixture!("reaction.json")).is_empty(),
            "reactions are ignored by the bot"
        );
        let u = inbound(fixture!("unsupported.json"));
        assert_eq!(
            u[0].content.as_prompt_text(),
            "[unsupported message type: unsupported]"
        );
        let name_only = inbound(fixture!("username_only.json"));
        assert_eq!(
            (name_only[0].user.as_str(), name_only[0].name.as_deref()),
            ("US.13491208655302741918", Some("Pat"))
        );
        assert!(inbound(fixture!("statuses.json")).is_empty());
    }
}
