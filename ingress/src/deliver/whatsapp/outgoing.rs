//! What a reply becomes on WhatsApp: Graph `messages` payloads, sent in order.
//!
//! Text goes in parts of at most 4,096 characters (split at paragraph, sentence, then
//! word boundaries). A reply with choices ends in an interactive message whose body is
//! the text's last part (at most 1,024 characters there): reply buttons for up to 3
//! choices of at most 20 characters each, a list for up to 10 of at most 24; more or
//! longer choices are appended to the text, numbered, and the user types one. A tap
//! comes back as the choice's title (`button_reply` / `list_reply`), which the turn reads
//! as the user's words.

use serde_json::{Value, json};
use shared::envelope::Template;

/// Longest text of one WhatsApp message.
const MAX_TEXT: usize = 4096;
/// Longest body of an interactive message.
const MAX_INTERACTIVE_BODY: usize = 1024;
const MAX_BUTTONS: usize = 3;
const MAX_BUTTON_TITLE: usize = 20;
const MAX_ROWS: usize = 10;
const MAX_ROW_TITLE: usize = 24;
/// The label of the button that opens a list (at most 20 characters).
const LIST_BUTTON: &str = "Choose";

/// How the choices go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Buttons,
    List,
    Numbered,
}

fn shape(text: &str, choices: &[String]) -> Shape {
    let fits = |most: usize, longest: usize| {
        choices.len() <= most
            && choices
                .iter()
                .all(|c| !c.trim().is_empty() && c.chars().count() <= longest)
    };
    if text.trim().is_empty() {
        Shape::Numbered // an interactive message needs a body
    } else if fits(MAX_BUTTONS, MAX_BUTTON_TITLE) {
        Shape::Buttons
    } else if fits(MAX_ROWS, MAX_ROW_TITLE) {
        Shape::List
    } else {
        Shape::Numbered
    }
}

/// The payloads of a reply of `text` offering `choices` to `to`, in sending order.
pub(super) fn messages(to: &str, text: &str, choices: &[String]) -> Vec<Value> {
    let shape = if choices.is_empty() {
        Shape::Numbered
    } else {
        shape(text, choices)
    };
    if shape == Shape::Numbered {
        let mut full = text.to_owned();
        if !choices.is_empty() {
            let numbered: Vec<String> = choices
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{}. {c}", i + 1))
                .collect();
            full = format!("{}\n\n{}", text.trim_end(), numbered.join("\n"));
        }
        return parts(&full, MAX_TEXT)
            .iter()
            .map(|p| text_message(to, p))
            .collect();
    }
    // The text's last part, cut to fit an interactive body, carries the choices.
    let mut texts = parts(text, MAX_TEXT);
    let last = texts.pop().unwrap_or_default();
    let mut tail = parts(&last, MAX_INTERACTIVE_BODY);
    let body = tail.pop().unwrap_or_default();
    texts.extend(tail);
    let mut out: Vec<Value> = texts.iter().map(|p| text_message(to, p)).collect();
    let ids = (1..).map(|n| format!("choice-{n}"));
    let action = match shape {
        Shape::Buttons => json!({
            "buttons": choices.iter().zip(ids).map(|(c, id)| json!({
                "type": "reply", "reply": { "id": id, "title": c },
            })).collect::<Vec<_>>(),
        }),
        _ => json!({
            "button": LIST_BUTTON,
            "sections": [{
                "rows": choices.iter().zip(ids).map(|(c, id)| json!({ "id": id, "title": c }))
                    .collect::<Vec<_>>(),
            }],
        }),
    };
    out.push(json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": if shape == Shape::Buttons { "button" } else { "list" },
            "body": { "text": body },
            "action": action,
        },
    }));
    out
}

/// A template message (`type: template`): the only kind WhatsApp delivers while the
/// 24-hour window is closed.
pub(super) fn template(to: &str, template: &Template) -> Value {
    let mut body = json!({
        "name": template.name,
        "language": { "code": template.language },
    });
    if let Some(components) = &template.components {
        body["components"] = components.clone();
    }
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": body,
    })
}

fn text_message(to: &str, body: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "body": body },
    })
}

/// `text` in parts of at most `most` characters (one empty part for an empty text).
fn parts(text: &str, most: usize) -> Vec<String> {
    let chunks = shared::knowledge::chunks(text, most, 0);
    if chunks.is_empty() {
        vec![String::new()]
    } else {
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(titles: &[&str]) -> Vec<String> {
        titles.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn a_template_carries_its_language_code_and_components() {
        let t = Template {
            name: "order_update".into(),
            language: "en_US".into(),
            components: Some(
                json!([{ "type": "body", "parameters": [{ "type": "text", "text": "42" }] }]),
            ),
        };
        let m = template("15550001", &t);
        assert_eq!(m["type"], "template");
        assert_eq!(m["template"]["name"], "order_update");
        assert_eq!(m["template"]["language"]["code"], "en_US");
        assert_eq!(
            m["template"]["components"][0]["parameters"][0]["text"],
            "42"
        );
        let bare = template(
            "1",
            &Template {
                components: None,
                ..t
            },
        );
        assert!(bare["template"].get("components").is_none(), "{bare}");
    }

    #[test]
    fn a_plain_reply_is_text() {
        let out = messages("15550001", "Hello", &[]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["type"], "text");
        assert_eq!(out[0]["text"]["body"], "Hello");
        assert_eq!(out[0]["to"], "15550001");
    }

    #[test]
    fn up_to_three_short_choices_are_reply_buttons() {
        let out = messages("1", "Which size?", &choices(&["Small", "Medium", "Large"]));
        assert_eq!(out.len(), 1);
        let i = &out[0]["interactive"];
        assert_eq!(out[0]["type"], "interactive");
        assert_eq!(i["type"], "button");
        assert_eq!(i["body"]["text"], "Which size?");
        let buttons = i["action"]["buttons"].as_array().expect("buttons");
        assert_eq!(buttons.len(), 3);
        assert_eq!(buttons[2]["reply"]["title"], "Large");
        assert_eq!(buttons[2]["reply"]["id"], "choice-3");
        assert_eq!(buttons[0]["type"], "reply");
    }

    #[test]
    fn a_title_over_twenty_characters_or_a_fourth_choice_makes_a_list() {
        let long = "A title of 21 letters";
        assert_eq!(long.chars().count(), 21);
        for offered in [
            choices(&["Small", long]),
            choices(&["One", "Two", "Three", "Four"]),
        ] {
            let out = messages("1", "Pick", &offered);
            let i = &out[0]["interactive"];
            assert_eq!(i["type"], "list", "{offered:?}");
            assert_eq!(i["action"]["button"], LIST_BUTTON);
            let rows = i["action"]["sections"][0]["rows"].as_array().expect("rows");
            assert_eq!(rows.len(), offered.len());
            assert_eq!(rows[1]["title"], offered[1].as_str());
        }
    }

    #[test]
    fn beyond_the_list_limits_choices_are_numbered_text() {
        let eleven: Vec<String> = (1..=11).map(|n| format!("Option {n}")).collect();
        let too_long = choices(&["Fine", "A row title of 25 letters"]);
        for offered in [eleven, too_long] {
            let out = messages("1", "Pick one:", &offered);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0]["type"], "text");
            let body = out[0]["text"]["body"].as_str().expect("text");
            assert!(body.starts_with("Pick one:\n\n1. "), "{body}");
            assert!(
                body.ends_with(&format!(
                    "{}. {}",
                    offered.len(),
                    offered.last().expect("one")
                )),
                "{body}"
            );
        }
    }

    #[test]
    fn a_long_text_goes_first_and_the_buttons_carry_its_last_part() {
        let paragraph = "word ".repeat(300); // 1,500 characters
        let text = [paragraph.trim(); 4].join("\n\n"); // ~6,000
        let out = messages("1", &text, &choices(&["Yes", "No"]));
        let last = out.last().expect("messages");
        assert_eq!(last["type"], "interactive");
        let body = last["interactive"]["body"]["text"].as_str().expect("body");
        assert!(body.chars().count() <= MAX_INTERACTIVE_BODY);
        let mut sent = Vec::new();
        for m in &out[..out.len() - 1] {
            assert_eq!(m["type"], "text");
            let part = m["text"]["body"].as_str().expect("text");
            assert!(part.chars().count() <= MAX_TEXT);
            sent.push(part);
        }
        sent.push(body);
        let words = |s: &str| s.split_whitespace().count();
        assert_eq!(
            words(&sent.join(" ")),
            words(&text),
            "nothing lost or repeated"
        );
    }
}
