//! Prompt assembly for an ~8k-token prompt with a warm tokenizer (the target: p99 under
//! 2 ms on the 2-core development machine). Run with `cargo bench -p worker`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use shared::db::{AgentMode, Client, ClientConfig, HistoryTurn, Role, TenantConfig};
use shared::ids::ClientId;
use shared::tenant::{ClientStatus, Plan};
use worker::prompt::{Tokenizer, assemble};

fn tenant() -> TenantConfig {
    TenantConfig {
        client: Client {
            id: ClientId::new(1),
            slug: "bench".into(),
            name: "Bench Retail".into(),
            timezone: "UTC".into(),
            locale: "en".into(),
            plan: Plan::Enterprise,
            status: ClientStatus::Active,
            created_at: Utc::now(),
            sessions_revoked_at: None,
        },
        config: ClientConfig {
            persona_name: "Ava".into(),
            persona_tone: shared::tenant::PersonaTone::Friendly,
            persona_language: "English".into(),
            llm_model: "llama3.1:8b".into(),
            llm_temperature: 0.7,
            llm_max_output_tokens: 1024,
            max_context_turns: 20,
            rag_top_k: 5,
            human_handoff_phrase: None,
            handoff_message: "connecting you".into(),
            config_version: 1,
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
        modes: (0..4)
            .map(|i| AgentMode {
                module_key: format!("mode{i}"),
                prompt_fragment: format!(
                    "Capability {i}: {}",
                    "Follow the returns policy carefully. ".repeat(20)
                ),
                is_active: true,
                priority: i,
            })
            .collect(),
    }
}

/// 20 history turns, user and assistant in turn, with `text(i)` as the i-th.
fn turns(text: impl Fn(usize) -> String) -> Vec<HistoryTurn> {
    (0..20)
        .map(|i| HistoryTurn {
            role: if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            content: text(i),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let tokenizer = Tokenizer::new().expect("tokenizer");
    let tenant = tenant();
    let knowledge: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "Chunk {i}: {}",
                "Our stores open at nine and close at six on weekdays. ".repeat(40)
            )
        })
        .collect();
    let history = turns(|i| {
        format!(
            "Turn {i}: {}",
            "I would like to know more about the delivery options. ".repeat(20)
        )
    });
    let fits = assemble(
        &tokenizer,
        1_000_000,
        &tenant,
        &knowledge,
        &history,
        "Where is my order?",
    );
    eprintln!("prompt size: {} tokens", fits.tokens);
    // Every part new (nothing counted before): the cost of the first turn that sees it.
    c.bench_function("tokenize ~8k tokens of new content", |b| {
        let whole: String = knowledge
            .iter()
            .chain(history.iter().map(|h| &h.content))
            .cloned()
            .collect();
        b.iter(|| tokenizer.count_uncached(black_box(&whole)))
    });
    // A turn of an ongoing conversation: history, knowledge and modes were counted before.
    c.bench_function("assemble ~8k-token prompt (fits)", |b| {
        b.iter(|| {
            assemble(
                &tokenizer,
                black_box(8192),
                &tenant,
                &knowledge,
                &history,
                "Where is my order?",
            )
        })
    });
    // A chat-sized turn: 20 short history turns, no knowledge, no modes (the common case,
    // and every text in it is short).
    let chat = turns(|i| format!("Turn {i}: could you tell me when my order {i} arrives?"));
    let plain = TenantConfig {
        modes: Vec::new(),
        ..tenant.clone()
    };
    c.bench_function("assemble a chat of 20 short turns", |b| {
        b.iter(|| {
            assemble(
                &tokenizer,
                black_box(8192),
                &plain,
                &[],
                &chat,
                "Where is my order?",
            )
        })
    });
    c.bench_function("assemble ~8k-token prompt into a 4k budget", |b| {
        b.iter(|| {
            assemble(
                &tokenizer,
                black_box(4096),
                &tenant,
                &knowledge,
                &history,
                "Where is my order?",
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
