//! Human handoff: does a user message ask for a person? A message matches the tenant's
//! `human_handoff_phrase` when it contains the phrase's words, in order and adjacent,
//! ignoring case, accents and punctuation ("Talk to a HUMAN!" matches "talk to a human";
//! "humane" does not match "human").

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Whether `text` contains `phrase` as a whole phrase.
pub fn matches(text: &str, phrase: &str) -> bool {
    let wanted = words(phrase);
    if wanted.is_empty() {
        return false;
    }
    let said = words(text);
    said.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

/// Lower-case words without accents.
fn words(s: &str) -> Vec<String> {
    let folded: String = s
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .collect::<String>()
        .to_lowercase();
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn whole_phrase_ignoring_case_accents_and_punctuation() {
        assert!(matches("Please, TALK to a human!", "talk to a human"));
        assert!(matches("je veux parler à un humain", "parler a un humain"));
        assert!(matches("PARLER À UN HUMAIN", "parler à un humain"));
        assert!(!matches("talk to a humane society", "talk to a human"));
        assert!(!matches("talk to human", "talk to a human"));
        assert!(!matches("a human to talk", "talk to a human"));
        assert!(!matches("anything", "   "));
    }
}
