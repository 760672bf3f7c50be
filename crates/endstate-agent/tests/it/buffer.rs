//! The observation buffer on a real temporary directory: round trip, restart, torn tail,
//! compaction and dropping under the byte bound.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use endstate_agent::{BufferError, BufferLimits, ObservationBuffer, SyncPolicy};
use endstate_agent_proto::limits::MAX_OBSERVATIONS;
use endstate_agent_proto::{
    CheckResult, HealthResult, InstanceId, InstanceStateChange, InstanceStateWord, Observed, ResourceUse,
};
use endstate_types::Generation;

const SEGMENT: u64 = 64 * 1024;

fn limits(max_bytes: u64, sync: SyncPolicy) -> BufferLimits {
    BufferLimits {
        max_bytes,
        segment_bytes: SEGMENT,
        sync,
    }
}

fn small() -> BufferLimits {
    limits(4 * SEGMENT, SyncPolicy::EveryAppend)
}

fn state(instance: &str, state: InstanceStateWord, restarts: u32) -> Observed {
    Observed::InstanceState(InstanceStateChange {
        instance: InstanceId(instance.to_owned()),
        generation: Generation(1),
        state,
        version: "1.0.0".to_owned(),
        pid: None,
        exit_code: None,
        signal: None,
        restarts,
        detail: String::new(),
    })
}

fn resources(instance: &str, rss_bytes: u64) -> Observed {
    Observed::Resources(ResourceUse {
        instance: InstanceId(instance.to_owned()),
        rss_bytes,
        cpu_millis: rss_bytes / 2,
    })
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    files
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

fn seqs(buffer: &mut ObservationBuffer, max: usize) -> Vec<u64> {
    buffer.pending(max).unwrap().iter().map(|o| o.seq).collect()
}

#[test]
fn append_pending_ack_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = ObservationBuffer::open(tmp.path().join("obs"), small()).unwrap();
    assert!(buffer.pending(10).unwrap().is_empty());
    for i in 1..=5 {
        let seq = buffer.append(resources("shop/web#0", i), 1_000 + i).unwrap();
        assert_eq!(seq, i);
    }
    let pending = buffer.pending(3).unwrap();
    assert_eq!(pending.iter().map(|o| o.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(pending[1].at_unix_ms, 1_002);
    assert_eq!(pending[1].observed, resources("shop/web#0", 2));
    // Pipelining: what comes after an in-flight batch.
    let after: Vec<u64> = buffer.pending_after(3, 10).unwrap().iter().map(|o| o.seq).collect();
    assert_eq!(after, [4, 5]);

    buffer.ack(3).unwrap();
    assert_eq!(seqs(&mut buffer, 10), [4, 5]);
    buffer.ack(2).unwrap(); // an old ack changes nothing
    assert_eq!(seqs(&mut buffer, 10), [4, 5]);
    assert!(matches!(
        buffer.ack(6),
        Err(BufferError::AckBeyondLast {
            up_to_seq: 6,
            last_seq: 5
        })
    ));
    let stats = buffer.stats();
    assert_eq!(
        (stats.last_seq, stats.acked_seq, stats.compacted, stats.dropped),
        (5, 3, 0, 0)
    );

    // The protocol's bounds are checked on append, and the seq is not used up.
    let bad = Observed::Check(CheckResult {
        name: "disk".to_owned(),
        target: String::new(),
        duration_ms: 0,
        status: 9,
        output: String::new(),
        perfdata: String::new(),
    });
    assert!(matches!(buffer.append(bad, 0), Err(BufferError::Invalid(_))));
    assert_eq!(buffer.append(resources("shop/web#0", 6), 0).unwrap(), 6);
    assert_eq!(seqs(&mut buffer, usize::MAX), [4, 5, 6]);
}

#[test]
fn reopen_keeps_unacked_data_and_the_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("obs");
    let grouped = limits(4 * SEGMENT, SyncPolicy::Group { appends: 1000 });
    {
        let mut buffer = ObservationBuffer::open(&dir, grouped).unwrap();
        for i in 1..=10 {
            buffer.append(resources("shop/web#0", i), i).unwrap();
        }
        buffer.ack(4).unwrap();
    }
    let mut buffer = ObservationBuffer::open(&dir, grouped).unwrap();
    assert_eq!(seqs(&mut buffer, 100), (5..=10).collect::<Vec<_>>());
    assert_eq!(buffer.append(resources("shop/web#0", 11), 11).unwrap(), 11);

    // Everything acknowledged: the segments go, the seq stays (in `state`).
    buffer.ack(11).unwrap();
    drop(buffer);
    let mut buffer = ObservationBuffer::open(&dir, grouped).unwrap();
    assert!(buffer.pending(100).unwrap().is_empty());
    assert_eq!(buffer.append(resources("shop/web#0", 12), 12).unwrap(), 12);
}

#[test]
fn a_torn_last_line_is_cut_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("obs");
    {
        let mut buffer = ObservationBuffer::open(&dir, small()).unwrap();
        for i in 1..=3 {
            buffer.append(resources("shop/web#0", i), i).unwrap();
        }
    }
    let files = segment_files(&dir);
    assert_eq!(files.len(), 1);
    let good_len = fs::metadata(&files[0]).unwrap().len();
    let mut file = fs::OpenOptions::new().append(true).open(&files[0]).unwrap();
    file.write_all(br#"{"seq":4,"at_unix_ms":4,"observed":{"kind":"reso"#)
        .unwrap();
    drop(file);

    let mut buffer = ObservationBuffer::open(&dir, small()).unwrap();
    assert_eq!(fs::metadata(&files[0]).unwrap().len(), good_len, "the torn line is cut");
    assert_eq!(seqs(&mut buffer, 100), [1, 2, 3]);
    assert_eq!(buffer.append(resources("shop/web#0", 4), 4).unwrap(), 4);
    assert_eq!(seqs(&mut buffer, 100), [1, 2, 3, 4]);
    drop(buffer);

    // A zero-filled tail (a crash after the size grew, before the data landed) is cut too.
    let mut file = fs::OpenOptions::new().append(true).open(&files[0]).unwrap();
    file.write_all(&[0; 100]).unwrap();
    drop(file);
    let mut buffer = ObservationBuffer::open(&dir, small()).unwrap();
    assert_eq!(seqs(&mut buffer, 100), [1, 2, 3, 4]);
    drop(buffer);

    // A bad line followed by a good one is not a torn tail: refused, not guessed at.
    let text = fs::read_to_string(&files[0]).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "garbage");
    fs::write(&files[0], lines.join("\n") + "\n").unwrap();
    let error = ObservationBuffer::open(&dir, small()).unwrap_err();
    assert!(matches!(error, BufferError::Corrupt { line: 2, .. }), "{error}");
}

#[test]
fn the_bound_compacts_the_oldest_and_keeps_each_latest_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("obs");
    let max_bytes = 4 * SEGMENT;
    let mut buffer = ObservationBuffer::open(&dir, limits(max_bytes, SyncPolicy::Group { appends: 256 })).unwrap();
    let instances = ["shop/web#0", "shop/web#1", "shop/db#0"];
    let cycle = [
        InstanceStateWord::Starting,
        InstanceStateWord::Running,
        InstanceStateWord::Exited,
        InstanceStateWord::BackingOff,
    ];
    // The last observation of each (instance, state) and each instance's resources, by seq.
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let mut appended = 0_u64;
    for round in 0..3000_u32 {
        for instance in instances {
            for word in cycle {
                let seq = buffer.append(state(instance, word, round), u64::from(round)).unwrap();
                latest.insert(format!("{instance} {word:?}"), seq);
                appended += 1;
            }
            let seq = buffer.append(resources(instance, u64::from(round)), 0).unwrap();
            latest.insert(format!("{instance} resources"), seq);
            appended += 1;
        }
        assert!(buffer.stats().bytes <= max_bytes);
    }
    let stats = buffer.stats();
    assert!(stats.compacted > 0, "{stats:?}");
    assert_eq!(stats.dropped, 0, "few keys: compaction alone makes room");
    assert_eq!(stats.stored + stats.compacted, appended, "{stats:?}");
    assert!(
        dir_bytes(&dir) <= max_bytes + 1024,
        "the files agree: {}",
        dir_bytes(&dir)
    );

    // Every latest observation survives, in order; the newest ones are all there.
    let mut delivered = Vec::new();
    loop {
        let batch = buffer.pending(1000).unwrap();
        let Some(last) = batch.last() else { break };
        let last = last.seq;
        delivered.extend(batch);
        buffer.ack(last).unwrap();
    }
    assert!(delivered.windows(2).all(|w| w[0].seq < w[1].seq));
    let delivered_seqs: std::collections::BTreeSet<u64> = delivered.iter().map(|o| o.seq).collect();
    for (key, seq) in &latest {
        assert!(delivered_seqs.contains(seq), "latest {key} (seq {seq}) was lost");
    }
    let final_state = delivered.iter().rev().find_map(|o| match &o.observed {
        Observed::InstanceState(change) if change.instance.0 == "shop/db#0" => Some(change.clone()),
        _ => None,
    });
    assert_eq!(
        final_state.map(|c| (c.state, c.restarts)),
        Some((InstanceStateWord::BackingOff, 2999))
    );

    // The counters survive a restart.
    drop(buffer);
    let buffer = ObservationBuffer::open(&dir, limits(max_bytes, SyncPolicy::EveryAppend)).unwrap();
    assert_eq!(buffer.stats().compacted, stats.compacted);
}

#[test]
fn too_many_distinct_keys_drop_the_oldest_and_count_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("obs");
    let max_bytes = 4 * SEGMENT;
    let mut buffer = ObservationBuffer::open(&dir, limits(max_bytes, SyncPolicy::Group { appends: 256 })).unwrap();
    let n = 10_000_u64;
    for i in 0..n {
        // Every observation has its own key: nothing supersedes anything.
        let observed = Observed::Health(HealthResult {
            instance: InstanceId(format!("shop/web#{i}")),
            healthy: true,
            detail: String::new(),
        });
        buffer.append(observed, i).unwrap();
        assert!(buffer.stats().bytes <= max_bytes);
    }
    let stats = buffer.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.compacted, 0);
    assert_eq!(stats.stored + stats.dropped, n, "{stats:?}");
    // What is left is the newest, contiguous up to the last.
    let pending = buffer.pending(MAX_OBSERVATIONS).unwrap();
    assert_eq!(pending.last().unwrap().seq, n);
    assert_eq!(pending.first().unwrap().seq, stats.dropped + 1);
}

#[test]
fn a_hundred_thousand_appends_stay_within_the_bound_and_acks_empty_the_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("obs");
    let max_bytes = 8 * SEGMENT;
    let mut buffer = ObservationBuffer::open(&dir, limits(max_bytes, SyncPolicy::Group { appends: 1024 })).unwrap();
    let mut largest = 0;
    for i in 1..=100_000_u64 {
        let observed = if i % 10 == 0 {
            state(&format!("shop/web#{}", i % 7), InstanceStateWord::Running, 0)
        } else {
            resources(&format!("shop/web#{}", i % 7), i)
        };
        buffer.append(observed, i).unwrap();
        if i % 5000 == 0 {
            largest = largest.max(dir_bytes(&dir));
        }
        // A slow consumer: acks lag far behind.
        if i % 20_000 == 0 {
            buffer.ack(i - 15_000).unwrap();
        }
    }
    let stats = buffer.stats();
    assert!(stats.bytes <= max_bytes, "{stats:?}");
    // The state file is the only other file, and tiny.
    assert!(largest <= max_bytes + 256, "{largest} bytes on disk");
    assert!(stats.compacted > 0);
    assert_eq!(stats.last_seq, 100_000);

    // One batch is never more than the protocol allows.
    let batch = buffer.pending(usize::MAX).unwrap();
    assert!(!batch.is_empty() && batch.len() <= MAX_OBSERVATIONS);

    buffer.ack(stats.last_seq).unwrap();
    assert!(buffer.pending(10).unwrap().is_empty());
    assert!(segment_files(&dir).is_empty());
    assert!(dir_bytes(&dir) < 100, "{} bytes left", dir_bytes(&dir));
    assert_eq!(buffer.append(resources("shop/web#0", 1), 0).unwrap(), 100_001);
}

#[test]
fn inconsistent_limits_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        limits(3 * SEGMENT, SyncPolicy::EveryAppend),
        BufferLimits {
            segment_bytes: 1024,
            ..small()
        },
        limits(4 * SEGMENT, SyncPolicy::Group { appends: 0 }),
    ] {
        assert!(matches!(
            ObservationBuffer::open(tmp.path(), bad),
            Err(BufferError::InvalidLimits(_))
        ));
    }
}
