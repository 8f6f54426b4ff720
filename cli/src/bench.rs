//! `chatfleet bench --ceiling`: the raw broker rate on this machine (persistent 1 KiB
//! messages, confirms, a quorum queue, the same client library), the yardstick for every
//! throughput figure. The end-to-end bench (issue 9) builds on it.

use clap::Args;
use shared::mq::Broker;
use shared::settings::Settings;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Measure the broker's own ceiling (publish with confirms, consume with acks).
    #[arg(long, required = true)]
    ceiling: bool,
    /// Messages to push through.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Message size, in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0, "--messages must be positive");
    let broker = Broker::connect(&settings.amqp, "chatfleet-bench").await?;
    let c = broker.measure_ceiling(args.messages, args.size).await?;
    broker.close().await;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "ceiling": { "messages": c.messages, "message_bytes": args.size,
                    "publish_per_s": c.publish_per_s, "consume_per_s": c.consume_per_s }
            })
        );
    } else {
        println!(
            "broker ceiling ({} persistent {}-byte messages, quorum queue): publish with confirms {:.0}/s, consume with acks {:.0}/s",
            c.messages, args.size, c.publish_per_s, c.consume_per_s
        );
    }
    Ok(())
}
