//! Host facts over a fake root directory and over the real one.

use std::fs;
use std::path::Path;

use endstate_agent::facts::collect;
use endstate_agent_proto::limits::{MAX_DISKS, MAX_WORD_BYTES};
use endstate_agent_proto::{FromAgent, encode};

fn write(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn collects_from_a_fake_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "proc/sys/kernel/hostname", "web-1\n");
    write(root, "proc/sys/kernel/osrelease", "6.12.0-1-amd64\n");
    write(
        root,
        "etc/os-release",
        "NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n",
    );
    write(
        root,
        "proc/cpuinfo",
        "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2\n",
    );
    write(root, "proc/meminfo", "MemTotal:        2048 kB\nMemFree: 1 kB\n");
    fs::create_dir_all(root.join("data")).unwrap();
    write(
        root,
        "proc/self/mounts",
        "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n/dev/sdc1 /missing ext4 rw 0 0\n/dev/sdd1 /etc/os-release ext4 rw 0 0\n",
    );

    let facts = collect(root);
    assert_eq!(facts.hostname, "web-1");
    assert_eq!(facts.kernel, "6.12.0-1-amd64");
    assert_eq!(facts.os, "Debian GNU/Linux 13 (trixie)");
    assert_eq!(facts.cpus, 3);
    assert_eq!(facts.memory_bytes, 2048 * 1024);
    assert_eq!(facts.arch, std::env::consts::ARCH);
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    // Pseudo file systems are skipped by type; a mount point that is not there, or is a file, is left out.
    let mounts: Vec<&str> = facts.disks.iter().map(|d| d.mount.as_str()).collect();
    assert_eq!(mounts, ["/", "/data"]);
    assert!(
        facts
            .disks
            .iter()
            .all(|d| d.total_bytes > 0 && d.free_bytes <= d.total_bytes)
    );
    encode(&FromAgent::Facts(facts)).unwrap();
}

#[test]
fn an_empty_or_hostile_root_still_gives_encodable_facts() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = collect(tmp.path());
    assert_eq!((facts.hostname.as_str(), facts.kernel.as_str()), ("unknown", "unknown"));
    assert!(facts.cpus >= 1, "falls back to available_parallelism");
    assert_eq!((facts.memory_bytes, facts.disks.len()), (0, 0));
    encode(&FromAgent::Facts(facts)).unwrap();

    let root = tmp.path();
    write(root, "proc/sys/kernel/hostname", &"h".repeat(10_000));
    let mounts: String = (0..200).map(|i| format!("/dev/d{i} /m{i} ext4 rw 0 0\n")).collect();
    write(root, "proc/self/mounts", &mounts);
    for i in 0..200 {
        fs::create_dir_all(root.join(format!("m{i}"))).unwrap();
    }
    let facts = collect(root);
    assert_eq!(facts.hostname.len(), MAX_WORD_BYTES);
    assert_eq!(facts.disks.len(), MAX_DISKS);
    encode(&FromAgent::Facts(facts)).unwrap();
}

#[test]
fn collects_from_this_host() {
    let facts = collect(Path::new("/"));
    assert!(!facts.hostname.is_empty());
    assert!(!facts.kernel.is_empty());
    assert!(facts.cpus >= 1);
    encode(&FromAgent::Facts(facts)).unwrap();
}
