//! Bounded output of an instance: one ring buffer per stream that keeps the tail.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// The default capacity of each stream's buffer: the last 256 KiB are kept.
pub const DEFAULT_LOG_CAPACITY: usize = 256 * 1024;

/// A copy of an instance's recent output, across its restarts since it was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot {
    /// Standard output.
    pub stdout: StreamLog,
    /// Standard error.
    pub stderr: StreamLog,
}

/// The kept tail of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLog {
    /// The last bytes written, at most the capacity. It may begin inside a UTF-8 character or a line.
    pub tail: Vec<u8>,
    /// How many earlier bytes were dropped to stay within the capacity.
    pub dropped_bytes: u64,
}

impl StreamLog {
    /// The tail as text, with invalid UTF-8 replaced.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.tail).into_owned()
    }
}

/// The two buffers of one instance, shared by its pipe readers and the supervisor.
#[derive(Debug)]
pub(crate) struct InstanceLogs {
    pub(crate) stdout: Mutex<LogRing>,
    pub(crate) stderr: Mutex<LogRing>,
}

impl InstanceLogs {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            stdout: Mutex::new(LogRing::new(capacity)),
            stderr: Mutex::new(LogRing::new(capacity)),
        }
    }

    pub(crate) fn snapshot(&self) -> LogSnapshot {
        LogSnapshot {
            stdout: lock(&self.stdout).snapshot(),
            stderr: lock(&self.stderr).snapshot(),
        }
    }
}

/// Locks a buffer. A poisoned buffer is still a valid buffer (every `push` leaves it consistent
/// before it could panic), so poisoning is ignored.
pub(crate) fn lock(ring: &Mutex<LogRing>) -> std::sync::MutexGuard<'_, LogRing> {
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A byte ring buffer that keeps the last `capacity` bytes.
#[derive(Debug)]
pub(crate) struct LogRing {
    // Invariant: `buf.len() <= capacity`.
    buf: VecDeque<u8>,
    capacity: usize,
    dropped_bytes: u64,
}

impl LogRing {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity,
            dropped_bytes: 0,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= self.capacity {
            let n_dropped = self.buf.len() + (data.len() - self.capacity);
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.capacity..]);
            self.dropped_bytes += n_dropped as u64;
            return;
        }
        let n_overflow = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        self.buf.drain(..n_overflow);
        self.buf.extend(data);
        self.dropped_bytes += n_overflow as u64;
    }

    pub(crate) fn snapshot(&self) -> StreamLog {
        StreamLog {
            tail: self.buf.iter().copied().collect(),
            dropped_bytes: self.dropped_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(capacity: usize, writes: &[&str], tail: &str, dropped_bytes: u64) {
        let mut ring = LogRing::new(capacity);
        for write in writes {
            ring.push(write.as_bytes());
        }
        assert_eq!(
            ring.snapshot(),
            StreamLog {
                tail: tail.as_bytes().to_vec(),
                dropped_bytes
            }
        );
    }

    #[test]
    fn keeps_the_tail() {
        check(4, &[], "", 0);
        check(4, &["ab"], "ab", 0);
        check(4, &["ab", "cd"], "abcd", 0);
        check(4, &["ab", "cd", "e"], "bcde", 1);
        check(4, &["ab", "cdefgh"], "efgh", 4);
        check(4, &["abcd", "efgh", "ij"], "ghij", 6);
        check(0, &["ab"], "", 2);
    }
}
