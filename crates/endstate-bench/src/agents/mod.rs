//! Agent benchmarks, against real processes of the `endstate` binary found next to this harness:
//!
//! - **real**: `endstate agent`, enrolled with a join token into `endstate server`, idle with 10
//!   supervised instances: its RSS and CPU, the binary's size, and the time from `kill -9` of an
//!   instance to its exit on the server's timeline.
//! - **fleet**: one process of simulated agents ([`sim`]) speaking the real protocol over real
//!   mutual-TLS websockets to a server process: server memory per idle agent, keepalives per
//!   server CPU second, dead agent detection, observation ingest, and the reconnect storm after
//!   the server is killed and restarted.
//!
//!
//! The `actions` group ([`run_actions`]) runs an action on N real agents, from the request to
//! every result recorded.
//!
//! Each figure that cannot be measured is reported as not measured, with the reason.

mod actions;
mod fleet;
pub(crate) mod procfs;
mod real;
mod salt;
pub(crate) mod server;
pub(crate) mod sim;

use std::time::Duration;

use crate::figure::{Figure, Goal};

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut figures = Vec::new();
        let exe = match server::endstate_exe() {
            Ok(exe) => exe,
            Err(error) => {
                let reason = format!("{error:#}");
                for expect in real::expected(smoke).into_iter().chain(fleet::expected(smoke)) {
                    figures.push(expect.not_measured(reason.clone()));
                }
                return Ok(figures);
            }
        };
        let mut measured = Vec::new();
        if let Err(error) = real::run(&exe, smoke, &mut measured).await {
            eprintln!("agents: the real agent benchmark failed: {error:#}");
            fill_missing(real::expected(smoke), &mut measured, &format!("{error:#}"));
        }
        figures.append(&mut measured);
        if let Err(error) = fleet::run(&exe, smoke, &mut measured).await {
            eprintln!("agents: the simulated fleet benchmark failed: {error:#}");
            fill_missing(fleet::expected(smoke), &mut measured, &format!("{error:#}"));
        }
        figures.append(&mut measured);
        Ok(figures)
    })
}

/// The `actions` group: a run of an action on N real agents (see [`actions`]).
pub(crate) fn run_actions(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let exe = match server::endstate_exe() {
            Ok(exe) => exe,
            Err(error) => {
                let reason = format!("{error:#}");
                return Ok(actions::expected(smoke)
                    .into_iter()
                    .map(|e| e.not_measured(reason.clone()))
                    .collect());
            }
        };
        let mut figures = Vec::new();
        if let Err(error) = actions::run(&exe, smoke, &mut figures).await {
            eprintln!("actions: the benchmark failed: {error:#}");
            fill_missing(actions::expected(smoke), &mut figures, &format!("{error:#}"));
        }
        Ok(figures)
    })
}

/// Thousands of connections need as many descriptors: raise the soft limit to the hard one.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A figure a benchmark gives: its name, unit and target.
pub(super) struct Expect {
    name: String,
    unit: &'static str,
    target: f64,
    goal: Goal,
}

impl Expect {
    fn new(name: String, unit: &'static str, target: f64, goal: Goal) -> Expect {
        Expect {
            name,
            unit,
            target,
            goal,
        }
    }

    fn figure(&self, value: f64, detail: String) -> Figure {
        if !value.is_finite() {
            return self.not_measured(format!("the measurement gave {value}; {detail}"));
        }
        Figure {
            name: self.name.clone(),
            value,
            unit: self.unit,
            target: self.target,
            goal: self.goal,
            detail,
        }
    }

    fn not_measured(&self, reason: String) -> Figure {
        Figure::not_measured(self.name.clone(), self.unit, self.target, self.goal, reason)
    }
}

/// Adds every expected figure that is not in `figures` as not measured.
fn fill_missing(expected: Vec<Expect>, figures: &mut Vec<Figure>, reason: &str) {
    for expect in expected {
        if !figures.iter().any(|f| f.name == expect.name) {
            figures.push(expect.not_measured(reason.to_owned()));
        }
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?)
}

/// `GET /v1/timeline?QUERY`: the events.
async fn timeline(
    http: &reqwest::Client,
    server: &str,
    admin: &str,
    query: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let response = http
        .get(format!("{server}/v1/timeline?{query}"))
        .bearer_auth(admin)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "GET /v1/timeline?{query}: {status}: {body}");
    Ok(body
        .get("items")
        .and_then(|i| i.as_array())
        .cloned()
        .unwrap_or_default())
}

/// The seq of the newest event on the timeline (0 when empty).
async fn newest_seq(http: &reqwest::Client, server: &str, admin: &str) -> anyhow::Result<u64> {
    Ok(timeline(http, server, admin, "limit=1")
        .await?
        .first()
        .and_then(|e| e.get("seq"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

pub(crate) fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(idx).copied().unwrap_or_default()
}

pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}
