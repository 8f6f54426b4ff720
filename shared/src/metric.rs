//! The catalogue of every metric chatfleet emits: one constant per name, with its kind
//! and labels. The code records through these constants (`metrics::counter!(metric::X)`),
//! the bench reads the workers' and ingresses' `/metrics` by them, and a test checks that
//! the Grafana dashboard plots only names listed here ([`ALL`]). A name is never written
//! as a string anywhere else.
//!
//! Labels are bounded sets (channel, provider, reason, kind…); tenants are never labels:
//! per-tenant figures come from `usage_daily`.

/// Counter `{channel}`: messages a channel accepted (confirmed on the broker).
pub const INBOUND_ACCEPTED: &str = "chatfleet_inbound_accepted_total";
/// Counter `{channel, reason}`: requests a channel refused (bad signature, origin…);
/// `channel` is `longpoll` or `http` for polls and requests refused because an ingress
/// holds its most.
pub const INBOUND_REJECTED: &str = "chatfleet_inbound_rejected_total";
/// Histogram: messages per accepting round of the ingress (one transaction each).
pub const ACCEPT_ROUND_MESSAGES: &str = "chatfleet_accept_round_messages";
/// Counter: accepting rounds that failed as a batch and were accepted one by one.
pub const ACCEPT_BATCHES_SPLIT: &str = "chatfleet_accept_batches_split_total";
/// Counter `{result}` (`local`, `redis`, `miss`): where a tenant's config was found.
pub const CONFIG_CACHE: &str = "chatfleet_config_cache_total";
/// Counter: reply transactions run again after InnoDB chose them as a deadlock's victim.
pub const DB_DEADLOCK_RETRIES: &str = "chatfleet_db_deadlock_retries_total";
/// Gauge: the work shards a worker consumes now (their sum over the fleet is
/// `amqp.work_shards` once it has settled).
pub const WORK_SHARDS_HELD: &str = "chatfleet_work_shards_held";
/// Counter: deliveries a worker moved from the way back in (`inbound.work`: retries,
/// parked and requeued deliveries) to their work shards.
pub const WORK_FORWARDED: &str = "chatfleet_work_forwarded_total";
/// Gauge: turns a worker is running now.
pub const TURNS_IN_FLIGHT: &str = "chatfleet_turns_in_flight";
/// Histogram `{stage}` (seconds): where a turn's time goes, stage by stage.
pub const TURN_STAGE_SECONDS: &str = "chatfleet_turn_stage_seconds";
/// Histogram `{channel}` (seconds): from the ingress's receipt to the reply's publish.
pub const END_TO_END_SECONDS: &str = "chatfleet_end_to_end_seconds";
/// Counter: user messages answered together with an earlier one (coalesced bursts).
pub const COALESCED_MESSAGES: &str = "chatfleet_coalesced_messages_total";
/// Counter: conversations handed to a human agent.
pub const HANDOFFS: &str = "chatfleet_handoffs_total";
/// Counter: turns delayed because the tenant's plan limit was reached.
pub const RATE_LIMITED: &str = "chatfleet_rate_limited_total";
/// Counter: deliveries sent down the retry ladder.
pub const RETRIES: &str = "chatfleet_retries_total";
/// Counter: deliveries dead-lettered.
pub const DEAD_LETTERS: &str = "chatfleet_dead_letters_total";
/// Counter: deliveries whose message an earlier turn had answered already.
pub const DELIVERIES_ANSWERED_AHEAD: &str = "chatfleet_deliveries_answered_ahead_total";
/// Counter: deliveries of a tenant over its share of a worker's window
/// (`worker.tenant_max_held`) moved to the retry ladder so other tenants' are reached.
pub const DELIVERIES_PARKED: &str = "chatfleet_deliveries_parked_total";
/// Counter: knowledge retrievals that failed (the turn went on without knowledge).
pub const RETRIEVAL_FAILURES: &str = "chatfleet_retrieval_failures_total";
/// Counter `{part}`: prompt parts dropped to fit the token budget.
pub const PROMPT_DROPPED: &str = "chatfleet_prompt_dropped_total";
/// Counter: user messages truncated to fit the token budget.
pub const PROMPT_TRUNCATED_MESSAGES: &str = "chatfleet_prompt_truncated_messages_total";
/// Histogram `{provider}` (seconds): LLM calls.
pub const LLM_SECONDS: &str = "chatfleet_llm_seconds";
/// Counter `{provider, kind}`: tokens, prompt and completion.
pub const LLM_TOKENS: &str = "chatfleet_llm_tokens_total";
/// Counter `{provider, model}`: what priced LLM calls and transcriptions cost, in
/// micro-units of the prices' currency.
pub const LLM_COST_MICROS: &str = "chatfleet_llm_cost_micros_total";
/// Counter `{provider, model}`: LLM calls and transcriptions of a model without a price.
pub const LLM_UNPRICED_CALLS: &str = "chatfleet_llm_unpriced_calls_total";
/// Counter `{provider}`: calls whose tenant's own key was refused.
pub const LLM_TENANT_KEY_REFUSED: &str = "chatfleet_llm_tenant_key_refused_total";
/// Counter `{action}`: turns a spent budget changed (fallback_model, fallback_message,
/// handoff).
pub const BUDGET_ACTIONS: &str = "chatfleet_budget_actions_total";
/// Counter: span batches the OTLP collector did not take (the spans are dropped).
pub const TRACE_EXPORT_FAILURES: &str = "chatfleet_trace_export_failures_total";
/// Counter `{reason}`: conversations erased (`request`, `retention`).
pub const CONVERSATIONS_ERASED: &str = "chatfleet_conversations_erased_total";
/// Counter `{what}` (`envelope`, `reply`): deliveries dropped because their conversation
/// was erased after they were sent (their data key is gone).
pub const ERASED_SKIPPED: &str = "chatfleet_erased_skipped_total";
/// Counter `{provider}`: failed LLM calls.
pub const LLM_ERRORS: &str = "chatfleet_llm_errors_total";
/// Counter `{provider}`: times a provider's circuit breaker opened.
pub const LLM_BREAKER_OPENED: &str = "chatfleet_llm_breaker_opened_total";
/// Counter `{provider}`: breakers of one tenant and model opened by the tenant's own
/// failures (key, model name, quota); other tenants keep calling.
pub const LLM_TENANT_BREAKER_OPENED: &str = "chatfleet_llm_tenant_breaker_opened_total";
/// Counter `{limit}`: requests refused 429 by an edge limit (sessions per address or
/// tenant, sends per session).
pub const EDGE_LIMITED: &str = "chatfleet_edge_limited_total";
/// Counter `{limit}`: requests let through because the edge limiter (Redis) failed.
pub const EDGE_LIMIT_UNAVAILABLE: &str = "chatfleet_edge_limit_unavailable_total";
/// Counter: admin writes done but not recorded in the audit log (its database write
/// failed; the error is logged).
pub const AUDIT_UNRECORDED: &str = "chatfleet_audit_unrecorded_total";
/// Gauge `{provider}`: LLM calls waiting for a free slot of the provider (its
/// `max_concurrency` is full).
pub const LLM_WAITING: &str = "chatfleet_llm_waiting";
/// Counter: turns answered by the tenant's fallback model.
pub const LLM_FALLBACKS: &str = "chatfleet_llm_fallbacks_total";
/// Counter `{outcome}`: tenants' tool calls (`ok`, `error`, `refused`, `invalid`,
/// `not_called`; `reused`: a turn run again took a recorded result).
pub const TOOL_CALLS: &str = "chatfleet_tool_calls_total";
/// Counter `{channel, result}`: replies handed to a provider (WhatsApp's Graph API).
pub const DELIVERIES: &str = "chatfleet_deliveries_total";
/// Counter: push notifications sent.
pub const PUSH_SENT: &str = "chatfleet_push_sent_total";
/// Counter: push notifications that failed.
pub const PUSH_FAILED: &str = "chatfleet_push_failed_total";
/// Counter: WhatsApp media the bot could not read (download or transcription failed;
/// the message went on as its placeholder).
pub const MEDIA_UNREAD: &str = "chatfleet_media_unread_total";
/// Counter `{type}`: webhook events recorded (one per event, whatever its endpoints).
pub const WEBHOOK_EVENTS: &str = "chatfleet_webhook_events_total";
/// Counter `{outcome}`: webhook attempts (`delivered`, `failed`, `gone`, `dead`).
pub const WEBHOOK_DELIVERIES: &str = "chatfleet_webhook_deliveries_total";
/// Histogram: seconds a webhook attempt took (to the answer's status, or the failure).
pub const WEBHOOK_LATENCY_SECONDS: &str = "chatfleet_webhook_latency_seconds";
/// Gauge `{queue}`: messages waiting in a queue.
pub const QUEUE_DEPTH: &str = "chatfleet_queue_depth";
/// Gauge `{queue}`: consumers of a queue.
pub const QUEUE_CONSUMERS: &str = "chatfleet_queue_consumers";

/// Every name above.
pub const ALL: [&str; 47] = [
    INBOUND_ACCEPTED,
    INBOUND_REJECTED,
    ACCEPT_ROUND_MESSAGES,
    ACCEPT_BATCHES_SPLIT,
    CONFIG_CACHE,
    DB_DEADLOCK_RETRIES,
    TURNS_IN_FLIGHT,
    TURN_STAGE_SECONDS,
    END_TO_END_SECONDS,
    COALESCED_MESSAGES,
    HANDOFFS,
    RATE_LIMITED,
    RETRIES,
    DEAD_LETTERS,
    DELIVERIES_ANSWERED_AHEAD,
    DELIVERIES_PARKED,
    RETRIEVAL_FAILURES,
    PROMPT_DROPPED,
    PROMPT_TRUNCATED_MESSAGES,
    LLM_SECONDS,
    LLM_TOKENS,
    LLM_COST_MICROS,
    LLM_UNPRICED_CALLS,
    LLM_TENANT_KEY_REFUSED,
    BUDGET_ACTIONS,
    CONVERSATIONS_ERASED,
    ERASED_SKIPPED,
    TRACE_EXPORT_FAILURES,
    LLM_ERRORS,
    LLM_BREAKER_OPENED,
    LLM_TENANT_BREAKER_OPENED,
    LLM_WAITING,
    EDGE_LIMITED,
    EDGE_LIMIT_UNAVAILABLE,
    AUDIT_UNRECORDED,
    LLM_FALLBACKS,
    TOOL_CALLS,
    DELIVERIES,
    PUSH_SENT,
    PUSH_FAILED,
    QUEUE_DEPTH,
    QUEUE_CONSUMERS,
    WORK_SHARDS_HELD,
    WORK_FORWARDED,
    WEBHOOK_EVENTS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_LATENCY_SECONDS,
];

/// A histogram's series of one kind: `sample(LLM_SECONDS, "count")` is
/// `chatfleet_llm_seconds_count`.
pub fn sample(histogram: &str, part: &str) -> String {
    format!("{histogram}_{part}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The Grafana dashboard plots only metrics of this catalogue (a renamed metric
    /// would leave a panel empty without anyone noticing).
    #[test]
    fn the_dashboard_plots_only_catalogued_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/chatfleet.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
                .expect("dashboard JSON");
        let mut plotted = BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for (start, _) in expr.match_indices("chatfleet_") {
                    let name: String = expr[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    plotted.insert(name);
                }
            }
        }
        assert!(plotted.len() > 5, "the dashboard plots {plotted:?}");
        let missing: Vec<_> = plotted
            .iter()
            .filter(|name| {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                !ALL.contains(&name.as_str()) && !ALL.contains(&base)
            })
            .collect();
        assert!(missing.is_empty(), "plotted but not emitted: {missing:?}");
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let unique: BTreeSet<_> = ALL.iter().collect();
        assert_eq!(unique.len(), ALL.len());
        assert!(ALL.iter().all(|n| n.starts_with("chatfleet_")));
    }
}
