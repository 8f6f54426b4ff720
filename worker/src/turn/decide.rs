//! What a turn does with its pending messages, decided from the tenant's status, who has
//! the conversation and the handoff phrase alone: no I/O, so every rule is tested here.
//! The plan's rate limit is the one check left to the turn, after this: it takes a token
//! from the tenant's shared bucket, which only a turn that will ask the LLM may spend.

use shared::db::{ConversationMode, PendingTurn};
use shared::tenant::ClientStatus;

use crate::handoff;

/// What a turn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The tenant is suspended or cancelled: no LLM call; the platform's inactive notice
    /// answers, or (without one) the messages are closed unanswered.
    Inactive,
    /// A pending message says the tenant's handoff phrase: the conversation goes to a
    /// human, and the handoff notice answers.
    HandOff,
    /// A person has the conversation: the messages are forwarded to them, the bot stays
    /// silent.
    Forward,
    /// The bot answers: the LLM is asked (within the plan's rate limit).
    Ask,
}

/// The rules, in the order they apply: an inactive tenant's bot never speaks; a handoff
/// phrase wins over who has the conversation (saying it again while a human has it
/// repeats the notice); a human's conversation is theirs.
pub(crate) fn decide(
    status: ClientStatus,
    mode: ConversationMode,
    handoff_phrase: Option<&str>,
    pending: &[PendingTurn],
) -> Decision {
    if status != ClientStatus::Active {
        return Decision::Inactive;
    }
    if let Some(phrase) = handoff_phrase
        && pending.iter().any(|p| handoff::matches(&p.text, phrase))
    {
        return Decision::HandOff;
    }
    if mode == ConversationMode::Human {
        return Decision::Forward;
    }
    Decision::Ask
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use shared::ids::EnvelopeId;

    use super::*;

    fn pending(texts: &[&str]) -> Vec<PendingTurn> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| PendingTurn {
                message_id: i as u64 + 1,
                envelope_id: EnvelopeId::random(),
                text: (*text).to_owned(),
                created_at: Utc::now(),
            })
            .collect()
    }

    const ACTIVE: ClientStatus = ClientStatus::Active;
    const BOT: ConversationMode = ConversationMode::Bot;
    const HUMAN: ConversationMode = ConversationMode::Human;

    #[test]
    fn an_active_tenants_bot_answers() {
        let said = pending(&["hello", "are you there?"]);
        assert_eq!(decide(ACTIVE, BOT, None, &said), Decision::Ask);
        assert_eq!(decide(ACTIVE, BOT, Some("agent"), &said), Decision::Ask);
    }

    #[test]
    fn an_inactive_tenants_bot_never_speaks() {
        let said = pending(&["talk to an agent"]);
        for status in [ClientStatus::Suspended, ClientStatus::Cancelled] {
            for mode in [BOT, HUMAN] {
                assert_eq!(
                    decide(status, mode, Some("agent"), &said),
                    Decision::Inactive
                );
            }
        }
    }

    #[test]
    fn the_handoff_phrase_in_any_pending_message_hands_off() {
        let said = pending(&["hi", "I want to talk to a HUMAN please"]);
        assert_eq!(decide(ACTIVE, BOT, Some("human"), &said), Decision::HandOff);
        assert_eq!(
            decide(ACTIVE, HUMAN, Some("human"), &said),
            Decision::HandOff
        );
        // Without a phrase configured nothing hands off.
        assert_eq!(decide(ACTIVE, BOT, None, &said), Decision::Ask);
    }

    #[test]
    fn a_humans_conversation_is_forwarded() {
        let said = pending(&["still there?"]);
        assert_eq!(
            decide(ACTIVE, HUMAN, Some("human"), &said),
            Decision::Forward
        );
        assert_eq!(decide(ACTIVE, HUMAN, None, &said), Decision::Forward);
    }
}
