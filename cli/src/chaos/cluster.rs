//! `chatfleet chaos --cluster`: the fleet on a three-node RabbitMQ cluster of the run's
//! own (`scripts/rabbitmq-cluster`, so it needs the project's checkout and the local
//! RabbitMQ installation), whose broker fault stops the node leading the work queues
//! and starts it again.

use std::path::PathBuf;
use std::time::Duration;

/// Three nodes, stopped and removed when dropped (also when the run fails half-way),
/// unless kept for inspection.
pub(super) struct Cluster {
    dir: PathBuf,
    /// The nodes' AMQP URLs, comma-separated (`amqp.urls`).
    pub urls: String,
    keep: bool,
}

fn script(args: &[&str]) -> anyhow::Result<String> {
    crate::scripts::run("rabbitmq-cluster", args)
}

impl Cluster {
    /// Starts the nodes (on the first free ports the script finds); `keep`: left
    /// running at the end, and said where.
    pub(super) async fn start(id: &str, keep: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chatfleet-chaos-{id}"));
        let path = dir.to_string_lossy().into_owned();
        let urls = tokio::task::spawn_blocking(move || script(&["start", &path])).await??;
        Ok(Self { dir, urls, keep })
    }

    /// Stops the node leading `queue`, waits `down`, and starts it again; its number.
    pub(super) async fn bounce_leader_of(
        &self,
        queue: &str,
        down: Duration,
    ) -> anyhow::Result<String> {
        let path = self.dir.to_string_lossy().into_owned();
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || {
            let leader = script(&["leader", &path, &queue])?;
            anyhow::ensure!(!leader.is_empty(), "no node leads {queue}");
            script(&["stop-node", &path, &leader])?;
            std::thread::sleep(down);
            script(&["start-node", &path, &leader])?;
            Ok(leader)
        })
        .await?
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let path = self.dir.to_string_lossy().into_owned();
        if self.keep {
            eprintln!("the RabbitMQ cluster is kept: scripts/rabbitmq-cluster stop {path}");
        } else if let Err(e) = script(&["stop", &path]) {
            eprintln!("could not stop the RabbitMQ cluster in {path}: {e}");
        }
    }
}
