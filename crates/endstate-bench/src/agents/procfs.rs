//! What `/proc` says about a process: resident and proportional memory, CPU time, children.

use std::path::PathBuf;

/// Resident memory of a process (`VmRSS` of `/proc/PID/status`), in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field_kib(&status, "VmRSS:").ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no VmRSS"))
}

/// Anonymous and file-backed resident memory (`RssAnon`, `RssFile` of `/proc/PID/status`), in KiB.
pub(crate) fn rss_parts_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((field_kib(&status, "RssAnon:")?, field_kib(&status, "RssFile:")?))
}

/// Proportional memory (`Pss` of `/proc/PID/smaps_rollup`), in KiB, when it is readable.
pub(crate) fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&rollup, "Pss:")
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The fields of `/proc/PID/stat` after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat does not parse"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time the process used so far, user plus system (`utime + stime` of `/proc/PID/stat`,
/// which includes its threads, ended ones too), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // utime and stime are fields 14 and 15.
    stat_seconds(pid, 11, 12)
}

/// CPU time of the process's children that ended and were waited for, user plus system
/// (`cutime + cstime` of `/proc/PID/stat`), in seconds.
pub(crate) fn children_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // cutime and cstime are fields 16 and 17.
    stat_seconds(pid, 13, 14)
}

/// Two clock-tick fields of `/proc/PID/stat` (indexes after the command), added, in seconds.
fn stat_seconds(pid: u32, first: usize, second: usize) -> anyhow::Result<f64> {
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat is short"))?
            .parse()?)
    };
    Ok((ticks(first)? + ticks(second)?) as f64 / clock_ticks() as f64)
}

/// CPU time of the process's live threads in ns (the first field of each
/// `/proc/PID/task/TID/schedstat`): finer than `cpu_seconds`, but blind to threads that ended.
pub(crate) fn threads_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Clock ticks per second of `/proc` times.
pub(crate) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The children of `parent` whose command name is `comm`.
pub(crate) fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == comm && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// The working directory of a process.
pub(crate) fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}
