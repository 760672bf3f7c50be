//! The host's facts, as the protocol's [`Facts`] message carries them, read from Linux `/proc` and
//! `/etc`.
//!
//! # Sources (relative to the root given to [`collect`], `/` in production)
//!
//! | fact | source | when missing |
//! |---|---|---|
//! | `hostname` | `proc/sys/kernel/hostname` | `unknown` |
//! | `os` | `PRETTY_NAME` of `etc/os-release`, else of `usr/lib/os-release`; `NAME` if there is no `PRETTY_NAME` | `Linux` |
//! | `kernel` | `proc/sys/kernel/osrelease` | `unknown` |
//! | `arch` | [`std::env::consts::ARCH`] (what the agent was built for) | |
//! | `cpus` | `processor` lines of `proc/cpuinfo` | [`std::thread::available_parallelism`], else 1 |
//! | `memory_bytes` | `MemTotal` of `proc/meminfo` | 0 |
//! | `disks` | `proc/self/mounts`, sizes by `statvfs` | none |
//! | `agent_version` | this crate's version | |
//!
//! # Guarantees
//!
//! - [`collect`] never fails and never panics: a missing or unreadable source gives the fallback
//!   above, logged at `debug`.
//! - The result always passes the protocol's bounds, so `encode` never refuses it: words are
//!   non-empty and truncated (on a character boundary) to
//!   [`MAX_WORD_BYTES`]; at most
//!   [`MAX_DISKS`] disks, in mount-table order; a mount
//!   point longer than [`MAX_PATH_BYTES`] is left
//!   out rather than truncated (a cut path names another place).
//! - Disks are real file systems only: pseudo file systems ([`PSEUDO_FS_TYPES`]: `proc`, `sysfs`,
//!   `tmpfs`, `overlay`, cgroups, ...) are skipped by type, and so are network file systems
//!   ([`NETWORK_FS_TYPES`]), because `statvfs` on an unreachable server blocks. Each source device
//!   is reported once, at its first mount point: bind mounts and btrfs subvolumes would repeat the
//!   same sizes. A mount point that is not a directory (a bind-mounted file, as in containers), or
//!   whose `statvfs` fails or reports 0 bytes, is skipped.
//! - The parse functions are pure and take the file's contents.
//!
//! # Caveats
//!
//! - [`collect`] does blocking IO (a few small files and one `statvfs` per mount); call it from
//!   `spawn_blocking` in async code.
//! - `cpus` counts the host's logical CPUs, not what a cgroup or affinity mask leaves the agent.
//! - `arch` is the agent's build target: a 32-bit agent on a 64-bit kernel reports its own.
//! - Linux only; another Unix gets the fallbacks.

use std::path::Path;

use endstate_agent_proto::limits::{MAX_DISKS, MAX_PATH_BYTES, MAX_WORD_BYTES};
use endstate_agent_proto::{Disk, Facts};

/// File system types that are not storage: skipped.
pub const PSEUDO_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.lxcfs",
    "fuse.portal",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Network file systems: skipped, since `statvfs` blocks while their server is unreachable.
pub const NETWORK_FS_TYPES: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "fuse.sshfs",
    "glusterfs",
    "ncpfs",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
];

/// What stands for a word that could not be read (the protocol refuses empty words).
const UNKNOWN: &str = "unknown";

/// One line of a mount table (`/proc/self/mounts`), with octal escapes decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The source (`/dev/sda1`, `proc`).
    pub source: String,
    /// Where it is mounted.
    pub mount: String,
    /// The file system type (`ext4`, `tmpfs`).
    pub fs_type: String,
}

/// Collects the host's facts under `root` (`/` in production; a directory of fake files in tests).
#[must_use]
pub fn collect(root: &Path) -> Facts {
    let read = |relative: &str| match std::fs::read_to_string(root.join(relative)) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::debug!(file = relative, %error, "host fact unavailable");
            None
        }
    };
    let hostname = read("proc/sys/kernel/hostname").and_then(|text| parse_word(&text));
    let os = read("etc/os-release")
        .or_else(|| read("usr/lib/os-release"))
        .and_then(|text| parse_os_release(&text));
    let kernel = read("proc/sys/kernel/osrelease").and_then(|text| parse_word(&text));
    let cpus = read("proc/cpuinfo")
        .map(|text| parse_cpuinfo(&text))
        .filter(|&count| count > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1);
    let memory_bytes = read("proc/meminfo").and_then(|text| parse_meminfo(&text)).unwrap_or(0);
    let mounts = read("proc/self/mounts")
        .map(|text| parse_mounts(&text))
        .unwrap_or_default();
    let mut disks = Vec::new();
    for entry in real_filesystems(&mounts) {
        if disks.len() == MAX_DISKS {
            break;
        }
        let path = root.join(entry.mount.trim_start_matches('/'));
        // Containers bind-mount single files (`/etc/hostname`, `/etc/resolv.conf`) from a disk.
        if !path.is_dir() {
            continue;
        }
        match nix::sys::statvfs::statvfs(&path) {
            // The field types are `c_ulong`/`fsblkcnt_t`: `u64` here, narrower on 32-bit targets.
            #[allow(clippy::useless_conversion)]
            Ok(stat) => {
                let fragment = u64::from(stat.fragment_size());
                let total_bytes = u64::from(stat.blocks()).saturating_mul(fragment);
                let free_bytes = u64::from(stat.blocks_available()).saturating_mul(fragment);
                if total_bytes > 0 {
                    disks.push(Disk {
                        mount: entry.mount.clone(),
                        total_bytes,
                        free_bytes,
                    });
                }
            }
            Err(error) => tracing::debug!(mount = %entry.mount, %error, "statvfs failed; disk left out"),
        }
    }
    Facts {
        hostname: hostname.unwrap_or_else(|| UNKNOWN.to_owned()),
        os: os.unwrap_or_else(|| "Linux".to_owned()),
        kernel: kernel.unwrap_or_else(|| UNKNOWN.to_owned()),
        arch: bounded(std::env::consts::ARCH, MAX_WORD_BYTES),
        cpus,
        memory_bytes,
        disks,
        agent_version: bounded(env!("CARGO_PKG_VERSION"), MAX_WORD_BYTES),
    }
}

/// A one-line file (`hostname`, `osrelease`): trimmed and bounded; `None` when empty.
#[must_use]
pub fn parse_word(text: &str) -> Option<String> {
    let word = text.trim();
    (!word.is_empty()).then(|| bounded(word, MAX_WORD_BYTES))
}

/// `PRETTY_NAME` of an `os-release` file (or `NAME` without one), unquoted and bounded.
#[must_use]
pub fn parse_os_release(text: &str) -> Option<String> {
    let value_of = |key: &str| {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(unquote)
            .filter(|value| !value.trim().is_empty())
    };
    value_of("PRETTY_NAME")
        .or_else(|| value_of("NAME"))
        .map(|value| bounded(value.trim(), MAX_WORD_BYTES))
}

/// The number of logical CPUs in `/proc/cpuinfo` (its `processor` lines).
#[must_use]
pub fn parse_cpuinfo(text: &str) -> u32 {
    let count = text
        .lines()
        .filter(|line| line.split(':').next().is_some_and(|key| key.trim() == "processor"))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
#[must_use]
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut words = rest.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        None => 1,
        Some(unit) if unit.eq_ignore_ascii_case("kb") => 1024,
        Some(_) => return None,
    };
    number.checked_mul(unit)
}

/// The entries of a mount table (`/proc/self/mounts`, `fstab` syntax); malformed lines are skipped.
#[must_use]
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let mount = fields.next()?;
            let fs_type = fields.next()?;
            Some(MountEntry {
                source: unescape_mount(source),
                mount: unescape_mount(mount),
                fs_type: fs_type.to_owned(),
            })
        })
        .collect()
}

/// The entries that are real, local file systems, each source once (see the module docs).
#[must_use]
pub fn real_filesystems(mounts: &[MountEntry]) -> Vec<&MountEntry> {
    let mut seen_sources = std::collections::HashSet::new();
    mounts
        .iter()
        .filter(|entry| {
            let fs_type = entry.fs_type.as_str();
            !PSEUDO_FS_TYPES.contains(&fs_type)
                && !NETWORK_FS_TYPES.contains(&fs_type)
                && entry.mount.starts_with('/')
                && entry.mount.len() <= MAX_PATH_BYTES
        })
        .filter(|entry| seen_sources.insert(entry.source.as_str()))
        .collect()
}

/// `value` cut to at most `max` bytes, on a character boundary.
fn bounded(value: &str, max: usize) -> String {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

/// An `os-release` value: double or single quotes removed, `\"`, `\\`, `` \` `` and `\$` unescaped.
fn unquote(raw: &str) -> String {
    let raw = raw.trim();
    let inner = ['"', '\'']
        .iter()
        .find_map(|&quote| raw.strip_prefix(quote).and_then(|rest| rest.strip_suffix(quote)))
        .unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ ('"' | '\\' | '`' | '$')) => out.push(next),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A mount table field: the kernel writes space, tab, newline and backslash as `\040`, `\011`,
/// `\012` and `\134`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let octal = bytes.get(idx + 1..idx + 4).filter(|digits| {
            bytes[idx] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)) && digits[0] <= b'3'
        });
        if let Some(digits) = octal {
            out.push(digits.iter().fold(0u8, |acc, d| acc * 8 + (d - b'0')));
            idx += 4;
        } else {
            out.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check<T: PartialEq + std::fmt::Debug>(parse: fn(&str) -> T, cases: &[(&str, T)]) {
        for (input, expect) in cases {
            assert_eq!(&parse(input), expect, "input {input:?}");
        }
    }

    #[test]
    fn words() {
        let long = "h".repeat(300);
        let long_multibyte = "é".repeat(200);
        check(
            parse_word,
            &[
                ("web-1\n", Some("web-1".to_owned())),
                ("  6.12.0-1-amd64 \n", Some("6.12.0-1-amd64".to_owned())),
                ("", None),
                ("\n \n", None),
                (&long, Some("h".repeat(256))),
                // 256 bytes would cut the 129th "é" in half.
                (&long_multibyte, Some("é".repeat(128))),
            ],
        );
    }

    #[test]
    fn os_release() {
        let some = |s: &str| Some(s.to_owned());
        check(
            parse_os_release,
            &[
                (
                    "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\n",
                    some("Debian GNU/Linux 13 (trixie)"),
                ),
                ("PRETTY_NAME='Alpine Linux v3.20'\n", some("Alpine Linux v3.20")),
                ("PRETTY_NAME=Arch\n", some("Arch")),
                (
                    r#"PRETTY_NAME="Say \"hi\" \$HOME \\ ok""#,
                    some(r#"Say "hi" $HOME \ ok"#),
                ),
                ("NAME=\"Fedora Linux\"\nVERSION=\"41\"\n", some("Fedora Linux")),
                ("PRETTY_NAME=\"\"\nNAME=Gentoo\n", some("Gentoo")),
                ("# PRETTY_NAME=\"commented\"\nID=x\n", None),
                ("", None),
                ("PRETTY_NAMEX=\"not it\"\n", None),
            ],
        );
    }

    #[test]
    fn cpuinfo() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Some CPU\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";
        let arm =
            "processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\n\nprocessor\t: 2\n\nprocessor\t: 3\nHardware\t: x\n";
        check(
            parse_cpuinfo,
            &[(x86, 2), (arm, 4), ("", 0), ("model name : processor 9000\n", 0)],
        );
    }

    #[test]
    fn meminfo() {
        check(
            parse_meminfo,
            &[
                (
                    "MemTotal:       16314628 kB\nMemFree:         1234 kB\n",
                    Some(16_314_628 * 1024),
                ),
                ("MemFree: 1 kB\nMemTotal: 2048 kB\n", Some(2 * 1024 * 1024)),
                ("MemTotal: 512\n", Some(512)),
                ("MemTotal: lots kB\n", None),
                ("MemTotal: 1 MB\n", None),
                ("MemTotal: 18446744073709551615 kB\n", None),
                ("", None),
            ],
        );
    }

    #[test]
    fn mounts_and_real_filesystems() {
        let table = "\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
sysfs /sys sysfs rw 0 0
tmpfs /run tmpfs rw 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/sda2 /home/with\\040space ext4 rw 0 0
/dev/sda1 /etc/hostname ext4 rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
/dev/loop3 /snap/core/1 squashfs ro 0 0
/dev/nvme0n1p1 /boot/efi vfat rw 0 0
garbage
";
        let entries = parse_mounts(table);
        assert_eq!(entries.len(), 10, "the malformed line is skipped");
        assert_eq!(
            entries[5],
            MountEntry {
                source: "/dev/sda2".to_owned(),
                mount: "/home/with space".to_owned(),
                fs_type: "ext4".to_owned(),
            }
        );
        let real: Vec<&str> = real_filesystems(&entries).iter().map(|e| e.mount.as_str()).collect();
        assert_eq!(real, ["/", "/home/with space", "/boot/efi"]);
    }

    #[test]
    fn mount_escapes() {
        check(
            unescape_mount,
            &[
                ("/plain", "/plain".to_owned()),
                ("/a\\040b\\011c\\012d\\134e", "/a b\tc\nd\\e".to_owned()),
                ("/not\\08octal", "/not\\08octal".to_owned()),
                ("/trailing\\", "/trailing\\".to_owned()),
                ("/short\\04", "/short\\04".to_owned()),
            ],
        );
    }
}
