//! Reading the fleet's own figures during a bench run: every worker's and ingress's
//! Prometheus text, summed over processes and series, by the names of
//! [`shared::metric`]'s catalogue.

use std::collections::HashMap;

use serde_json::{Value, json};
use shared::metric;

/// The Prometheus text of every worker that answered.
async fn scrape(http: &reqwest::Client, urls: &[String]) -> Vec<String> {
    let mut texts = Vec::with_capacity(urls.len());
    for url in urls {
        if let Ok(r) = http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            && let Ok(text) = r.text().await
        {
            texts.push(text);
        }
    }
    texts
}

/// The ingress's accepting rounds ([`metric::ACCEPT_ROUND_MESSAGES`]) and the batches
/// that failed and were accepted one by one ([`metric::ACCEPT_BATCHES_SPLIT`]).
pub(super) async fn accept_rounds(http: &reqwest::Client, urls: &[String]) -> Value {
    let texts = scrape(http, urls).await;
    let round_messages = |part| metric::sample(metric::ACCEPT_ROUND_MESSAGES, part);
    let rounds = metric_total(&texts, &round_messages("count"));
    json!({
        "rounds": rounds,
        "messages_per_round": metric_total(&texts, &round_messages("sum")) / rounds,
        "batches_split": metric_total(&texts, metric::ACCEPT_BATCHES_SPLIT) as u64,
    })
}

/// Turns in flight on every worker now (their [`metric::TURNS_IN_FLIGHT`] gauges).
pub(super) async fn turns_in_flight(http: &reqwest::Client, urls: &[String]) -> u64 {
    metric_total(&scrape(http, urls).await, metric::TURNS_IN_FLIGHT) as u64
}

/// Deliveries the workers parked so far ([`metric::DELIVERIES_PARKED`]): a tenant over
/// its share of a worker's window.
pub(crate) async fn deliveries_parked(http: &reqwest::Client, urls: &[String]) -> u64 {
    metric_total(&scrape(http, urls).await, metric::DELIVERIES_PARKED) as u64
}

/// The sum of metric `name` over every series (any labels) of every scraped text.
fn metric_total(texts: &[String], name: &str) -> f64 {
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Mean time per turn stage (ms) over every worker, from their
/// [`metric::TURN_STAGE_SECONDS`] sums and counts, in the order a turn runs them.
pub(super) async fn turn_stages(http: &reqwest::Client, urls: &[String]) -> Vec<(String, f64)> {
    const ORDER: [&str; 7] = [
        "queued", "record", "lock", "reads", "llm", "store", "publish",
    ];
    let series = metric::sample(metric::TURN_STAGE_SECONDS, "");
    let mut totals: HashMap<String, (f64, f64)> = HashMap::new();
    for text in scrape(http, urls).await {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(series.as_str()) else {
                continue;
            };
            let (Some((kind, rest)), Some(value)) = (
                rest.split_once("{stage=\""),
                line.rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let stage = rest.split('"').next().unwrap_or_default().to_owned();
            let entry = totals.entry(stage).or_default();
            match kind {
                "sum" => entry.0 += value,
                "count" => entry.1 += value,
                _ => {}
            }
        }
    }
    ORDER
        .iter()
        .filter_map(|stage| {
            let (sum, count) = totals.get(*stage)?;
            (*count > 0.0).then(|| ((*stage).to_owned(), sum / count * 1e3))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_series_and_processes() {
        let texts = [
            "# TYPE chatfleet_turns_in_flight gauge\nchatfleet_turns_in_flight 3\nchatfleet_turns_in_flight_total 9\n".to_owned(),
            "chatfleet_turns_in_flight{worker=\"b\"} 2\n".to_owned(),
        ];
        assert_eq!(metric_total(&texts, metric::TURNS_IN_FLIGHT), 5.0);
        assert_eq!(metric_total(&texts, "chatfleet_absent"), 0.0);
    }
}
