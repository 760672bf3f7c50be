//! The agent's durable observation buffer: every observation is appended here first, numbered,
//! and dropped only once the server acknowledged it, so nothing is lost while the agent is
//! disconnected or restarted.
//!
//! # Layout (in the directory given to [`ObservationBuffer::open`])
//!
//! ```text
//! 00000000000000000001.jsonl   a segment: observations, one JSON object per line, seq increasing;
//! 00000000000000004711.jsonl   named by the first seq it was created with (20 digits, so names sort)
//! state                        "acked <seq>\ncompacted <n>\ndropped <n>\n", replaced atomically
//! *.tmp                        a segment or state being replaced; removed on open
//! ```
//!
//! A line is exactly the protocol's [`Observation`] (`{"seq":7,"at_unix_ms":...,"observed":{...}}`,
//! the same JSON that goes on the wire), followed by `\n`. Seqs strictly increase across lines and
//! segments; after compaction they have holes. The newest segment is the one appended to; the
//! others are sealed and only ever rewritten whole (compaction) or deleted (ack, drop).
//!
//! # Expected flow
//!
//! [`ObservationBuffer::open`] at start; [`ObservationBuffer::append`] for everything the agent
//! sees, connected or not; when connected, send [`ObservationBuffer::pending`] (or
//! [`ObservationBuffer::pending_after`] to pipeline batches) as one `observations` frame, and call
//! [`ObservationBuffer::ack`] with each `ack`. After a reconnect, start again from `pending`.
//!
//! # Guarantees
//!
//! - **Order and exactly once.** Seqs are assigned by [`append`](ObservationBuffer::append), from
//!   1, strictly increasing, never reused: they survive restarts (the highest is kept in the
//!   segments, or in `state` once everything is acknowledged). `pending` returns observations in
//!   seq order starting after the last acknowledged one, so after a reconnect the agent resends
//!   everything unacknowledged, in order. Some of it may already be stored on the server (the ack
//!   was lost); the server's `classify_seq` drops those as duplicates. Hence every observation
//!   still in the buffer is stored by the server once, in order: at least once from the agent,
//!   deduplicated by seq on the server.
//! - **Durable before sent.** `pending` fsyncs appended data first, so the server can only store
//!   (and acknowledge) observations that survive a power loss: a seq the server has seen is never
//!   reassigned to another observation after a crash.
//! - **Acks are durable.** `ack` replaces `state` (written, fsynced, renamed, directory fsynced)
//!   before deleting anything, and returns after that.
//! - **Bounded.** The segment files never exceed [`BufferLimits::max_bytes`] in total. When an
//!   append would pass it, the oldest data is made smaller, in this order:
//!   1. **Compaction** (counted in [`BufferStats::compacted`]): sealed segments, oldest first, are
//!      rewritten without the observations that a later observation *supersedes*, until the total
//!      is at most three quarters of the bound. A later observation supersedes an earlier one with
//!      the same key:
//!
//!      | observed | key: the latest one of each is kept |
//!      |---|---|
//!      | `instance_state` | instance and state word: per instance, its current state, and its latest `exited` (with the exit code or signal), `spawn_failed` (with the error), `backing_off`, `running` (with the pid), ... |
//!      | `health` | instance and `healthy`: per instance its latest result, and the latest of the other kind (the last failure's detail) |
//!      | `resources` | instance: the latest sample |
//!      | `check` | check name and status: per check its latest result, and the latest of each other status |
//!      | `action` | the run: a run's result is never summarised away |
//!
//!      What is summarised away: intermediate transitions and repeated results (how many restarts
//!      there were is still in the `restarts` field of the latest state). The latest observation
//!      of every key is never compacted, so the server always learns each instance's latest
//!      state, health and resource use, and each check's latest result.
//!   2. **Dropping** (counted in [`BufferStats::dropped`]), only when compaction cannot make room
//!      (there are more distinct keys than fit): the oldest sealed segments are deleted whole,
//!      until the total fits.
//!
//!   Either way the loss is not silent: it is counted in [`BufferStats`] (kept in `state`), and the
//!   server sees the missing seqs as gaps (`SeqDecision::Gap`).
//! - **Recovery.** `open` after a crash: leftover `*.tmp` files are removed; the newest segment is
//!   cut at its first line that does not parse when no valid line follows it (a torn or
//!   zero-filled tail: the write was never acknowledged by an fsync); fully acknowledged segments
//!   are deleted. Any other damage (a bad line followed by good ones, a bad line in a sealed
//!   segment, seqs out of order, an unreadable `state`) is [`BufferError::Corrupt`], naming the file
//!   and line: the agent must not guess.
//! - A failed append (disk full) truncates the segment back to where it was, so a later append
//!   does not follow half a line.
//! - Every observation accepted by `append` passes the protocol's bounds, and every `pending`
//!   result is one batch that `encode` accepts: at most
//!   [`MAX_OBSERVATIONS`] and under
//!   [`MAX_FRAME_BYTES`].
//!
//! # Assumptions
//!
//! - One process per directory (nothing locks it), and `std::fs::rename` is atomic on it.
//! - The directory survives agent restarts (the data directory). If it is lost, seqs restart at
//!   1 and the server drops them as duplicates: re-enrolling the host must reset its last seq.
//!
//! # Caveats
//!
//! - With [`SyncPolicy::Group`], up to `appends - 1` observations that were never sent can be lost
//!   on a power failure (not on a crash of the agent alone: they are in the page cache).
//! - `open` reads and parses every segment (up to `max_bytes`) to rebuild the seq range and the
//!   compaction index; tens of megabytes take a noticeable fraction of a second.
//! - The compaction index keeps one entry per key in memory (instances times states, checks times
//!   statuses): small for a host, not bounded by the buffer.
//! - The counters are written after the compacted segment is renamed: a crash in between
//!   under-counts that step (the gap is still visible on the server).
//! - The oldest segment can be partly acknowledged; its acknowledged lines stay on disk (and count
//!   towards the bound) until the whole segment is acknowledged or compacted.
//! - All IO is blocking; in async code, own the buffer in one task and call it through
//!   `spawn_blocking` or a dedicated thread.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use endstate_agent_proto::limits::{MAX_FRAME_BYTES, MAX_OBSERVATIONS};
use endstate_agent_proto::{FromAgent, InstanceStateWord, Observation, Observations, Observed, ProtoError};

/// The suffix of segment files.
const SEGMENT_SUFFIX: &str = ".jsonl";
/// The file holding the acknowledged seq and the counters.
const STATE_FILE: &str = "state";
/// The smallest segment allowed (a segment holds at least one observation of up to this size).
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// Room left in a frame for the envelope (`{"v":1,"type":"observations","observations":[...]}`).
const ENVELOPE_ALLOWANCE: usize = 256;

/// How large the buffer may grow, and how often it syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLimits {
    /// The most bytes all segment files may take together; at least 4 segments.
    pub max_bytes: u64,
    /// A segment is sealed (and a new one started) before it would pass this size. At least
    /// [`MIN_SEGMENT_BYTES`]; also the largest single observation line accepted.
    pub segment_bytes: u64,
    /// When appends are fsynced.
    pub sync: SyncPolicy,
}

/// When [`ObservationBuffer::append`] fsyncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After every append: nothing appended is lost on power failure; one fsync per observation.
    EveryAppend,
    /// After every `appends` appends, on [`ObservationBuffer::sync`], before
    /// [`ObservationBuffer::pending`] and when a segment is sealed.
    Group {
        /// Appends per fsync, at least 1.
        appends: u32,
    },
}

/// What the buffer holds and has lost, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// The seq of the last appended observation (0 before the first one).
    pub last_seq: u64,
    /// Every observation with a seq up to this one was acknowledged by the server.
    pub acked_seq: u64,
    /// Lines in the segment files (the oldest segment may still hold some acknowledged ones).
    pub stored: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Observations removed because a later one with the same key superseded them, ever.
    pub compacted: u64,
    /// Observations deleted unsent because compaction could not make enough room, ever.
    pub dropped: u64,
}

/// Why the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// An IO operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done (`cannot write`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory holds data that is not a torn tail and cannot be trusted.
    #[error("{}:{line}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (1-based; 0 for the whole file).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The limits are inconsistent.
    #[error("invalid buffer limits: {0}")]
    InvalidLimits(String),
    /// The observation breaks a protocol bound; the server would refuse it.
    #[error("observation refused")]
    Invalid(#[source] ProtoError),
    /// One observation is larger than a segment.
    #[error("observation of {len} bytes, at most {max} (the segment size)")]
    TooLarge {
        /// Its serialized length.
        len: u64,
        /// The segment size.
        max: u64,
    },
    /// The server acknowledged a seq the agent never produced.
    #[error("ack up to {up_to_seq}, but the last seq is {last_seq}")]
    AckBeyondLast {
        /// What was acknowledged.
        up_to_seq: u64,
        /// The last seq appended.
        last_seq: u64,
    },
}

/// The durable, bounded, ordered log of observations not yet acknowledged by the server.
///
/// See the module documentation for the file format, the compaction rule and recovery.
#[derive(Debug)]
pub struct ObservationBuffer {
    dir: PathBuf,
    limits: BufferLimits,
    /// Segments by the seq in their file name.
    segments: BTreeMap<u64, Segment>,
    /// The newest segment, open for appending (none until the first append after everything was
    /// acknowledged).
    active: Option<File>,
    /// The latest observation of each key: its seq and line length.
    latest: HashMap<Key, (u64, u64)>,
    next_seq: u64,
    acked_seq: u64,
    compacted: u64,
    dropped: u64,
    total_bytes: u64,
    unsynced: u32,
}

/// One segment file, as the index knows it.
#[derive(Clone, Copy, Debug)]
struct Segment {
    bytes: u64,
    lines: u64,
    last_seq: u64,
    /// Bytes of lines superseded by a later observation of the same key (what compaction frees).
    superseded_bytes: u64,
}

/// What makes two observations "the same thing" for compaction (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    State(String, InstanceStateWord),
    Health(String, bool),
    Resources(String),
    Check(String, u8),
    Action(String),
}

impl Default for BufferLimits {
    /// 64 MiB in 1 MiB segments, fsync every 64 appends.
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            sync: SyncPolicy::Group { appends: 64 },
        }
    }
}

impl ObservationBuffer {
    /// Opens (creating it if needed) the buffer in `dir` and recovers from a crash (see the module
    /// docs).
    ///
    /// # Errors
    /// [`BufferError::InvalidLimits`]; [`BufferError::Io`] when the directory cannot be read or
    /// written; [`BufferError::Corrupt`] for damage other than a torn tail.
    pub fn open(dir: impl Into<PathBuf>, limits: BufferLimits) -> Result<Self, BufferError> {
        let dir = dir.into();
        check_limits(limits)?;
        fs::create_dir_all(&dir).map_err(io_error("cannot create", &dir))?;
        let (acked_seq, compacted, dropped) = read_state(&dir)?;
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("cannot list", &dir))? {
            let entry = entry.map_err(io_error("cannot list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(io_error("cannot remove", &entry.path()))?;
            } else if let Some(seq) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|s| s.parse::<u64>().ok()) {
                names.push(seq);
            }
        }
        names.sort_unstable();
        let mut buffer = Self {
            dir,
            limits,
            segments: BTreeMap::new(),
            active: None,
            latest: HashMap::new(),
            next_seq: acked_seq.saturating_add(1),
            acked_seq,
            compacted,
            dropped,
            total_bytes: 0,
            unsynced: 0,
        };
        let newest = names.last().copied();
        let mut previous_seq = 0;
        for name in names {
            let path = buffer.segment_path(name);
            let is_newest = Some(name) == newest;
            let (segment, good_len) = buffer.scan_segment(&path, name, is_newest, &mut previous_seq)?;
            let file_len = fs::metadata(&path).map_err(io_error("cannot read", &path))?.len();
            if good_len < file_len {
                tracing::warn!(
                    segment = %path.display(),
                    cut_bytes = file_len - good_len,
                    "observation buffer: torn tail cut after a crash"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error("cannot open", &path))?;
                file.set_len(good_len).map_err(io_error("cannot truncate", &path))?;
                file.sync_all().map_err(io_error("cannot sync", &path))?;
            }
            buffer.total_bytes += segment.bytes;
            buffer.segments.insert(name, segment);
        }
        buffer.next_seq = buffer.next_seq.max(previous_seq.saturating_add(1));
        buffer.delete_acked_segments()?;
        if let Some((&name, _)) = buffer.segments.last_key_value() {
            let path = buffer.segment_path(name);
            buffer.active = Some(
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_error("cannot open", &path))?,
            );
        }
        Ok(buffer)
    }

    /// Appends one observation seen at `at_unix_ms` and returns its seq. Makes room first when the
    /// buffer is full (compaction, then dropping; see the module docs).
    ///
    /// # Errors
    /// [`BufferError::Invalid`] when it breaks a protocol bound; [`BufferError::TooLarge`];
    /// [`BufferError::Io`]. On error nothing was appended and the seq is not used.
    pub fn append(&mut self, observed: Observed, at_unix_ms: u64) -> Result<u64, BufferError> {
        let seq = self.next_seq;
        let key = key_of(&observed);
        let observation = Observation {
            seq,
            at_unix_ms,
            observed,
        };
        let mut line = serde_json::to_vec(&observation).map_err(|error| {
            BufferError::Invalid(ProtoError::Malformed {
                detail: error.to_string(),
            })
        })?;
        // The same checks as `encode`: the buffer never holds what the server would refuse.
        let batch = FromAgent::Observations(Observations {
            observations: vec![observation],
        });
        endstate_agent_proto::encode(&batch).map_err(BufferError::Invalid)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if len > self.limits.segment_bytes {
            return Err(BufferError::TooLarge {
                len,
                max: self.limits.segment_bytes,
            });
        }

        let active_bytes = self.segments.last_key_value().map_or(0, |(_, segment)| segment.bytes);
        if self.active.is_none() || active_bytes + len > self.limits.segment_bytes {
            self.start_segment(seq)?;
        }
        if self.total_bytes + len > self.limits.max_bytes {
            self.make_room(len)?;
        }

        let (&name, _) = self
            .segments
            .last_key_value()
            .ok_or_else(|| io_invariant(&self.dir, "no active segment"))?;
        let path = self.segment_path(name);
        let file = self
            .active
            .as_mut()
            .ok_or_else(|| io_invariant(&self.dir, "no active segment"))?;
        if let Err(error) = file.write_all(&line) {
            // Leave no half line behind for the next append to follow.
            let before = self.segments.get(&name).map_or(0, |segment| segment.bytes);
            if let Err(truncate_error) = file.set_len(before) {
                tracing::error!(segment = %path.display(), %truncate_error, "cannot cut a failed append");
            }
            return Err(BufferError::Io {
                what: "cannot append to",
                path,
                source: error,
            });
        }
        self.next_seq = seq + 1;
        self.total_bytes += len;
        if let Some(segment) = self.segments.get_mut(&name) {
            segment.bytes += len;
            segment.lines += 1;
            segment.last_seq = seq;
        }
        self.index(key, seq, len);

        self.unsynced += 1;
        let due = match self.limits.sync {
            SyncPolicy::EveryAppend => true,
            SyncPolicy::Group { appends } => self.unsynced >= appends,
        };
        if due {
            self.sync()?;
        }
        Ok(seq)
    }

    /// Fsyncs everything appended so far.
    ///
    /// # Errors
    /// [`BufferError::Io`].
    pub fn sync(&mut self) -> Result<(), BufferError> {
        if self.unsynced == 0 {
            return Ok(());
        }
        if let Some(file) = &self.active {
            let name = self.segments.last_key_value().map_or(0, |(&name, _)| name);
            file.sync_data()
                .map_err(io_error("cannot sync", &self.segment_path(name)))?;
        }
        self.unsynced = 0;
        Ok(())
    }

    /// The oldest unacknowledged observations, oldest first: at most `max`, and at most one
    /// `observations` frame's worth (see [`pending_after`](Self::pending_after)).
    ///
    /// # Errors
    /// [`BufferError::Io`]; [`BufferError::Corrupt`] when a segment changed under the buffer.
    pub fn pending(&mut self, max: usize) -> Result<Vec<Observation>, BufferError> {
        self.pending_after(self.acked_seq, max)
    }

    /// The observations after seq `after` (or after the last acknowledged one, if later), oldest
    /// first: at most `max` and [`MAX_OBSERVATIONS`], and together small enough for one frame.
    /// Syncs first, so everything returned is durable.
    ///
    /// # Errors
    /// [`BufferError::Io`]; [`BufferError::Corrupt`] when a segment changed under the buffer.
    pub fn pending_after(&mut self, after: u64, max: usize) -> Result<Vec<Observation>, BufferError> {
        self.sync()?;
        let after = after.max(self.acked_seq);
        let max = max.min(MAX_OBSERVATIONS);
        let budget = MAX_FRAME_BYTES - ENVELOPE_ALLOWANCE;
        let mut out = Vec::new();
        let mut bytes = 0;
        let first = self
            .segments
            .range(..=after.saturating_add(1))
            .next_back()
            .map_or(0, |(&name, _)| name);
        let names: Vec<u64> = self.segments.range(first..).map(|(&name, _)| name).collect();
        'segments: for name in names {
            let path = self.segment_path(name);
            let file = File::open(&path).map_err(io_error("cannot open", &path))?;
            for (line_idx, line) in BufReader::new(file).lines().enumerate() {
                if out.len() >= max {
                    break 'segments;
                }
                let line = line.map_err(io_error("cannot read", &path))?;
                let observation = parse_line(&line, &path, line_idx)?;
                if observation.seq <= after {
                    continue;
                }
                // A comma between items; the line's newline is not sent.
                if bytes + line.len() + 1 > budget {
                    break 'segments;
                }
                bytes += line.len() + 1;
                out.push(observation);
            }
        }
        Ok(out)
    }

    /// Records that the server stored every observation up to `up_to_seq`: durable on return;
    /// segments holding nothing newer are deleted. An older ack than the last one is ignored.
    ///
    /// # Errors
    /// [`BufferError::AckBeyondLast`] (nothing changes); [`BufferError::Io`].
    pub fn ack(&mut self, up_to_seq: u64) -> Result<(), BufferError> {
        let last_seq = self.next_seq - 1;
        if up_to_seq > last_seq {
            return Err(BufferError::AckBeyondLast { up_to_seq, last_seq });
        }
        if up_to_seq <= self.acked_seq {
            return Ok(());
        }
        self.acked_seq = up_to_seq;
        self.write_state()?;
        self.latest.retain(|_, &mut (seq, _)| seq > up_to_seq);
        self.delete_acked_segments()
    }

    /// What the buffer holds and has lost.
    #[must_use]
    pub fn stats(&self) -> BufferStats {
        BufferStats {
            last_seq: self.next_seq - 1,
            acked_seq: self.acked_seq,
            stored: self.segments.values().map(|segment| segment.lines).sum(),
            bytes: self.total_bytes,
            segments: self.segments.len(),
            compacted: self.compacted,
            dropped: self.dropped,
        }
    }

    /// The directory the buffer lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // --- internals ---

    fn segment_path(&self, name: u64) -> PathBuf {
        self.dir.join(format!("{name:020}{SEGMENT_SUFFIX}"))
    }

    /// Reads one segment at open: checks seq order, builds the index, and finds where the valid
    /// data ends (before a torn tail, which only the newest segment may have).
    fn scan_segment(
        &mut self,
        path: &Path,
        name: u64,
        is_newest: bool,
        previous_seq: &mut u64,
    ) -> Result<(Segment, u64), BufferError> {
        let bytes = fs::read(path).map_err(io_error("cannot read", path))?;
        let mut segment = Segment {
            bytes: 0,
            lines: 0,
            last_seq: 0,
            superseded_bytes: 0,
        };
        let mut torn_at: Option<(usize, u64)> = None;
        let mut offset = 0;
        for (line_idx, raw) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            let complete = raw.last() == Some(&b'\n');
            let parsed = complete
                .then(|| serde_json::from_slice::<Observation>(&raw[..raw.len() - 1]).ok())
                .flatten();
            match (parsed, torn_at) {
                (Some(_), Some((bad_line, _))) => {
                    return Err(corrupt(
                        path,
                        bad_line + 1,
                        "a line that does not parse, followed by valid lines",
                    ));
                }
                (Some(observation), None) => {
                    if observation.seq <= *previous_seq || observation.seq < name {
                        return Err(corrupt(
                            path,
                            line_idx + 1,
                            &format!("seq {} after {}: out of order", observation.seq, *previous_seq),
                        ));
                    }
                    *previous_seq = observation.seq;
                    let len = raw.len() as u64;
                    segment.bytes += len;
                    segment.lines += 1;
                    segment.last_seq = observation.seq;
                    if observation.seq > self.acked_seq {
                        // Segments are not in `self.segments` yet: account this one locally.
                        if let Some((old_seq, old_len)) = self
                            .latest
                            .insert(key_of(&observation.observed), (observation.seq, len))
                        {
                            self.mark_superseded(old_seq, old_len, Some((name, &mut segment)));
                        }
                    }
                }
                (None, None) => {
                    if !is_newest {
                        return Err(corrupt(
                            path,
                            line_idx + 1,
                            "a line that does not parse in a sealed segment",
                        ));
                    }
                    torn_at = Some((line_idx, offset));
                }
                (None, Some(_)) => {}
            }
            offset += raw.len() as u64;
        }
        let good_len = torn_at.map_or(offset, |(_, at)| at);
        Ok((segment, good_len))
    }

    /// Counts the line `seq` (of `len` bytes) as superseded in its segment, if it is stored and
    /// not acknowledged. `scanning` is a segment being read at open, not in the map yet.
    fn mark_superseded(&mut self, seq: u64, len: u64, scanning: Option<(u64, &mut Segment)>) {
        if seq <= self.acked_seq {
            return;
        }
        if let Some((name, segment)) = scanning
            && seq >= name
        {
            segment.superseded_bytes += len;
            return;
        }
        if let Some((_, segment)) = self.segments.range_mut(..=seq).next_back() {
            segment.superseded_bytes += len;
        }
    }

    /// Adds a new observation to the compaction index.
    fn index(&mut self, key: Key, seq: u64, len: u64) {
        if let Some((old_seq, old_len)) = self.latest.insert(key, (seq, len)) {
            self.mark_superseded(old_seq, old_len, None);
        }
    }

    /// Seals the active segment (synced) and starts a new one named `seq`.
    fn start_segment(&mut self, seq: u64) -> Result<(), BufferError> {
        if self.active.is_some() {
            self.unsynced = self.unsynced.max(1);
            self.sync()?;
        }
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error("cannot create", &path))?;
        sync_dir(&self.dir)?;
        self.active = Some(file);
        self.segments.insert(
            seq,
            Segment {
                bytes: 0,
                lines: 0,
                last_seq: 0,
                superseded_bytes: 0,
            },
        );
        Ok(())
    }

    /// Frees room for `needed` more bytes: compaction of sealed segments down to three quarters
    /// of the bound, then, if still over the bound, dropping the oldest sealed segments.
    fn make_room(&mut self, needed: u64) -> Result<(), BufferError> {
        let target = self.limits.max_bytes - self.limits.max_bytes / 4;
        let active = self.segments.last_key_value().map(|(&name, _)| name);
        let sealed: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&name, segment)| Some(name) != active && segment.superseded_bytes > 0)
            .map(|(&name, _)| name)
            .collect();
        for name in sealed {
            if self.total_bytes + needed <= target {
                break;
            }
            self.compact_segment(name)?;
        }
        while self.total_bytes + needed > self.limits.max_bytes {
            let Some((&oldest, _)) = self.segments.first_key_value() else {
                break;
            };
            if Some(oldest) == active {
                break;
            }
            self.drop_segment(oldest)?;
        }
        tracing::debug!(
            bytes = self.total_bytes,
            compacted = self.compacted,
            dropped = self.dropped,
            "observation buffer made room"
        );
        self.write_state()
    }

    /// Rewrites a sealed segment without its superseded and acknowledged lines.
    fn compact_segment(&mut self, name: u64) -> Result<(), BufferError> {
        let path = self.segment_path(name);
        let tmp = path.with_extension("jsonl.tmp");
        let reader = BufReader::new(File::open(&path).map_err(io_error("cannot open", &path))?);
        let mut out = io::BufWriter::new(File::create(&tmp).map_err(io_error("cannot create", &tmp))?);
        let mut kept = Segment {
            bytes: 0,
            lines: 0,
            last_seq: 0,
            superseded_bytes: 0,
        };
        let mut compacted = 0;
        for (line_idx, line) in reader.lines().enumerate() {
            let line = line.map_err(io_error("cannot read", &path))?;
            let observation = parse_line(&line, &path, line_idx)?;
            if observation.seq <= self.acked_seq {
                continue;
            }
            let is_latest = self
                .latest
                .get(&key_of(&observation.observed))
                .is_some_and(|&(seq, _)| seq == observation.seq);
            if !is_latest {
                compacted += 1;
                continue;
            }
            out.write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .map_err(io_error("cannot write", &tmp))?;
            kept.bytes += line.len() as u64 + 1;
            kept.lines += 1;
            kept.last_seq = observation.seq;
        }
        let file = out.into_inner().map_err(|error| BufferError::Io {
            what: "cannot write",
            path: tmp.clone(),
            source: error.into_error(),
        })?;
        file.sync_all().map_err(io_error("cannot sync", &tmp))?;
        drop(file);
        let old_bytes = self.segments.get(&name).map_or(0, |segment| segment.bytes);
        if kept.lines == 0 {
            fs::remove_file(&tmp).map_err(io_error("cannot remove", &tmp))?;
            fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            self.segments.remove(&name);
        } else {
            fs::rename(&tmp, &path).map_err(io_error("cannot rename", &tmp))?;
            self.segments.insert(name, kept);
        }
        sync_dir(&self.dir)?;
        self.total_bytes = self.total_bytes - old_bytes + kept.bytes;
        self.compacted += compacted;
        Ok(())
    }

    /// Deletes a sealed segment whole, counting its unacknowledged lines as dropped.
    fn drop_segment(&mut self, name: u64) -> Result<(), BufferError> {
        let path = self.segment_path(name);
        let Some(segment) = self.segments.get(&name).copied() else {
            return Ok(());
        };
        let unacked = if name > self.acked_seq {
            segment.lines
        } else {
            // Partly acknowledged: count what is not.
            let file = File::open(&path).map_err(io_error("cannot open", &path))?;
            let mut count = 0;
            for (line_idx, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io_error("cannot read", &path))?;
                if parse_line(&line, &path, line_idx)?.seq > self.acked_seq {
                    count += 1;
                }
            }
            count
        };
        fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
        self.segments.remove(&name);
        self.total_bytes -= segment.bytes;
        self.dropped += unacked;
        tracing::warn!(
            segment = %path.display(),
            observations = unacked,
            "observation buffer full: oldest segment dropped unsent"
        );
        // Keys whose latest line went with it no longer point at stored data.
        self.latest.retain(|_, &mut (seq, _)| seq > segment.last_seq);
        Ok(())
    }

    /// Deletes every segment whose lines are all acknowledged.
    fn delete_acked_segments(&mut self) -> Result<(), BufferError> {
        let acked: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, segment)| segment.last_seq <= self.acked_seq)
            .map(|(&name, _)| name)
            .collect();
        let newest = self.segments.last_key_value().map(|(&name, _)| name);
        for name in acked {
            let path = self.segment_path(name);
            if Some(name) == newest {
                self.active = None;
                self.unsynced = 0;
            }
            fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            if let Some(segment) = self.segments.remove(&name) {
                self.total_bytes -= segment.bytes;
            }
        }
        Ok(())
    }

    /// Replaces the `state` file atomically and durably.
    fn write_state(&self) -> Result<(), BufferError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = format!(
            "acked {}\ncompacted {}\ndropped {}\n",
            self.acked_seq, self.compacted, self.dropped
        );
        let mut file = File::create(&tmp).map_err(io_error("cannot create", &tmp))?;
        file.write_all(text.as_bytes())
            .map_err(io_error("cannot write", &tmp))?;
        file.sync_all().map_err(io_error("cannot sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("cannot rename", &tmp))?;
        sync_dir(&self.dir)
    }
}

/// The compaction key of an observation (see the module docs).
fn key_of(observed: &Observed) -> Key {
    match observed {
        Observed::InstanceState(change) => Key::State(change.instance.0.clone(), change.state),
        Observed::Health(health) => Key::Health(health.instance.0.clone(), health.healthy),
        Observed::Resources(resources) => Key::Resources(resources.instance.0.clone()),
        Observed::Check(check) => Key::Check(check.name.clone(), check.status),
        // One result per run: never superseded.
        Observed::Action(result) => Key::Action(result.run.clone()),
    }
}

fn check_limits(limits: BufferLimits) -> Result<(), BufferError> {
    if limits.segment_bytes < MIN_SEGMENT_BYTES {
        return Err(BufferError::InvalidLimits(format!(
            "segment_bytes {} is under {MIN_SEGMENT_BYTES}",
            limits.segment_bytes
        )));
    }
    if limits.max_bytes / 4 < limits.segment_bytes {
        return Err(BufferError::InvalidLimits(format!(
            "max_bytes {} is under 4 segments of {}",
            limits.max_bytes, limits.segment_bytes
        )));
    }
    if limits.sync == (SyncPolicy::Group { appends: 0 }) {
        return Err(BufferError::InvalidLimits("sync group of 0 appends".into()));
    }
    Ok(())
}

/// Reads `state`: (acked seq, compacted, dropped); zeros when there is none yet.
fn read_state(dir: &Path) -> Result<(u64, u64, u64), BufferError> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((0, 0, 0)),
        Err(error) => {
            return Err(BufferError::Io {
                what: "cannot read",
                path,
                source: error,
            });
        }
    };
    let mut values = [None; 3];
    for (line_idx, line) in text.lines().enumerate() {
        let parsed = line.split_once(' ').and_then(|(key, value)| {
            let slot = ["acked", "compacted", "dropped"].iter().position(|&k| k == key)?;
            Some((slot, value.parse::<u64>().ok()?))
        });
        let Some((slot, value)) = parsed else {
            return Err(corrupt(&path, line_idx + 1, &format!("unreadable line {line:?}")));
        };
        values[slot] = Some(value);
    }
    match values {
        [Some(acked), Some(compacted), Some(dropped)] => Ok((acked, compacted, dropped)),
        _ => Err(corrupt(&path, 0, "acked, compacted or dropped is missing")),
    }
}

fn parse_line(line: &str, path: &Path, line_idx: usize) -> Result<Observation, BufferError> {
    serde_json::from_str(line).map_err(|error| corrupt(path, line_idx + 1, &error.to_string()))
}

fn sync_dir(dir: &Path) -> Result<(), BufferError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error("cannot sync", dir))
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BufferError {
    let path = path.to_owned();
    move |source| BufferError::Io { what, path, source }
}

fn io_invariant(dir: &Path, detail: &str) -> BufferError {
    BufferError::Io {
        what: "internal error in",
        path: dir.to_owned(),
        source: io::Error::other(detail.to_owned()),
    }
}

fn corrupt(path: &Path, line: usize, detail: &str) -> BufferError {
    BufferError::Corrupt {
        path: path.to_owned(),
        line,
        detail: detail.to_owned(),
    }
}
