//! The bounds of the protocol: every frame, list and string has one, checked on encode and decode.
//!
//! Lengths of strings are in bytes of UTF-8. The frame bound is checked before anything is
//! parsed; the others after parsing, so the error can name the field.

/// The largest frame, in bytes, in either direction. Checked before parsing.
///
/// A host's complete [`DesiredInstances`](crate::DesiredInstances), configuration files included,
/// must fit: 4 MiB is about 1,000 instances with 4 KiB of configuration each.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Instances in one `desired_instances` or `actual_state`.
pub const MAX_INSTANCES: usize = 1_000;

/// Checks in one `desired_instances`.
pub const MAX_CHECKS: usize = 1_000;

/// Observations in one `observations` batch.
pub const MAX_OBSERVATIONS: usize = 10_000;

/// Short words: versions, names, host names, os, kernel, arch, label keys and values, port
/// names, instance ids.
pub const MAX_WORD_BYTES: usize = 256;

/// Free text meant for people: health detail, state detail, refusal and revocation reasons.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// A check's output and, separately, its performance data (Nagios keeps 8 KiB of output).
pub const MAX_CHECK_OUTPUT_BYTES: usize = 8 * 1024;

/// Paths, commands, URLs, single arguments and single environment values.
pub const MAX_PATH_BYTES: usize = 4096;

/// Labels of a host.
pub const MAX_LABELS: usize = 64;

/// Disks in [`Facts`](crate::Facts).
pub const MAX_DISKS: usize = 64;

/// Arguments of a command.
pub const MAX_ARGS: usize = 256;

/// Environment variables of an instance.
pub const MAX_ENV: usize = 256;

/// Configuration files of an instance.
pub const MAX_CONFIG_FILES: usize = 32;

/// The content of one configuration file.
pub const MAX_CONFIG_FILE_BYTES: usize = 256 * 1024;

/// Named ports of an instance.
pub const MAX_PORTS: usize = 64;

/// The tail of one output stream in a `logs` answer (1 MiB).
pub const MAX_LOG_BYTES: usize = 1024 * 1024;

/// A PEM certificate or certificate signing request.
pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// The highest check status (3, unknown).
pub const MAX_CHECK_STATUS: u8 = 3;

/// The longest stop grace period, in milliseconds (one hour).
pub const MAX_STOP_GRACE_MS: u64 = 3_600_000;

/// Actions in one host's catalogue.
pub const MAX_ACTIONS: usize = 256;

/// Parameters of one action.
pub const MAX_ACTION_PARAMS: usize = 64;

/// The tail of a run's output kept in its result, and one `action_output` piece (64 KiB).
pub const MAX_ACTION_OUTPUT_BYTES: usize = 64 * 1024;

/// The longest run of an action, in milliseconds (one day).
pub const MAX_ACTION_TIMEOUT_MS: u64 = 86_400_000;
