//! The bench's report: one run's figures (or the medians of several) as a table on
//! standard output, and the percentiles and medians they are made of.

use serde_json::{Value, json};

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub(super) fn print_ceiling(c: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "  broker ceiling ({} persistent 1 KiB messages, quorum queue): single hop {:.0}/s (publishing with confirms and consuming with acks at once); publishing alone {:.0}/s, consuming alone {:.0}/s",
        c["messages"],
        f(&c["hop_per_s"]),
        f(&c["publish_per_s"]),
        f(&c["consume_per_s"])
    );
}

/// Prints one run's report (or the medians of several) as a table.
pub(super) fn print(label: &str, r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "{label}{} {} msg/s for {} s over {} conversations of {} tenant(s) on {} database shard(s) ({} turns of history), {} worker(s), LLM double {} ms (held {:.1} ms on average):",
        r["channel"].as_str().unwrap_or_default(),
        r["offered_per_s"],
        r["duration_s"],
        r["conversations"],
        r["tenants"],
        r["db_shards"],
        r["history_turns"],
        r["workers"],
        r["llm_latency_ms"],
        f(&r["llm_mean_hold_ms"])
    );
    println!(
        "  sent / accepted / answered:  {} / {} / {}  ({:.0} accepted/s over the sends; {:.0} answered/s, first answer to last; {} turns, {:.2} messages each)",
        r["sent"],
        r["accepted"],
        r["answered"],
        f(&r["accepted_per_s"]),
        f(&r["achieved_per_s"]),
        r["llm_calls"],
        f(&r["answered"]) / f(&r["llm_calls"])
    );
    if r["streaming"] == json!(true) {
        println!(
            "  streaming (SSE, the provider streams; {} ms between words):",
            r["word_delay_ms"]
        );
    }
    let streaming = r["streaming"] == json!(true);
    for (name, v) in [
        ("first delta (ms)", &r["first_delta_ms"]),
        ("end to end (ms)", &r["end_to_end_ms"]),
        ("platform overhead (ms)", &r["overhead_ms"]),
        ("status of a send (ms)", &r["status_ms"]),
    ]
    .into_iter()
    .filter(|(name, _)| streaming || !name.starts_with("first delta"))
    {
        println!(
            "  {name:<28} p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            f(&v["p50"]),
            f(&v["p90"]),
            f(&v["p99"]),
            f(&v["max"])
        );
    }
    println!(
        "  worker peak RSS {:.0} MiB, CPU {:.2} cores, peak turns in flight {}; dead letters {}; errors {} {}",
        f(&r["worker_peak_rss_mib"]),
        f(&r["worker_cpu_cores"]),
        r["peak_turns_in_flight"],
        r["dead_letters"],
        r["errors"],
        r["error_kinds"]
            .as_str()
            .filter(|k| !k.is_empty())
            .map(|k| format!("({k})"))
            .unwrap_or_default()
    );
    if let Some(by_process) = r["cpu_by_process"].as_object() {
        let shares: Vec<String> = by_process
            .iter()
            .map(|(name, v)| {
                format!(
                    "{name} {:.2} ({:.2}; {:.0})",
                    f(&v["cores"]),
                    f(&v["ms_per_answered"]),
                    f(&v["switches_per_answered"])
                )
            })
            .collect();
        println!(
            "  CPU, cores (ms and thread switches per answer):  {}",
            shares.join("  ")
        );
    }
    let work = &r["work_per_answered"];
    if work.is_object() {
        println!(
            "  work per answer:             MariaDB {:.1} round trips, {:.1} statements, {:.2} redo log writes, {:.2} fsyncs; Redis {:.1} commands",
            f(&work["db_round_trips"]),
            f(&work["db_statements"]),
            f(&work["db_log_writes"]),
            f(&work["db_fsyncs"]),
            f(&work["redis_commands"]),
        );
    }
    let stages: Vec<String> = r["turn_stage_mean_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| {
            format!(
                "{} {:.1}",
                pair[0].as_str().unwrap_or_default(),
                f(&pair[1])
            )
        })
        .collect();
    if !stages.is_empty() {
        println!("  turn stages, mean ms:        {}", stages.join("  "));
    }
    if r["ceiling"].is_object() {
        print_ceiling(&r["ceiling"]);
        println!(
            "  answered/s as a fraction of the broker's single-hop ceiling: {:.1}%",
            f(&r["fraction_of_ceiling"]) * 100.0
        );
    }
    let rounds = &r["accept_rounds"];
    if f(&rounds["rounds"]) > 0.0 {
        println!(
            "  accepting:                   {:.0} rounds, {:.1} messages each; {} batches split (accepted one by one)",
            f(&rounds["rounds"]),
            f(&rounds["messages_per_round"]),
            rounds["batches_split"]
        );
    }
}

/// The median of every number across several reports of the same shape (other values
/// are taken from the first).
pub(super) fn median_of(values: &[&Value]) -> Value {
    match values[0] {
        Value::Number(_) if values.iter().all(|v| v.is_u64()) => {
            let mut numbers: Vec<u64> = values.iter().filter_map(|v| v.as_u64()).collect();
            numbers.sort_unstable();
            json!(numbers[numbers.len() / 2])
        }
        Value::Number(_) => {
            let mut numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            numbers.sort_by(f64::total_cmp);
            json!(percentile(&numbers, 0.5))
        }
        Value::Object(first) => Value::Object(
            first
                .keys()
                .map(|k| {
                    let column: Vec<&Value> = values.iter().map(|v| &v[k.as_str()]).collect();
                    (k.clone(), median_of(&column))
                })
                .collect(),
        ),
        Value::Array(first) => Value::Array(
            (0..first.len())
                .map(|i| {
                    let column: Vec<&Value> = values.iter().map(|v| &v[i]).collect();
                    median_of(&column)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_number_by_number() {
        let runs = [
            json!({ "n": 3, "ms": { "p50": 1.5 }, "stages": [["llm", 9.0]], "channel": "api" }),
            json!({ "n": 1, "ms": { "p50": 0.5 }, "stages": [["llm", 1.0]], "channel": "api" }),
            json!({ "n": 2, "ms": { "p50": 2.5 }, "stages": [["llm", 5.0]], "channel": "api" }),
        ];
        let all: Vec<&Value> = runs.iter().collect();
        assert_eq!(
            median_of(&all),
            json!({ "n": 2, "ms": { "p50": 1.5 }, "stages": [["llm", 5.0]], "channel": "api" })
        );
    }
}
