//! Prompt assembly (DESIGN.md §8) under a hard token budget.
//!
//! The system prompt is built at run time from the tenant's rows, in a fixed order —
//! persona lines, PRODUCT KNOWLEDGE (best chunk first), ACTIVE CAPABILITIES (highest
//! priority first) — followed by the recent turns and the new user message. When the
//! whole would exceed the budget, parts are dropped in this order: oldest history turns,
//! lowest-ranked knowledge chunks, lowest-priority modes. The persona lines and the new
//! message are never dropped; a message too large on its own is truncated, and the prompt
//! says so. Tokens are counted with one [`Tokenizer`] built per process.

use shared::db::{HistoryTurn, Role, TenantConfig};

use crate::llm::{ChatMessage, ChatRole};

mod tokenizer;

pub use tokenizer::Tokenizer;
use tokenizer::{PER_MESSAGE, REPLY_PRIMER};

/// Below this distance from the budget the estimate is trusted without a full recount.
const RECOUNT_MARGIN: usize = 64;

/// What had to go to fit the budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub history_turns: usize,
    pub knowledge_chunks: usize,
    pub modes: usize,
    /// Tokens cut from the end of the user's message.
    pub truncated_tokens: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// An assembled chat and its measured size.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub messages: Vec<ChatMessage>,
    pub tokens: usize,
    pub dropped: Dropped,
}

/// The system prompt for a tenant, with the knowledge chunks (best first) to include.
pub fn system_prompt(tenant: &TenantConfig, knowledge: &[String]) -> String {
    let modes: Vec<&str> = tenant
        .modes
        .iter()
        .filter(|m| m.is_active)
        .map(|m| m.prompt_fragment.as_str())
        .collect();
    render_system(
        tenant,
        knowledge.iter().map(String::as_str),
        modes.into_iter(),
    )
}

fn persona(tenant: &TenantConfig) -> String {
    let c = &tenant.config;
    format!(
        "You are {}, an AI assistant for {}.\nTone: {}. Language: {}.\n",
        c.persona_name, tenant.client.name, c.persona_tone, c.persona_language
    )
}

const KNOWLEDGE_HEADER: &str = "=== PRODUCT KNOWLEDGE ===\n";
const MODES_HEADER: &str = "=== ACTIVE CAPABILITIES ===\n";

fn render_system<'a>(
    tenant: &TenantConfig,
    knowledge: impl Iterator<Item = &'a str>,
    modes: impl Iterator<Item = &'a str>,
) -> String {
    let mut prompt = persona(tenant);
    prompt.push_str(KNOWLEDGE_HEADER);
    for chunk in knowledge {
        prompt.push_str(chunk.trim_end());
        prompt.push('\n');
    }
    prompt.push_str(MODES_HEADER);
    for fragment in modes {
        prompt.push_str(fragment.trim_end());
        prompt.push('\n');
    }
    prompt
}

/// Assembles the chat within `budget` tokens.
pub fn assemble(
    tokenizer: &Tokenizer,
    budget: usize,
    tenant: &TenantConfig,
    knowledge: &[String],
    history: &[HistoryTurn],
    user_message: &str,
) -> Assembled {
    let modes: Vec<&str> = tenant
        .modes
        .iter()
        .filter(|m| m.is_active)
        .map(|m| m.prompt_fragment.as_str())
        .collect();
    let turns: Vec<(ChatRole, &str)> = history
        .iter()
        .filter_map(|t| match t.role {
            Role::User => Some((ChatRole::User, t.content.as_str())),
            // A human agent's words are the assistant side of the conversation.
            Role::Assistant | Role::Agent => Some((ChatRole::Assistant, t.content.as_str())),
            Role::System => None,
        })
        .collect();

    // Every part is tokenized once; the total is their sum.
    let fixed = tokenizer.count(&persona(tenant))
        + tokenizer.count(KNOWLEDGE_HEADER)
        + tokenizer.count(MODES_HEADER)
        + PER_MESSAGE
        + REPLY_PRIMER;
    let chunk_costs: Vec<usize> = knowledge
        .iter()
        .map(|c| tokenizer.count(c.trim_end()) + 1)
        .collect();
    let mode_costs: Vec<usize> = modes
        .iter()
        .map(|m| tokenizer.count(m.trim_end()) + 1)
        .collect();
    let turn_costs: Vec<usize> = turns
        .iter()
        .map(|(_, c)| tokenizer.count(c) + PER_MESSAGE)
        .collect();
    let user_cost = tokenizer.count(user_message) + PER_MESSAGE;

    let counts = (turns.len(), knowledge.len(), modes.len());
    let mut plan = Plan {
        first_turn: 0,
        chunks: knowledge.len(),
        modes: modes.len(),
        user_tokens: None,
    };
    let mut total = fixed
        + chunk_costs.iter().sum::<usize>()
        + mode_costs.iter().sum::<usize>()
        + turn_costs.iter().sum::<usize>()
        + user_cost;
    let mut extra = 0; // tokens the estimate missed, learnt from a recount
    loop {
        while total + extra > budget {
            if plan.first_turn < turns.len() {
                total -= turn_costs[plan.first_turn];
                plan.first_turn += 1;
            } else if plan.chunks > 0 {
                plan.chunks -= 1;
                total -= chunk_costs[plan.chunks];
            } else if plan.modes > 0 {
                plan.modes -= 1;
                total -= mode_costs[plan.modes];
            } else {
                // Only the persona and the new message are left: cut the message.
                let note_cost = tokenizer.count(&truncation_note(99_999)) + 1;
                let others = total - user_cost;
                let room = budget.saturating_sub(others + extra + note_cost + PER_MESSAGE);
                let keep = plan
                    .user_tokens
                    .map_or(room, |k| room.min(k.saturating_sub(1)));
                plan.user_tokens = Some(keep);
                total = others + keep + note_cost + PER_MESSAGE;
                break;
            }
        }
        let messages = plan.render(tokenizer, tenant, knowledge, &modes, &turns, user_message);
        // The sum of parts can differ from the whole by a few tokens at the seams: trust
        // it when far from the budget, else measure the real thing.
        if total + extra + RECOUNT_MARGIN <= budget {
            return plan.finish(messages, total + extra, user_message, tokenizer, &counts);
        }
        let measured = tokenizer.count_chat(&messages);
        let nothing_left = plan.first_turn == turns.len()
            && plan.chunks == 0
            && plan.modes == 0
            && plan.user_tokens == Some(0);
        if measured <= budget || nothing_left {
            return plan.finish(messages, measured, user_message, tokenizer, &counts);
        }
        extra += measured - total.min(measured);
        extra = extra.max(1);
    }
}

fn truncation_note(removed: usize) -> String {
    format!("[Note: this message was too long and was truncated; {removed} tokens were removed.]")
}

/// Which parts survive.
struct Plan {
    first_turn: usize,
    chunks: usize,
    modes: usize,
    /// Tokens of the user's message kept, when it had to be truncated.
    user_tokens: Option<usize>,
}

impl Plan {
    fn render(
        &self,
        tokenizer: &Tokenizer,
        tenant: &TenantConfig,
        knowledge: &[String],
        modes: &[&str],
        turns: &[(ChatRole, &str)],
        user_message: &str,
    ) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(turns.len() - self.first_turn + 2);
        messages.push(ChatMessage::new(
            ChatRole::System,
            render_system(
                tenant,
                knowledge[..self.chunks].iter().map(String::as_str),
                modes[..self.modes].iter().copied(),
            ),
        ));
        for (role, content) in &turns[self.first_turn..] {
            messages.push(ChatMessage::new(*role, (*content).to_owned()));
        }
        let content = match self.user_tokens {
            None => user_message.to_owned(),
            Some(keep) => {
                let removed = tokenizer.count(user_message).saturating_sub(keep);
                format!(
                    "{}\n{}",
                    tokenizer.truncate(user_message, keep),
                    truncation_note(removed)
                )
            }
        };
        messages.push(ChatMessage::new(ChatRole::User, content));
        messages
    }

    /// `counts`: how many turns, chunks and modes there were before dropping.
    fn finish(
        &self,
        messages: Vec<ChatMessage>,
        tokens: usize,
        user_message: &str,
        tokenizer: &Tokenizer,
        counts: &(usize, usize, usize),
    ) -> Assembled {
        Assembled {
            messages,
            tokens,
            dropped: Dropped {
                history_turns: self.first_turn.min(counts.0),
                knowledge_chunks: counts.1 - self.chunks,
                modes: counts.2 - self.modes,
                truncated_tokens: self
                    .user_tokens
                    .map_or(0, |keep| tokenizer.count(user_message).saturating_sub(keep)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use shared::db::{AgentMode, Client, ClientConfig};
    use shared::ids::ClientId;
    use shared::tenant::{ClientStatus, Plan as Tier};

    fn tenant() -> TenantConfig {
        TenantConfig {
            client: Client {
                id: ClientId::new(1),
                slug: "acme".into(),
                name: "Acme".into(),
                timezone: "UTC".into(),
                locale: "en".into(),
                plan: Tier::Starter,
                status: ClientStatus::Active,
                created_at: Utc::now(),
                sessions_revoked_at: None,
            },
            config: ClientConfig {
                persona_name: "Ava".into(),
                persona_tone: shared::tenant::PersonaTone::Friendly,
                persona_language: "German".into(),
                llm_model: "llama3.1:8b".into(),
                llm_temperature: 0.2,
                llm_max_output_tokens: 1024,
                max_context_turns: 4,
                rag_top_k: 0,
                human_handoff_phrase: None,
                handoff_message: "connecting you".into(),
                config_version: 3,
                fallback_message: "sorry".into(),
                fallback_model: None,
                prompt_token_budget: None,
                coalesce_window_ms: 0,
                whatsapp_typing_indicator: true,
                builtin_tools: Vec::new(),
                whatsapp_reengagement_template: None,
                transcribe_audio: true,
                llm_vision: false,
                media_fallback_message: "Say the file could not be opened.".into(),
                budget: shared::db::BudgetPolicy::default(),
                fallback_to_platform_key: false,
                redact_pii: false,
                retention_days: None,
            },
            tools: Vec::new(),
            webhooks: Vec::new(),
            llm_credentials: Vec::new(),
            modes: vec![
                AgentMode {
                    module_key: "sales".into(),
                    prompt_fragment: "Offer upgrades.".into(),
                    is_active: true,
                    priority: 1,
                },
                AgentMode {
                    module_key: "support".into(),
                    prompt_fragment: "Help with orders.".into(),
                    is_active: true,
                    priority: 2,
                },
            ],
        }
    }

    fn history(n: usize) -> Vec<HistoryTurn> {
        (0..n)
            .map(|i| HistoryTurn {
                role: if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                content: format!("turn {i}: {}", "words ".repeat(20)),
            })
            .collect()
    }

    fn knowledge() -> Vec<String> {
        vec![
            format!("BEST chunk {}", "alpha ".repeat(30)),
            format!("SECOND chunk {}", "beta ".repeat(30)),
        ]
    }

    #[test]
    fn system_prompt_follows_the_documented_layout() {
        assert_eq!(
            system_prompt(&tenant(), &["Returns within 30 days.".into()]),
            "You are Ava, an AI assistant for Acme.\n\
             Tone: friendly. Language: German.\n\
             === PRODUCT KNOWLEDGE ===\n\
             Returns within 30 days.\n\
             === ACTIVE CAPABILITIES ===\n\
             Offer upgrades.\n\
             Help with orders.\n"
        );
    }

    #[test]
    fn everything_fits_in_a_large_budget() {
        let tok = Tokenizer::new().expect("tokenizer");
        let out = assemble(
            &tok,
            8192,
            &tenant(),
            &knowledge(),
            &history(4),
            "new question",
        );
        assert!(!out.dropped.any());
        let roles: Vec<ChatRole> = out.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles.len(), 6);
        assert_eq!(roles[0], ChatRole::System);
        assert_eq!(out.messages[5].content, "new question");
        assert_eq!(
            out.messages[0].content,
            system_prompt(&tenant(), &knowledge())
        );
        let measured = tok.count_chat(&out.messages);
        assert!(
            out.tokens.abs_diff(measured) <= 8,
            "estimate {} vs measured {measured}",
            out.tokens
        );
    }

    #[test]
    fn history_goes_first_then_knowledge_then_modes() {
        let tok = Tokenizer::new().expect("tokenizer");
        let full = assemble(
            &tok,
            100_000,
            &tenant(),
            &knowledge(),
            &history(6),
            "new question",
        );
        // The floor: persona lines, an empty (truncated) message and its note.
        let floor = assemble(
            &tok,
            0,
            &tenant(),
            &knowledge(),
            &history(6),
            "new question",
        )
        .tokens;
        assert!(floor < 80, "floor {floor}");
        let mut previous = Dropped::default();
        // Shrink the budget step by step: drops only ever grow, in the documented order.
        for budget in (floor..full.tokens).rev().step_by(7) {
            let out = assemble(
                &tok,
                budget,
                &tenant(),
                &knowledge(),
                &history(6),
                "new question",
            );
            let d = out.dropped;
            assert!(
                tok.count_chat(&out.messages) <= budget,
                "budget {budget} exceeded"
            );
            assert!(
                d.history_turns >= previous.history_turns
                    && d.knowledge_chunks >= previous.knowledge_chunks
                    && d.modes >= previous.modes
            );
            if d.knowledge_chunks > 0 {
                assert_eq!(
                    d.history_turns, 6,
                    "knowledge dropped before all history at {budget}"
                );
            }
            if d.modes > 0 {
                assert_eq!(
                    d.knowledge_chunks, 2,
                    "a mode dropped before all knowledge at {budget}"
                );
            }
            let system = &out.messages[0].content;
            assert!(system.starts_with(
                "You are Ava, an AI assistant for Acme.\nTone: friendly. Language: German.\n"
            ));
            if d.knowledge_chunks == 1 {
                assert!(
                    system.contains("BEST chunk") && !system.contains("SECOND chunk"),
                    "lowest-ranked chunk goes first"
                );
            }
            if d.modes == 1 {
                assert!(
                    system.contains("Offer upgrades.") && !system.contains("Help with orders."),
                    "lowest priority goes first"
                );
            }
            if d.history_turns > 0 && d.history_turns < 6 {
                assert!(
                    out.messages[1]
                        .content
                        .starts_with(&format!("turn {}:", d.history_turns)),
                    "oldest turns go first"
                );
            }
            if d.truncated_tokens == 0 {
                assert_eq!(
                    out.messages.last().map(|m| m.content.as_str()),
                    Some("new question")
                );
            }
            previous = d;
        }
        let bottom = assemble(
            &tok,
            0,
            &tenant(),
            &knowledge(),
            &history(6),
            "new question",
        )
        .dropped;
        assert_eq!(
            (bottom.history_turns, bottom.knowledge_chunks, bottom.modes),
            (6, 2, 2)
        );
        assert!(
            previous.history_turns == 6,
            "small budgets drop all history"
        );
    }

    #[test]
    fn an_oversized_message_is_truncated_and_says_so() {
        let tok = Tokenizer::new().expect("tokenizer");
        let huge = "été ".repeat(3000);
        let out = assemble(&tok, 300, &tenant(), &knowledge(), &history(3), &huge);
        assert!(tok.count_chat(&out.messages) <= 300);
        assert!(out.dropped.truncated_tokens > 0);
        let user = &out.messages.last().expect("user").content;
        assert!(user.starts_with("été été"));
        assert!(user.contains("was truncated"));
        assert!(
            out.messages[0].content.starts_with("You are Ava"),
            "persona survives"
        );
    }
}
