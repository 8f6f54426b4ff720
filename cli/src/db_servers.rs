//! MariaDB servers of a run's own (`scripts/mariadb-shard`, so it needs the project's
//! checkout and root or the mysql user), for `--db-shards`: the fleet's tenants are
//! spread over the machine's MariaDB and these.

use std::path::PathBuf;

/// Extra servers, stopped and removed when dropped (also when a run fails half-way),
/// unless kept for inspection.
pub(crate) struct DbServers {
    dirs: Vec<PathBuf>,
    /// Each server's root URL (no database).
    pub urls: Vec<String>,
    keep: bool,
}

fn script(args: &[&str]) -> anyhow::Result<String> {
    crate::scripts::run("mariadb-shard", args)
}

impl DbServers {
    /// `count` servers of the run `id`.
    pub(crate) async fn start(id: &str, count: usize, keep: bool) -> anyhow::Result<Self> {
        let mut servers = Self {
            dirs: Vec::new(),
            urls: Vec::new(),
            keep,
        };
        for n in 0..count {
            let dir = std::env::temp_dir().join(format!("chatfleet-db-{id}-{}", n + 2));
            let path = dir.to_string_lossy().into_owned();
            servers.dirs.push(dir);
            let url = tokio::task::spawn_blocking(move || script(&["start", &path])).await??;
            servers.urls.push(url);
        }
        Ok(servers)
    }
}

impl Drop for DbServers {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let path = dir.to_string_lossy().into_owned();
            if self.keep {
                eprintln!("the MariaDB server is kept: scripts/mariadb-shard remove {path}");
            } else if let Err(e) = script(&["remove", &path]) {
                eprintln!("could not remove the MariaDB server in {path}: {e}");
            }
        }
    }
}
