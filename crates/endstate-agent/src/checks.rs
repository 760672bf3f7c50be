//! Monitoring checks: each [`CheckAssignment`] of the current desired set runs on its own
//! schedule (a random delay of up to `splay_ms`, then every `interval_ms`) and its result goes
//! to the server as a `check` observation, buffered like every other observation.
//!
//! - **Exec checks** follow the Nagios plugin convention (`endstate_monitor::nagios`): the
//!   program runs without a shell, in its own process group, with a minimal environment
//!   (`PATH=/usr/sbin:/usr/bin:/sbin:/bin`, `LC_ALL=C`); at the timeout the whole group is
//!   killed and the result is UNKNOWN with the reason. Stdout is read while the plugin runs and
//!   kept up to [`KEPT_OUTPUT_BYTES`] (the rest is drained and the result says it was cut).
//! - **HTTP checks**: the status must be the expected one and the body contain `body_match`
//!   (CRITICAL otherwise); slower than `latency_threshold_ms` is a WARNING.
//! - **TCP checks**: a connection within the timeout is OK, anything else CRITICAL.
//!
//! A new set replaces the running checks: those gone or changed stop (an exec check in flight is
//! killed with its group when its task is aborted: `kill_on_drop`), new and changed ones start.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use endstate_agent_proto::{CheckAssignment, CheckProbe, CheckResult, Observed, limits::MAX_CHECK_OUTPUT_BYTES};
use endstate_monitor::nagios::{self, Exit, Status};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::task::JoinHandle;

/// How much of a plugin's stdout is read and parsed (the wire keeps less).
pub(crate) const KEPT_OUTPUT_BYTES: usize = 64 * 1024;

/// Where results go.
pub(crate) type Sink = Arc<dyn Fn(Observed) + Send + Sync>;

/// The running checks, by id.
pub(crate) struct Checks {
    sink: Sink,
    /// Shared by every HTTP check (its roots are read once); it keeps no idle connection, so a
    /// listener that stopped accepting is never hidden behind a pooled one.
    http: reqwest::Client,
    running: Mutex<BTreeMap<String, (CheckAssignment, JoinHandle<()>)>>,
}

impl Checks {
    pub(crate) fn new(sink: Sink, http: reqwest::Client) -> Checks {
        Checks {
            sink,
            http,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs exactly `checks` from now on: stops those gone or changed, starts new or changed ones.
    pub(crate) fn set(&self, checks: &[CheckAssignment]) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: BTreeMap<&str, &CheckAssignment> = checks.iter().map(|c| (c.id.as_str(), c)).collect();
        running.retain(|id, (check, task)| {
            let keep = wanted.get(id.as_str()).is_some_and(|w| *w == check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, check) in wanted {
            if running.contains_key(id) {
                continue;
            }
            let task = tokio::spawn(schedule(check.clone(), Arc::clone(&self.sink), self.http.clone()));
            running.insert(id.to_owned(), (check.clone(), task));
        }
        tracing::debug!(n_checks = running.len(), "Checks set.");
    }

    /// Stops every check.
    pub(crate) fn stop(&self) {
        self.set(&[]);
    }
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = self.running.lock().map(|r| r.len()).unwrap_or_default();
        f.debug_struct("Checks")
            .field("running", &running)
            .finish_non_exhaustive()
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The client HTTP checks use: no redirect followed, no idle connection kept.
pub(crate) fn http_client(
    trusted: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<reqwest::Client, reqwest::Error> {
    crate::https::client(trusted)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
}

async fn schedule(check: CheckAssignment, sink: Sink, http: reqwest::Client) {
    tokio::time::sleep(splay(&check)).await;
    let interval = Duration::from_millis(check.interval_ms.max(1));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = run(&check, &http).await;
        sink(Observed::Check(result));
    }
}

/// A delay in `[0, splay_ms)` from the check's id and the clock (no RNG needed for spreading).
fn splay(check: &CheckAssignment) -> Duration {
    if check.splay_ms == 0 {
        return Duration::ZERO;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let id_hash = check
        .id
        .bytes()
        .fold(0_u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    Duration::from_millis((nanos ^ id_hash) % check.splay_ms)
}

/// Runs a check once.
pub(crate) async fn run(check: &CheckAssignment, client: &reqwest::Client) -> CheckResult {
    let started = Instant::now();
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let (status, output, perfdata) = match &check.probe {
        CheckProbe::Exec { command, args } => {
            let (exit, stdout, truncated) = run_plugin(command, args, timeout).await;
            let outcome = nagios::parse(&exit, &stdout, truncated);
            // A plugin that said nothing (killed, timed out, not started): the reason is the message.
            let mut output = if stdout.iter().all(u8::is_ascii_whitespace) && !outcome.notes.is_empty() {
                outcome.notes.join("; ")
            } else {
                outcome.message.clone()
            };
            if !outcome.long_output.is_empty() {
                output.push('\n');
                output.push_str(&outcome.long_output);
            }
            for note in &outcome.notes {
                output.push_str(&format!("\n({note})"));
            }
            (outcome.status, output, raw_perfdata(&stdout))
        }
        CheckProbe::Http {
            url,
            expect_status,
            body_match,
            latency_threshold_ms,
        } => {
            http(
                client,
                url,
                *expect_status,
                body_match.as_deref(),
                *latency_threshold_ms,
                timeout,
            )
            .await
        }
        CheckProbe::Tcp { host, port } => tcp(host, *port, timeout).await,
    };
    CheckResult {
        name: check.check.clone(),
        target: check.target.clone(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        status: wire_status(status),
        output: bounded(output),
        perfdata: bounded(perfdata),
    }
}

fn wire_status(status: Status) -> u8 {
    match status {
        Status::Ok => 0,
        Status::Warning => 1,
        Status::Critical => 2,
        Status::Unknown => 3,
    }
}

/// At most what the protocol carries, cut on a character boundary.
fn bounded(text: String) -> String {
    cut(text, MAX_CHECK_OUTPUT_BYTES)
}

/// At most `max` bytes, cut on a character boundary and marked with `...`.
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The performance data as the plugin wrote it: what follows `|` on each line, joined by spaces.
fn raw_perfdata(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| line.split_once('|').map(|(_, perf)| perf.trim().to_owned()))
        .filter(|perf| !perf.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a plugin without a shell in its own process group; kills the group at the timeout.
async fn run_plugin(command: &str, args: &[String], timeout: Duration) -> (Exit, Vec<u8>, bool) {
    let mut child = match Command::new(command)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return (Exit::SpawnFailed(format!("{command}: {error}")), Vec::new(), false),
    };
    let group = crate::group::led_by(&child);
    let kill_group = || crate::group::kill_now(group);
    let stdout = child.stdout.take();
    let run = async {
        tokio::join!(read_kept(stdout), async {
            let status = child.wait().await;
            kill_group();
            status
        })
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_elapsed) => {
            kill_group();
            let _ = child.wait().await;
            let after_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            (Exit::TimedOut { after_ms }, Vec::new(), false)
        }
        Ok((_, Err(error))) => (
            Exit::SpawnFailed(format!("{command}: could not wait for it: {error}")),
            Vec::new(),
            false,
        ),
        Ok(((output, truncated), Ok(status))) => {
            use std::os::unix::process::ExitStatusExt;
            let exit = match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Code(3),
            };
            (exit, output, truncated)
        }
    }
}

/// Reads a pipe to its end, keeping the first [`KEPT_OUTPUT_BYTES`]; whether more came.
async fn read_kept(stream: Option<tokio::process::ChildStdout>) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let Some(mut stream) = stream else {
        return (kept, truncated);
    };
    let mut buf = [0_u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = KEPT_OUTPUT_BYTES.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

async fn http(
    client: &reqwest::Client,
    url: &str,
    expect_status: u16,
    body_match: Option<&str>,
    latency_threshold_ms: Option<u64>,
    timeout: Duration,
) -> (Status, String, String) {
    let started = Instant::now();
    let response = match tokio::time::timeout(timeout, client.get(url).timeout(timeout).send()).await {
        Err(_) => {
            return (
                Status::Critical,
                format!("GET {url}: timed out after {timeout:?}"),
                String::new(),
            );
        }
        Ok(Err(error)) => {
            return (
                Status::Critical,
                format!("GET {url}: {}", crate::error_chain(&error)),
                String::new(),
            );
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    let body = match tokio::time::timeout(timeout, response.bytes()).await {
        Ok(Ok(body)) => body,
        _ => {
            return (
                Status::Critical,
                format!("GET {url}: HTTP {status}, body not read"),
                String::new(),
            );
        }
    };
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    let perfdata = format!("time={seconds:.6}s size={}B", body.len());
    if status != expect_status {
        return (
            Status::Critical,
            format!("GET {url}: HTTP {status}, expected {expect_status}"),
            perfdata,
        );
    }
    if let Some(needle) = body_match
        && !String::from_utf8_lossy(&body).contains(needle)
    {
        return (
            Status::Critical,
            format!("GET {url}: HTTP {status}, the body lacks {needle:?}"),
            perfdata,
        );
    }
    if let Some(threshold) = latency_threshold_ms
        && elapsed > Duration::from_millis(threshold)
    {
        return (
            Status::Warning,
            format!("GET {url}: HTTP {status} in {seconds:.3}s, slower than {threshold} ms"),
            perfdata,
        );
    }
    (
        Status::Ok,
        format!("GET {url}: HTTP {status} in {seconds:.3}s"),
        perfdata,
    )
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> (Status, String, String) {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Err(_) => (
            Status::Critical,
            format!("connect {host}:{port}: timed out after {timeout:?}"),
            String::new(),
        ),
        Ok(Err(error)) => (
            Status::Critical,
            format!("connect {host}:{port}: {error}"),
            String::new(),
        ),
        Ok(Ok(_stream)) => {
            let seconds = started.elapsed().as_secs_f64();
            (
                Status::Ok,
                format!("connect {host}:{port}: connected in {seconds:.3}s"),
                format!("time={seconds:.6}s"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_plain(check: &CheckAssignment) -> CheckResult {
        run(check, &http_client(&[]).unwrap()).await
    }

    fn exec(script: &str, timeout_ms: u64) -> CheckAssignment {
        CheckAssignment {
            id: "t/c@h".into(),
            check: "t/c".into(),
            target: "h".into(),
            probe: CheckProbe::Exec {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
            },
            interval_ms: 1000,
            timeout_ms,
            splay_ms: 0,
        }
    }

    fn https_check(url: &str) -> CheckAssignment {
        CheckAssignment {
            id: "t/https@h".into(),
            check: "t/https".into(),
            target: "h".into(),
            probe: CheckProbe::Http {
                url: url.to_owned(),
                expect_status: 200,
                body_match: Some("ok".into()),
                latency_threshold_ms: None,
            },
            interval_ms: 1000,
            timeout_ms: 5000,
            splay_ms: 0,
        }
    }

    #[tokio::test]
    async fn an_https_check_trusts_the_ca_it_is_given_and_says_why_it_refuses_another_or_an_expired_certificate() {
        use endstate_testkit::{HttpsServer, TestCa};
        let ca = TestCa::new("checks CA");
        let server = HttpsServer::start(ca.current(), 200, b"ok").await;
        let url = format!("{}/health", server.url);
        let trusted = run(&https_check(&url), &http_client(std::slice::from_ref(&ca.der)).unwrap()).await;
        assert_eq!(trusted.status, 0, "{trusted:?}");
        assert!(trusted.output.contains("HTTP 200"), "{trusted:?}");

        // The same server, its CA not given: CRITICAL, and the output says the issuer is unknown.
        let unknown = run(&https_check(&url), &http_client(&[]).unwrap()).await;
        assert_eq!(unknown.status, 2, "{unknown:?}");
        assert!(unknown.output.contains("UnknownIssuer"), "{unknown:?}");

        // Another CA given: still refused.
        let wrong = run(
            &https_check(&url),
            &http_client(&[TestCa::new("another CA").der]).unwrap(),
        )
        .await;
        assert_eq!(wrong.status, 2, "{wrong:?}");
        assert!(wrong.output.contains("UnknownIssuer"), "{wrong:?}");

        // A certificate that ended yesterday, from the CA given: refused as expired.
        let expired = HttpsServer::start(ca.expired(), 200, b"ok").await;
        let expired = run(
            &https_check(&format!("{}/health", expired.url)),
            &http_client(std::slice::from_ref(&ca.der)).unwrap(),
        )
        .await;
        assert_eq!(expired.status, 2, "{expired:?}");
        assert!(expired.output.contains("certificate expired"), "{expired:?}");
    }

    #[tokio::test]
    async fn nagios_exit_codes_messages_and_perfdata() {
        let ok = run_plain(&exec("echo 'DISK OK - free 40% | /=60%;80;90;0;100'; exit 0", 5000)).await;
        assert_eq!((ok.status, ok.output.as_str()), (0, "DISK OK - free 40%"));
        assert_eq!(ok.perfdata, "/=60%;80;90;0;100");
        let crit = run_plain(&exec("echo 'CRITICAL - down'; exit 2", 5000)).await;
        assert_eq!((crit.status, crit.output.as_str()), (2, "CRITICAL - down"));
        let killed = run_plain(&exec("kill -9 $$", 5000)).await;
        assert_eq!(killed.status, 3, "{killed:?}");
        assert!(killed.output.contains("signal 9"), "{killed:?}");
    }

    #[tokio::test]
    async fn a_hanging_plugin_is_killed_with_its_group_at_the_timeout() {
        let marker = tempfile::NamedTempFile::new().unwrap();
        let path = marker.path().display().to_string();
        // A child in the same group outlives its parent's exit unless the group is killed.
        let script = format!("(sleep 1; echo alive > {path}) & sleep 30");
        let started = Instant::now();
        let result = run_plain(&exec(&script, 300)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(result.status, 3, "{result:?}");
        assert!(result.output.contains("timed out"), "{result:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "the whole group was killed"
        );
    }

    #[tokio::test]
    async fn megabytes_of_output_are_cut_and_say_so() {
        let result = run_plain(&exec("head -c 3000000 /dev/zero | tr '\\0' x; echo; exit 1", 10_000)).await;
        assert_eq!(result.status, 1, "{}", &result.output[..100.min(result.output.len())]);
        assert!(result.output.len() <= MAX_CHECK_OUTPUT_BYTES);
        assert!(
            result.output.contains("truncated"),
            "the result says it was cut: {}",
            &result.output[result.output.len().saturating_sub(200)..]
        );
    }
}
