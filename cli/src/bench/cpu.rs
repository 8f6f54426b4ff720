//! Where the machine's CPU went during a run: the fleet's own processes, the bench
//! process (its load generator, long-polls and the LLM double) and the local services
//! the fleet uses (MariaDB, RabbitMQ, Redis), each as cores busy, CPU milliseconds per
//! answered message and thread switches per answered message (every hop between
//! processes or threads wakes one). On a shared machine this says which process a
//! saturated run ran out of CPU in, and what one message costs each of them.

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

    /// What each group has used so far (a process that is gone counts nothing).
    pub(super) fn sample(&self) -> Vec<Usage> {
        self.groups
            .iter()
            .map(|(_, pids)| {
                pids.iter()
                    .map(|p| Usage {
                        cpu_seconds: cpu_seconds(*p).unwrap_or_default(),
                        switches: switches(*p),
                    })
                    .fold(Usage::default(), |sum, u| Usage {
                        cpu_seconds: sum.cpu_seconds + u.cpu_seconds,
                        switches: sum.switches + u.switches,
                    })
            })
            .collect()
    }

    /// Each group's cores busy over `wall` seconds, CPU ms and thread switches per
    /// answered message, between two [`Self::sample`]s.
    pub(super) fn report(
        &self,
        before: &[Usage],
        after: &[Usage],
        wall: f64,
        answered: usize,
    ) -> serde_json::Value {
        let per_message = answered.max(1) as f64;
        let entry = |used: f64, switches: f64| {
            serde_json::json!({
                "cores": used / wall,
                "ms_per_answered": used * 1e3 / per_message,
                "switches_per_answered": switches / per_message,
            })
        };
        let mut platform = (0.0, 0.0);
        let mut report: serde_json::Map<_, _> = self
            .groups
            .iter()
            .zip(before.iter().zip(after))
            .map(|((group, _), (b, a))| {
                let used = (a.cpu_seconds - b.cpu_seconds).max(0.0);
                let switches = a.switches.saturating_sub(b.switches) as f64;
                if *group != "bench" {
                    platform = (platform.0 + used, platform.1 + switches);
                }
                ((*group).to_owned(), entry(used, switches))
            })
            .collect();
        // Everything but the load generator (and the LLM double, which runs in it).
        report.insert("platform".to_owned(), entry(platform.0, platform.1));
        report.into()
    }
}

/// CPU time and thread switches a group of processes used so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    cpu_seconds: f64,
    switches: u64,
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

/// Context switches (voluntary and not) of every thread of a process.
fn switches(pid: u32) -> u64 {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    threads
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// User plus system CPU time of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
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
        let now = watched.sample();
        let report = watched.report(&vec![Usage::default(); now.len()], &now, 1.0, 10);
        assert!(cpu_seconds(me).expect("still running") > started);
        assert!(report["bench"]["cores"].as_f64().expect("a number") > 0.0);
        // Its threads were switched out at least once (the test harness waits on them).
        assert!(
            report["bench"]["switches_per_answered"]
                .as_f64()
                .expect("a number")
                > 0.0
        );
        assert_eq!(report["ingress"]["cores"].as_f64(), Some(0.0));
        assert!(report.get("mariadb").is_some() && report.get("redis").is_some());
    }
}
