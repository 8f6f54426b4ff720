//! Personal data kept from the LLM (a tenant's `redact_pii`): e-mail addresses, phone
//! numbers, payment card numbers (Luhn-checked) and IBANs (checksum-checked) in what a
//! turn sends the model — the user's messages, the history, tool results — become stable
//! placeholders (`<EMAIL_1>`, `<PHONE_1>`, `<CARD_1>`, `<IBAN_1>`: the same value, the same
//! placeholder, all turn long), and the placeholders the model writes back are restored
//! before the reply is stored and delivered and before a tool is called. The stored user
//! message keeps what the user wrote. A number that fails its checksum is left as typed.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Iban,
    Card,
    Email,
    Phone,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Iban => "IBAN",
            Self::Card => "CARD",
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
        }
    }
}

/// Candidates, in the order they are looked for (an IBAN's and a card's digits are taken
/// before a phone number could claim them).
static PATTERNS: LazyLock<[(Kind, Regex); 4]> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("a valid pattern");
    [
        (Kind::Iban, re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")),
        (Kind::Card, re(r"\b\d(?:[ -]?\d){12,18}\b")),
        (
            Kind::Email,
            re(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        ),
        (Kind::Phone, re(r"(?:\+|\b)\d(?:[ ().-]{0,2}\d){6,14}\b")),
    ]
});

/// A placeholder as the model may write it back.
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<(IBAN|CARD|EMAIL|PHONE)_(\d+)>").expect("a valid pattern"));

/// One turn's placeholders and what they stand for.
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    by_value: HashMap<(Kind, String), String>,
    by_placeholder: HashMap<String, String>,
    counts: HashMap<Kind, usize>,
}

impl Redactor {
    /// `text` with its personal data replaced by placeholders.
    pub(crate) fn redact(&mut self, text: &str) -> String {
        let mut out = text.to_owned();
        for (kind, pattern) in PATTERNS.iter() {
            let mut replaced = String::with_capacity(out.len());
            let mut last = 0;
            for found in pattern.find_iter(&out) {
                let Some(len) = valid_prefix(*kind, found.as_str()) else {
                    continue;
                };
                let value = &found.as_str()[..len];
                if matches!(kind, Kind::Card | Kind::Phone)
                    && !standalone(&out, found.start(), found.start() + len)
                {
                    continue;
                }
                replaced.push_str(&out[last..found.start()]);
                replaced.push_str(&self.placeholder(*kind, value));
                last = found.start() + len;
            }
            replaced.push_str(&out[last..]);
            out = replaced;
        }
        out
    }

    /// `text` with the placeholders of this turn put back (others left as written).
    pub(crate) fn restore(&self, text: &str) -> String {
        if self.by_placeholder.is_empty() {
            return text.to_owned();
        }
        PLACEHOLDER
            .replace_all(text, |c: &regex::Captures<'_>| {
                self.by_placeholder
                    .get(&c[0])
                    .cloned()
                    .unwrap_or_else(|| c[0].to_owned())
            })
            .into_owned()
    }

    /// How many values were replaced.
    pub(crate) fn replaced(&self) -> usize {
        self.by_placeholder.len()
    }

    fn placeholder(&mut self, kind: Kind, value: &str) -> String {
        let key = (kind, normalized(kind, value));
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        let placeholder = format!("<{}_{n}>", kind.label());
        self.by_value.insert(key, placeholder.clone());
        self.by_placeholder
            .insert(placeholder.clone(), value.to_owned());
        placeholder
    }
}

/// The value without its spacing (the same number written two ways is one value).
fn normalized(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Email => value.to_ascii_lowercase(),
        _ => value.chars().filter(char::is_ascii_alphanumeric).collect(),
    }
}

/// Whether `text[start..end]` is a whole number, not a piece of a longer run of digit
/// groups (an account number, an IBAN whose checksum failed).
fn standalone(text: &str, start: usize, end: usize) -> bool {
    let separator = |c: char| matches!(c, ' ' | '-' | '.');
    let mut before = text[..start].chars().rev();
    let digit_before = match before.next() {
        Some(c) if separator(c) => before.next().is_some_and(|c| c.is_ascii_digit()),
        Some(c) => c.is_ascii_digit(),
        None => false,
    };
    let mut after = text[end..].chars();
    let digit_after = match after.next() {
        Some(c) if separator(c) => after.next().is_some_and(|c| c.is_ascii_digit()),
        Some(c) => c.is_ascii_digit(),
        None => false,
    };
    !digit_before && !digit_after
}

/// The length of the longest start of `value` that is what `kind` says, ending at a
/// group's end: a match that ran on into the next word (`DE89 … 00 AND`) still finds
/// its number.
fn valid_prefix(kind: Kind, value: &str) -> Option<usize> {
    if valid(kind, value) {
        return Some(value.len());
    }
    if !matches!(kind, Kind::Iban | Kind::Card) {
        return None;
    }
    let bytes = value.as_bytes();
    (1..bytes.len())
        .rev()
        .filter(|&i| matches!(bytes[i], b' ' | b'-') && bytes[i - 1].is_ascii_alphanumeric())
        .find(|&i| valid(kind, &value[..i]))
}

fn valid(kind: Kind, value: &str) -> bool {
    match kind {
        Kind::Iban => iban_ok(value),
        Kind::Card => luhn_ok(value),
        Kind::Email => true,
        // An international number, or one long enough not to be a date or a short id.
        Kind::Phone => {
            let digits = value.chars().filter(char::is_ascii_digit).count();
            (8..=15).contains(&digits) && (value.starts_with('+') || digits >= 9)
        }
    }
}

/// The Luhn check of a card number's 13–19 digits.
fn luhn_ok(value: &str) -> bool {
    let digits: Vec<u32> = value.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: the first four characters moved to the end, letters as 10–35, mod 97 is 1.
fn iban_ok(value: &str) -> bool {
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let n = match c.to_digit(36) {
            Some(n) => n,
            None => return false,
        };
        for d in n.to_string().chars() {
            remainder = (remainder * 10 + d.to_digit(10).unwrap_or(0)) % 97;
        }
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_becomes_stable_placeholders_and_comes_back() {
        let mut r = Redactor::default();
        let text = "Mail jane.doe@example.com or call +49 151 2345 6789. Card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00. Again: Jane.Doe@example.com";
        let redacted = r.redact(text);
        assert_eq!(
            redacted,
            "Mail <EMAIL_1> or call <PHONE_1>. Card <CARD_1>, IBAN <IBAN_1>. Again: <EMAIL_1>"
        );
        // The model's answer, placeholders and all, reads as the user wrote it.
        let answer =
            r.restore("I will write to <EMAIL_1> and charge <CARD_1>; <EMAIL_9> is not ours");
        assert_eq!(
            answer,
            "I will write to jane.doe@example.com and charge 4111 1111 1111 1111; <EMAIL_9> is not ours"
        );
        assert_eq!(r.replaced(), 4);
    }

    #[test]
    fn numbers_that_fail_their_checksum_are_left_as_typed() {
        let mut r = Redactor::default();
        let text = "card 4111 1111 1111 1112, IBAN DE89 3704 0044 0532 0130 01, order 1234";
        let redacted = r.redact(text);
        assert!(redacted.contains("4111 1111 1111 1112"), "{redacted}");
        assert!(
            redacted.contains("DE89 3704 0044 0532 0130 01"),
            "{redacted}"
        );
        assert!(redacted.contains("order 1234"), "{redacted}");
        // Dates and short ids are no phone numbers; an IBAN followed by a word is found.
        let mut r = Redactor::default();
        assert_eq!(
            r.redact("on 2026-12-06, ref 1234567"),
            "on 2026-12-06, ref 1234567"
        );
        assert_eq!(
            r.redact("pay GB82 WEST 1234 5698 7654 32 AND thanks"),
            "pay <IBAN_1> AND thanks"
        );
        assert!(
            !redacted.contains("<CARD_") && !redacted.contains("<IBAN_"),
            "{redacted}"
        );
    }

    #[test]
    fn luhn_and_iban_checks() {
        assert!(luhn_ok("4111111111111111"));
        assert!(luhn_ok("5500 0000 0000 0004"));
        assert!(!luhn_ok("4111111111111112"));
        assert!(!luhn_ok("1234"));
        assert!(iban_ok("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(!iban_ok("GB82 WEST 1234 5698 7654 33"));
    }
}
