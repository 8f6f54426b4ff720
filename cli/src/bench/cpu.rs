//! Where the machine's CPU went during a run: the fleet's own processes, the bench
//! process (its load generator, long-polls and the LLM double) and the local services
//! the fleet uses (MariaDB, RabbitMQ, Redis), each as cores busy and as CPU milliseconds
//! per answered message. On a shared machine this says which process a saturated run
//! ran out of CPU in, and what one message costs each of them.

use std::fs;

/// The services' process names (`/proc/<pid>/comm`), by the name the report gives them.
const SERVICES: [(&str, &[&str]); 3] = [
    ("mariadb", &["mariadbd", "mysqld"]),
    ("rabbitmq", &["beam.smp"]),
    ("redis", &["redis-server"]),
];

/// The processes watched, by group.
pub(super) struct Processes {
    groups: Vec<(&'static str, Vec<u32>)>,
}

impl Processes {
    /// The fleet's ingress and worker processes, this process, and every process of the
    /// local services found in /proc.
    pub(super) fn watch(ingress: Vec<u32>, workers: Vec<u32>) -> Self {
        let mut groups = vec![
            ("ingress", ingress),
            ("worker", workers),
            ("bench", vec![std::process::id()]),
        ];
        let running = running_processes();
        for (group, names) in SERVICES {
            let pids = running
                .iter()
                .filter(|(_, comm)| names.contains(&comm.as_str()))
                .map(|(pid, _)| *pid)
                .collect();
            groups.push((group, pids));
        }
        Self { groups }
    }

    /// CPU seconds each group has used so far (a process that is gone counts nothing).
    pub(super) fn cpu_seconds(&self) -> Vec<f64> {
        self.groups
            .iter()
            .map(|(_, pids)| pids.iter().filter_map(|p| cpu_seconds(*p)).sum())
            .collect()
    }

    /// Each group's cores busy over `wall` seconds and CPU ms per answered message,
    /// between two samples of [`Self::cpu_seconds`].
    pub(super) fn report(
        &self,
        before: &[f64],
        after: &[f64],
        wall: f64,
        answered: usize,
    ) -> serde_json::Value {
        let per_message = answered.max(1) as f64;
        self.groups
            .iter()
            .zip(before.iter().zip(after))
            .map(|((group, _), (b, a))| {
                let used = (a - b).max(0.0);
                (
                    (*group).to_owned(),
                    serde_json::json!({
                        "cores": used / wall,
                        "ms_per_answered": used * 1e3 / per_message,
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Every process's pid and command name.
fn running_processes() -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim_end().to_owned()))
        })
        .collect()
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_and_its_cpu_counted() {
        let me = std::process::id();
        assert!(running_processes().iter().any(|(pid, _)| *pid == me));
        let started = cpu_seconds(me).expect("this process's stat");
        // Burn a little CPU so the counter (in ticks of 10 ms) must move.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(60);
        let mut spins = 0u64;
        while std::time::Instant::now() < deadline {
            spins = std::hint::black_box(spins + 1);
        }
        let watched = Processes::watch(Vec::new(), Vec::new());
        let now = watched.cpu_seconds();
        let report = watched.report(&vec![0.0; now.len()], &now, 1.0, 10);
        assert!(cpu_seconds(me).expect("still running") > started);
        assert!(report["bench"]["cores"].as_f64().expect("a number") > 0.0);
        assert_eq!(report["ingress"]["cores"].as_f64(), Some(0.0));
        assert!(report.get("mariadb").is_some() && report.get("redis").is_some());
    }
}
