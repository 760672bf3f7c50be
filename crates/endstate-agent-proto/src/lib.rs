//! The wire protocol between the endstate server and its agents, version 1: every message, its
//! bounds, and how it is framed. This page is the protocol's reference.
//!
//! The crate is pure: it turns bytes into messages and back, and states the rules both sides
//! apply ([`negotiate`], [`accept_generation`], [`classify_seq`]). The transport (a websocket on
//! mutual TLS, one message per text frame), the agent's disk buffer and the server's store are
//! elsewhere.
//!
//! # Frames
//!
//! One JSON object per websocket text frame, `v` (the protocol version) first, then `type`, then
//! the message's fields at the same level:
//!
//! ```json
//! {"v":1,"type":"ack","up_to_seq":41}
//! ```
//!
//! The enums are internally tagged (`#[serde(tag = "type")]`) rather than adjacently tagged
//! (`{"type": ..., "content": {...}}`): a frame reads flat in logs and in `websocat`, the fields of
//! a message are at one level with its type, and one object per frame needs no extra nesting. The
//! usual drawback of internal tagging, that serde buffers the object before it knows the type,
//! costs nothing here: a frame is parsed into a `serde_json::Value` first anyway, so that its size,
//! `v` and `type` are checked and reported precisely before the message is built.
//!
//! Tagged unions inside a message use the same style with the word `kind` (an observation's
//! `observed`, an artifact's `source`, a health `probe`).
//!
//! # Messages
//!
//! Every string length is in bytes; every list has a bound. Bounds are in [`limits`]; the frame
//! bound [`MAX_FRAME_BYTES`](limits::MAX_FRAME_BYTES) (4 MiB) comes first and caps everything.
//!
//! | `type` | direction | fields | bounds |
//! |---|---|---|---|
//! | `hello` | agent → server | `versions {min,max}`, `agent_version`, `host`, `labels`, `facts` | words 256; 64 labels; facts as below; any `v` accepted |
//! | `facts` | agent → server | `hostname`, `os`, `kernel`, `arch`, `cpus`, `memory_bytes`, `disks [{mount,total_bytes,free_bytes}]`, `agent_version` | words 256; 64 disks; mount 4096 |
//! | `keepalive` | agent → server | `seq` (per connection) | none beyond the frame |
//! | `observations` | agent → server | `observations [{seq, at_unix_ms, observed}]` | 1..=10,000 items; `seq` from 1, strictly increasing |
//! | ↳ `observed.kind = instance_state` | | `instance`, `generation`, `state`, `version`, `pid?`, `exit_code?`, `signal?`, `restarts`, `detail?` | id `system/component#slot`; detail 1024 |
//! | ↳ `observed.kind = health` | | `instance`, `healthy`, `detail?` | detail 1024 |
//! | ↳ `observed.kind = resources` | | `instance`, `rss_bytes`, `cpu_millis` | |
//! | ↳ `observed.kind = check` | | `name`, `status` (0..=3), `output`, `perfdata?` | output and perfdata 8 KiB each |
//! | ↳ `observed.kind = action` | | `run`, `action`, `outcome` (`succeeded`, `failed`, `timed_out`, `cancelled`, `refused`), `exit_code?`, `signal?`, `duration_ms`, `output?`, `detail?` | output 64 KiB (its tail), detail 1024 |
//! | `action_output` | agent → server | `run`, `stream` (`stdout`/`stderr`), `data` | 64 KiB; live only, not durable |
//! | `actual_state` | agent → server | `generation?`, `last_seq`, `instances [{instance, generation, version, state, pid?}]` | 1,000 instances, ids unique |
//! | `welcome` | server → agent | `version`, `server_version` | any `v` accepted |
//! | `refused` | server → agent | `reason`, `agent_versions`, `server_versions` | reason 1024; any `v` accepted |
//! | `ack` | server → agent | `up_to_seq` | |
//! | `desired_instances` | server → agent | `generation`, `instances [InstanceAssignment]`, `checks? [CheckAssignment]`, `actions? [ActionAssignment]` | 1,000 instances, ids unique; 1,000 checks; 256 actions |
//! | ↳ `ActionAssignment` | | `name` (`system/action`), `command` (argv; only `{{ params.X }}` left), `shell`, `parameters {name: {type, values?, min?, max?}}`, `timeout_ms` | 256 args, 64 parameters, timeout 1 day |
//! | `run_action` | server → agent | `run`, `action`, `generation`, `params {name: text}`, `signature` (hex, the server CA's signature of `RunAction::signed_bytes`) | 64 params, values 4096 |
//! | `cancel_action` | server → agent | `run` | |
//! | ↳ `InstanceAssignment` | | `id`, `artifact {version, source}`, `command`, `args`, `env`, `config_files [{path, content}]`, `ports {name: number}`, `health?`, `stop_grace_ms`, `upgrade?` (`stop_first` default, or `start_first`) | 256 args, 256 env, 32 files of 256 KiB, 64 ports, paths 4096, grace 1 h |
//! | `logs` | agent → server | `request`, `instance`, `found`, `stdout`, `stderr`, `stdout_total`, `stderr_total` | streams 1 MiB each |
//! | `renew` | agent → server | `csr_pem` | 16 KiB |
//! | `revoke` | server → agent | `reason` | 1024 |
//! | `ping` | server → agent | (none) | |
//! | `logs_request` | server → agent | `request`, `instance` | |
//! | `certificate` | server → agent | `cert_pem` | 16 KiB |
//!
//! An artifact `source` is `{"kind":"path","path":"/abs"}` (or a relative path without `..`,
//! which the agent resolves against its artifact root) or
//! `{"kind":"url","url":"https://…","sha256":"<64 lowercase hex>"}`. A health `probe` is
//! `http {port, path}`, `tcp {port}` (a name from `ports`) or `exec {command, args}`, with
//! `interval_ms`, `timeout_ms`, `healthy_after` and `unhealthy_after` (all at least 1).
//!
//! # Expected flow
//!
//! 1. The agent connects and sends `hello` with the versions it speaks.
//! 2. The server answers `welcome` with the highest common version ([`negotiate`]), or `refused`
//!    naming both ranges and closes. Both sides speak the agreed version from then on.
//! 3. The agent sends its buffered `observations` (oldest first), then `actual_state`: every
//!    instance it supervises, the last generation it accepted and its last `seq`.
//! 4. The server reconciles and sends `desired_instances`: the complete set for the host, with a
//!    generation. The agent applies it only when [`accept_generation`] says so.
//! 5. In steady state the agent streams `observations` and a `keepalive` per interval (and one
//!    on `ping`); the server answers batches with `ack`, and sends `desired_instances` whenever
//!    the host's set changes. `facts` is sent when facts change.
//! 6. At any time the server may ask for an instance's output (`logs_request`, answered by
//!    `logs` with the same `request`), and the agent may ask for a renewed certificate (`renew`
//!    with a CSR for its own key, answered by `certificate`), which it uses from its next connection.
//! 7. `revoke` ends it: the agent forgets its identity; the server closes the connection.
//!
//! # Guarantees
//!
//! - Every frame a decoder accepts has `v`, a known `type`, exactly the fields of that type
//!   (except the handshake, below), and every bound in the table respected. Everything else is a
//!   typed [`ProtoError`] naming the field and the limit (`observations: 20000 items, at most 10000`).
//! - A frame over 4 MiB is refused before a byte of it is parsed, and no input panics the decoder
//!   (nesting is limited to 128 by `serde_json`).
//! - [`encode`] applies the same checks, so a peer never receives what it would refuse; a sender
//!   learns of an oversized `desired_instances` before sending it.
//! - `ack { up_to_seq: n }` means every observation with `seq <= n` is committed on the server;
//!   the agent may then drop them. Observation `seq`s are per agent, survive agent restarts, and
//!   are never reused, so the server stores each once ([`classify_seq`]): a resend after a lost
//!   ack is a duplicate, not a second observation.
//! - `desired_instances` is a complete set, not a delta, and its generation only grows: a resend
//!   or a stale frame is ignored, never rolled back to.
//!
//! # Assumptions
//!
//! - The transport delivers frames whole and in order (a websocket over TCP), and authenticates
//!   both ends (mutual TLS): `hello.host` is checked against the certificate by the server, not
//!   here.
//! - The server assigns generations per host from its store, so they only grow across server
//!   restarts.
//! - The agent keeps its last `seq` and its last accepted generation in its data directory.
//!
//! # Caveats
//!
//! - Forward compatibility lives in the handshake only: `hello`, `facts` (it travels inside
//!   `hello`), `welcome` and `refused` ignore unknown fields and are read whatever their `v`, so
//!   peers of different versions can always tell each other why they cannot talk. Every other
//!   message refuses unknown fields: after the handshake both sides speak one exact version, and
//!   an unknown field there is a bug to surface, not to skip.
//! - [`encode`] writes [`PROTOCOL_VERSION`]; with a second version it will take the negotiated one.
//!   The decoders accept any version in [`SUPPORTED_VERSIONS`]; checking that a frame carries the
//!   negotiated version is the connection's job.
//! - Decoding builds a `serde_json::Value` first: a 4 MiB frame costs a few times that in memory
//!   for a moment. Bound the number of frames decoded at once at the connection layer.
//! - `at_unix_ms` is the agent's clock; the server should record its own receive time as well.
//! - Check results are a placeholder for the monitoring work; their shape may change in version 2.

mod codec;
mod error;
pub mod limits;
mod message;
mod rules;
mod validate;

pub use codec::{
    MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, SUPPORTED_VERSIONS, decode_from_agent, decode_from_server, encode,
};
pub use error::ProtoError;
pub use message::{
    Ack, ActionAssignment, ActionOutcome, ActionOutput, ActionParameter, ActionParameterType, ActionResult,
    ActualInstance, ActualState, Artifact, ArtifactSource, CancelAction, Certificate, CheckAssignment, CheckProbe,
    CheckResult, ConfigFile, DesiredInstances, Disk, Facts, FromAgent, FromServer, HealthProbe, HealthResult, Hello,
    InstanceAssignment, InstanceId, InstanceStateChange, InstanceStateWord, Keepalive, Logs, LogsRequest, Observation,
    Observations, Observed, OutputStream, Ping, Probe, Refused, Renew, ResourceUse, Revoke, RunAction, RunAs,
    UpgradeOrder, VersionRange, Welcome,
};
pub use rules::{
    GenerationDecision, IgnoreReason, NoCommonVersion, SeqDecision, accept_generation, classify_seq, negotiate,
};
