//! Prompt assembly (DESIGN.md §8): the system prompt is built at run time from the
//! tenant's rows, in a fixed order, followed by the recent turns and the new message.
//! Nothing here varies by tenant except through the data it is given.

use shared::db::{HistoryTurn, Role, TenantConfig};

use crate::llm::{ChatMessage, ChatRole};

/// The system prompt for a tenant, with the knowledge chunks (best first) to include.
pub fn system_prompt(tenant: &TenantConfig, knowledge: &[String]) -> String {
    let c = &tenant.config;
    let mut prompt = format!(
        "You are {}, an AI assistant for {}.\nTone: {}. Language: {}.\n=== PRODUCT KNOWLEDGE ===\n",
        c.persona_name, tenant.client.name, c.persona_tone, c.persona_language
    );
    for chunk in knowledge {
        prompt.push_str(chunk.trim_end());
        prompt.push('\n');
    }
    prompt.push_str("=== ACTIVE CAPABILITIES ===\n");
    for mode in tenant.modes.iter().filter(|m| m.is_active) {
        prompt.push_str(mode.prompt_fragment.trim_end());
        prompt.push('\n');
    }
    prompt
}

/// The whole chat: system prompt, history (oldest first), then the new user message.
pub fn assemble(
    tenant: &TenantConfig,
    knowledge: &[String],
    history: &[HistoryTurn],
    user_message: &str,
) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(history.len() + 2);
    messages.push(ChatMessage {
        role: ChatRole::System,
        content: system_prompt(tenant, knowledge),
    });
    for turn in history {
        let role = match turn.role {
            Role::User => ChatRole::User,
            // A human agent's words are the assistant side of the conversation.
            Role::Assistant | Role::Agent => ChatRole::Assistant,
            Role::System => continue,
        };
        messages.push(ChatMessage {
            role,
            content: turn.content.clone(),
        });
    }
    messages.push(ChatMessage {
        role: ChatRole::User,
        content: user_message.to_owned(),
    });
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use shared::db::{AgentMode, Client, ClientConfig, ClientStatus, Plan};
    use shared::ids::ClientId;

    fn tenant() -> TenantConfig {
        TenantConfig {
            client: Client {
                id: ClientId::new(1),
                slug: "acme".into(),
                name: "Acme".into(),
                timezone: "UTC".into(),
                locale: "en".into(),
                plan: Plan::Starter,
                status: ClientStatus::Active,
                created_at: Utc::now(),
            },
            config: ClientConfig {
                persona_name: "Ava".into(),
                persona_tone: "friendly".into(),
                persona_language: "German".into(),
                llm_model: "llama3.1:8b".into(),
                llm_temperature: 0.2,
                max_context_turns: 4,
                rag_top_k: 0,
                human_handoff_phrase: None,
                config_version: 3,
                fallback_message: "sorry".into(),
                fallback_model: None,
                prompt_token_budget: None,
                coalesce_window_ms: 0,
            },
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
    fn history_comes_between_system_prompt_and_new_message() {
        let history = vec![
            HistoryTurn {
                role: Role::User,
                content: "hi".into(),
            },
            HistoryTurn {
                role: Role::Agent,
                content: "agent here".into(),
            },
        ];
        let chat = assemble(&tenant(), &[], &history, "new");
        let roles: Vec<ChatRole> = chat.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                ChatRole::System,
                ChatRole::User,
                ChatRole::Assistant,
                ChatRole::User
            ]
        );
        assert_eq!(chat[3].content, "new");
    }
}
