//! What the runtime reads from `/proc`: process groups' members, their memory and CPU time, the
//! start time of a process and the boot id. Plain blocking functions; callers in async code run
//! the scans on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

/// The clock tick most Linux systems use for `/proc` times (`USER_HZ`), used when `sysconf` fails.
const FALLBACK_CLOCK_TICKS: u64 = 100;

/// The fields of `/proc/<pid>/stat` the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// `R`, `S`, `Z`, ...
    pub(super) state: char,
    /// The process group id.
    pub(super) pgrp: i32,
    /// User CPU time, in clock ticks.
    pub(super) utime: u64,
    /// System CPU time, in clock ticks.
    pub(super) stime: u64,
    /// When the process started, in clock ticks after boot.
    pub(super) start_ticks: u64,
}

impl Stat {
    /// Whether the process is gone but not reaped yet (it holds nothing but its entry).
    pub(super) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The resource use of one process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Usage {
    /// The sum of the members' resident memory, in bytes.
    pub(super) rss_bytes: u64,
    /// The sum of the members' user and system CPU time, in clock ticks.
    pub(super) cpu_ticks: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `fields[0]` is field 3 (state) of proc(5).
    let field = |number: usize| fields.get(number.checked_sub(3)?).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
    })
}

/// Parses `VmRSS` from the content of `/proc/<pid>/status`, in bytes. None when absent (kernel
/// threads, zombies).
pub(super) fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line.trim_start_matches("VmRSS:").split_ascii_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// `/proc/<pid>/stat` of one process, if it exists and parses.
pub(super) fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// When process `pid` started, in clock ticks after boot.
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    read_stat(i32::try_from(pid).ok()?).map(|stat| stat.start_ticks)
}

/// Every process id in `/proc`.
fn pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The resource use of each of `pgids` that has a live member, summed over its members.
pub(super) fn group_usage(pgids: &BTreeSet<i32>) -> BTreeMap<i32, Usage> {
    let mut usage: BTreeMap<i32, Usage> = BTreeMap::new();
    for pid in pids() {
        // A process may exit between the listing and the read: it is simply not counted.
        let Some(stat) = read_stat(pid) else { continue };
        if !pgids.contains(&stat.pgrp) || stat.is_dead() {
            continue;
        }
        let rss = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| parse_rss(&status))
            .unwrap_or(0);
        let group = usage.entry(stat.pgrp).or_default();
        group.rss_bytes = group.rss_bytes.saturating_add(rss);
        group.cpu_ticks = group.cpu_ticks.saturating_add(stat.utime.saturating_add(stat.stime));
    }
    usage
}

/// Those of `pgids` that still have a member that is not a zombie.
pub(super) fn live_groups(pgids: &BTreeSet<i32>) -> BTreeSet<i32> {
    let mut live = BTreeSet::new();
    for pid in pids() {
        if let Some(stat) = read_stat(pid)
            && pgids.contains(&stat.pgrp)
            && !stat.is_dead()
        {
            live.insert(stat.pgrp);
        }
    }
    live
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty when unreadable.
pub(super) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Clock ticks per second of `/proc` times: `sysconf(_SC_CLK_TCK)`, or 100 (Linux's `USER_HZ`
/// on every common architecture) when that fails.
pub(super) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(FALLBACK_CLOCK_TICKS)
}

/// CPU ticks in milliseconds.
pub(super) fn ticks_to_millis(ticks: u64, per_second: u64) -> u64 {
    let millis = u128::from(ticks) * 1000 / u128::from(per_second.max(1));
    u64::try_from(millis).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_tricky_name() {
        let text = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 4096 200 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                pgrp: 4242,
                utime: 7,
                stime: 3,
                start_ticks: 123_456,
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn rss() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t    1234 kB\nThreads:\t1\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn ticks() {
        assert_eq!(ticks_to_millis(250, 100), 2500);
        assert_eq!(ticks_to_millis(1, 0), 1000);
        assert_eq!(ticks_to_millis(u64::MAX, 1), u64::MAX);
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn this_process_is_seen() {
        let own = std::process::id();
        let stat = read_stat(i32::try_from(own).unwrap()).unwrap();
        assert!(!stat.is_dead());
        let group = BTreeSet::from([stat.pgrp]);
        let usage = group_usage(&group);
        assert!(usage.get(&stat.pgrp).is_some_and(|usage| usage.rss_bytes > 0));
        assert_eq!(live_groups(&group), group);
        assert!(start_ticks(own).is_some());
    }
}
