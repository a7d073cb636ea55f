//! The server's CPU time (user + system) and resident memory, read from `/proc/PID`.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time the process has used so far, in user space and in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// CPU time of several processes and their descendants; `None` if none is readable.
pub fn total_cpu_time(pids: &[u32]) -> Option<CpuTime> {
    pids.iter()
        .filter_map(|pid| cpu_time(*pid))
        .reduce(|total, time| CpuTime { user: total.user + time.user, system: total.system + time.system })
}

/// RSS of several processes and their descendants, in KiB; `None` if none is readable.
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().filter_map(|pid| rss_kib(*pid)).reduce(|total, rss| total + rss)
}

/// The process and all its descendants (Pushpin runs as several processes).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    tree.extend(children.split_whitespace().filter_map(|child| child.parse::<u32>().ok()));
                }
            }
        }
        index += 1;
    }
    tree
}

/// CPU time of the process and its descendants.
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let mut total = process_cpu_time(pid)?;
    for child in process_tree(pid).into_iter().skip(1) {
        if let Some(time) = process_cpu_time(child) {
            total.user += time.user;
            total.system += time.system;
        }
    }
    Some(total)
}

fn process_cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Option<Duration> {
        let ticks: u64 = fields.get(index)?.parse().ok()?;
        Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
    };
    Some(CpuTime { user: ticks(11)?, system: ticks(12)? })
}

/// Resident set size in KiB, of the process and its descendants.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let own = process_rss_kib(pid)?;
    Some(own + process_tree(pid).into_iter().skip(1).filter_map(process_rss_kib).sum::<u64>())
}

fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(pid).is_some());
    }
}
