//! The 3 a.m. view at scale, through a real `endstate server` process on its embedded store:
//! 10,000,000 timeline events over 1,000 leaf systems and 30 days (smoke: 40,000 over 100),
//! under a five-level aggregate (`root` > 4 > 16 > 64 > the leaves).
//!
//! Targets (from the issue):
//! - a system-subtree query for a one-hour window: p99 under 50 ms;
//! - `why` over 30 days of history: under 100 ms;
//! - rolled-up status of a five-level aggregate of 1,000 systems: under 10 ms.
//!
//! How: the hosts are written to the store first; the server starts, the spec of the systems
//! and their components (two instances each) is submitted and the hub writes the instances; the
//! server stops; the instances' states and the events are written to the store directly (4
//! concurrent writers, 5,000 events per call); the server starts again on the same data and is
//! asked over HTTP, one request at a time, as a person would.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use endstate_events::Event;
use endstate_store::{ActualInstance, EventQuery, InstanceFilter, InstanceTransition, NewEvent, SqliteStore, Store};
use endstate_types::{ChangeId, ChangeState, Status};
use tokio::time::Instant;

use crate::agents::server::{ServerProc, ServerSpec, endstate_exe};
use crate::figure::{Figure, Goal};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const SPAN_MS: i64 = 30 * DAY_MS;
/// Hosts come in groups of two (label `group: gN`); a leaf's component runs one instance on
/// each host of its group.
const GROUPS: usize = 50;

struct Sizes {
    leaves: usize,
    hosts: usize,
    events: usize,
    runs: usize,
}

impl Sizes {
    fn of(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                leaves: 100,
                hosts: 50,
                events: 40_000,
                runs: 20,
            }
        } else {
            Sizes {
                leaves: 1_000,
                hosts: 100,
                events: 10_000_000,
                runs: 200,
            }
        }
    }
}

fn leaf(i: usize) -> String {
    format!("s-{i:04}")
}

/// The aggregate of level `level` (1 to 3) above leaf `i`: leaves go round-robin over the 64
/// aggregates of level 3, each of which is in one of 16 of level 2, each in one of 4 of level 1.
fn aggregate_of(i: usize, level: u32) -> String {
    let l3 = i % 64;
    match level {
        1 => format!("r-{}", l3 / 16),
        2 => format!("r-{}-{}", l3 / 16, (l3 / 4) % 4),
        _ => format!("r-{}-{}-{}", l3 / 16, (l3 / 4) % 4, l3 % 4),
    }
}

/// The spec: `root`, the aggregates of levels 1 to 3, the leaves, one component per leaf with
/// two instances on any hosts.
fn spec(leaves: usize) -> String {
    let mut out = String::new();
    let system = |out: &mut String, name: &str, subs: &[String]| {
        let _ = write!(
            out,
            "---\napiVersion: endstate/v1\nkind: System\nname: {name}\nowners: [team-{name}]\nsubsystems: [{}]\n",
            subs.join(", ")
        );
    };
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..leaves {
        children.entry(aggregate_of(i, 3)).or_default().push(leaf(i));
        children.entry(aggregate_of(i, 2)).or_default().push(aggregate_of(i, 3));
        children.entry(aggregate_of(i, 1)).or_default().push(aggregate_of(i, 2));
        children.entry("root".into()).or_default().push(aggregate_of(i, 1));
    }
    for (name, mut subs) in children {
        subs.sort();
        subs.dedup();
        system(&mut out, &name, &subs);
    }
    for i in 0..leaves {
        system(&mut out, &leaf(i), &[]);
        let _ = write!(
            out,
            "---\napiVersion: endstate/v1\nkind: Component\nname: svc\nsystem: {}\nartifact: {{ version: \"1.0.0\", path: bin/svc }}\ncommand: bin/svc\nplacement: {{ selector: {{ group: g{} }}, count: {{ per_host: 1 }} }}\n",
            leaf(i),
            i % GROUPS
        );
    }
    out
}

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut sizes = Sizes::of(smoke);
    // For iterating on the queries without writing ten million events each time; the figures
    // say how many there were.
    if let Some(events) = std::env::var("ENDSTATE_BENCH_TIMELINE_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        sizes.events = events;
    }
    runtime.block_on(measure(&sizes))
}

async fn measure(sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let db = data.join("endstate.db");
    // The spec, and the instances the hub places.
    let spec_run = ServerSpec {
        exe: endstate_exe()?,
        data_dir: data.clone(),
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        // The enrolled hosts' agents never connect; with the default keepalive the server would
        // mark all of them unreachable (2,000 instance transitions) in the middle of the
        // measurements, which is not what is measured here.
        keepalive: Some("1h".into()),
        https: false,
    };
    let mut server = ServerProc::start(&spec_run).await?;
    let token = server
        .admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the first start printed no admin token"))?;
    let client = endstate_client::Client::new(&server.http, &token)?;
    // The hosts enrol (their agents never connect: the instances' states are written below).
    for group in 0..GROUPS {
        let hosts: Vec<String> = (0..sizes.hosts)
            .filter(|h| h % GROUPS == group)
            .map(|h| format!("h-{h:03}"))
            .collect();
        let labels = [("group".to_string(), format!("g{group}"))].into();
        crate::agents::sim::enrol(&server.http, &token, hosts, labels, 8).await?;
    }
    server.stop(Duration::from_secs(10)).await;
    // The systems' revision, in force as if its rollout had converged (a rollout of a thousand
    // components through agents that never connect would not), so the hub places every instance.
    eprintln!("timeline: {} leaf systems under a five-level aggregate", sizes.leaves);
    {
        let loaded = endstate_spec::load(
            &[endstate_spec::SourceFile {
                path: "bench.yaml".into(),
                text: spec(sizes.leaves),
            }],
            &[],
        );
        let desired = loaded
            .desired
            .ok_or_else(|| anyhow::anyhow!("the bench spec is invalid: {:?}", loaded.diagnostics))?;
        let store = SqliteStore::open(&db)?;
        let now = jiff::Timestamp::now().as_millisecond();
        let (_, change) = store
            .submit_revision(
                endstate_store::NewRevision {
                    author: "bench".into(),
                    message: "bench: 3 a.m. view".into(),
                    source: "cli".into(),
                    digest: "sha256:bench".into(),
                    desired: serde_json::to_value(&desired)?,
                    created_ms: now,
                    parent: None,
                    options: None,
                },
                Vec::new(),
            )
            .await?;
        store
            .transition_change(
                change.id,
                ChangeState::Pending,
                endstate_store::ChangeUpdate {
                    state: ChangeState::Converged,
                    plan: None,
                    reason: Some("bench: in force".into()),
                    wave: None,
                    progress: None,
                    retire_hosts: Vec::new(),
                    now_ms: now,
                },
                Vec::new(),
            )
            .await?;
        store.close().await;
    }
    let mut server = ServerProc::start(&server.restart_spec(&spec_run)).await?;
    let wanted = sizes.leaves * (sizes.hosts / GROUPS);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: usize = client.hosts().await?.iter().map(|h| h.instances.len()).sum();
        if n >= wanted {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hub placed {n} of {wanted} instances in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop(Duration::from_secs(10)).await;

    // The instances' states and the timeline, written while the server is stopped.
    let now = jiff::Timestamp::now().as_millisecond();
    let start = now - SPAN_MS;
    let store = Arc::new(SqliteStore::open(&db)?);
    let instances = store.list_instances(InstanceFilter::default()).await?;
    let transitions: Vec<InstanceTransition> = instances
        .iter()
        .enumerate()
        .map(|(idx, i)| InstanceTransition {
            component_key: i.component_key.clone(),
            host: i.host.clone(),
            slot: i.slot,
            actual: ActualInstance {
                version: Some(i.desired.version.clone()),
                // One in a hundred degraded, so statuses roll up with a reason.
                status: if idx % 100 == 7 {
                    Status::Degraded
                } else {
                    Status::Healthy
                },
                state: "running".into(),
                since_ms: start + i64::try_from(idx).unwrap_or(0),
            },
            change: None,
            actor: Some(format!("agent:{}", i.host)),
        })
        .collect();
    store.record_transitions(transitions).await?;
    let hosts_of: Arc<Vec<Vec<String>>> = Arc::new(
        (0..sizes.leaves)
            .map(|l| {
                instances
                    .iter()
                    .filter(|i| i.system == leaf(l))
                    .map(|i| i.host.0.clone())
                    .collect()
            })
            .collect(),
    );
    eprintln!("timeline: writing {} events over 30 days", sizes.events);
    let load_started = Instant::now();
    let (chunk, n_loaders, total) = (5_000, 4, sizes.events);
    let mut tasks = Vec::new();
    for loader in 0..n_loaders {
        let store = Arc::clone(&store);
        let hosts_of = Arc::clone(&hosts_of);
        let leaves = sizes.leaves;
        tasks.push(tokio::spawn(async move {
            let mut next = loader * chunk;
            while next < total {
                let end = (next + chunk).min(total);
                let events = (next..end).map(|i| event(i, total, leaves, start, &hosts_of)).collect();
                store.append_events(events).await?;
                next += n_loaders * chunk;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let load = load_started.elapsed();
    eprintln!(
        "timeline: written in {:.1} s ({:.0} events/s)",
        load.as_secs_f64(),
        total as f64 / load.as_secs_f64()
    );
    let sample = store
        .query_events(&EventQuery {
            systems: Some(vec![leaf(1)]),
            limit: 1,
            ..EventQuery::default()
        })
        .await?;
    anyhow::ensure!(!sample.items.is_empty(), "no event of {} was stored", leaf(1));
    store.close().await;
    drop(store);

    let mut server = ServerProc::start(&server.restart_spec(&spec_run)).await?;
    let result = queries(sizes, &server, &token, now).await;
    server.stop(Duration::from_secs(10)).await;
    let loaded = format!(
        "{} events over {} leaf systems and 30 days, written at {:.0} events/s",
        sizes.events,
        sizes.leaves,
        total as f64 / load.as_secs_f64()
    );
    let mut figures = result?;
    for figure in &mut figures {
        figure.detail = format!("{}; {loaded}", figure.detail);
    }
    Ok(figures)
}

/// Event `i` of `total`, spread evenly over the span: mostly instance transitions and check
/// results, then changes, actions, host events and notes, each on one leaf (and its hosts).
fn event(i: usize, total: usize, leaves: usize, start: i64, hosts_of: &[Vec<String>]) -> NewEvent {
    let offset = i64::try_from(i as u128 * SPAN_MS as u128 / total as u128).unwrap_or(0);
    let l = (i.wrapping_mul(2_654_435_761)) % leaves;
    let system = leaf(l);
    let host = hosts_of[l].get(i % 2).cloned().unwrap_or_else(|| "h-000".into());
    // The kind from another hash than the leaf, so every leaf gets the same mix of kinds.
    let kind = match (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100 {
        0..70 => "instance.transitioned",
        70..90 => "check.status",
        90..94 => "change.wave_started",
        94..97 => "action.finished",
        97..99 => "host.facts_changed",
        _ => "note.added",
    };
    let status = if i.is_multiple_of(3) { "degraded" } else { "healthy" };
    // Payloads of the real shape (the server reads them typed, as it reads its own).
    let typed = match kind {
        "instance.transitioned" => Event::InstanceTransitioned(endstate_events::InstanceTransitioned {
            slot: 0,
            version: Some("1.0.0".into()),
            status: status.into(),
            state: "running".into(),
            previous_state: Some("running".into()),
            previous_status: None,
            desired: None,
        }),
        "check.status" => Event::CheckStatus(endstate_events::CheckStatus {
            check: format!("{system}/svc-http"),
            target: host.clone(),
            from: None,
            to: if i.is_multiple_of(3) { "critical" } else { "ok" }.into(),
            message: "HTTP OK".into(),
            perfdata: String::new(),
        }),
        "change.wave_started" => Event::ChangeWaveStarted(endstate_events::ChangeTransition {
            from: "rolling".into(),
            to: "rolling".into(),
            reason: "wave 1/2".into(),
            revision: 1,
            wave: Some((0, 2)),
        }),
        "action.finished" => Event::ActionFinished(endstate_events::ActionFinished {
            run: format!("run-{}", i / 10),
            action: "flush".into(),
            state: "succeeded".into(),
            hosts: None,
        }),
        "host.facts_changed" => Event::HostFactsChanged(endstate_events::HostFactsChanged { changes: Vec::new() }),
        _ => Event::NoteAdded(endstate_events::NoteAdded {
            text: format!("note {i}"),
        }),
    };
    let mut event = NewEvent {
        systems: vec![system.clone()],
        host: Some(host.clone()),
        component: Some(format!("{system}/svc")),
        actor: Some(format!("agent:{host}")),
        ..NewEvent::of(start + offset, &typed, format!("{kind} {i} on {system} at {host}"))
    };
    match kind {
        "change.wave_started" => event.change = Some(ChangeId(u64::try_from(i / 1_000).unwrap_or(0) + 10)),
        "host.facts_changed" => event.systems.clear(),
        _ => {}
    }
    event
}

async fn queries(sizes: &Sizes, server: &ServerProc, token: &str, now: i64) -> anyhow::Result<Vec<Figure>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", server.http);
        let token = token.to_owned();
        async move {
            let started = Instant::now();
            let response = http.get(&url).bearer_auth(&token).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let elapsed = started.elapsed();
            anyhow::ensure!(
                status.is_success(),
                "{url}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            let json: serde_json::Value = serde_json::from_slice(&body)?;
            anyhow::Ok((elapsed, json))
        }
    };
    let time = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string());
    // Warm up: the first request reads the revision and fills the caches of the OS.
    get("/v1/systems/root".into()).await?;
    let mut figures = Vec::new();

    // 1. A subtree (an aggregate of level 2, about 1/16 of the leaves) over one hour.
    let mut latencies = Vec::with_capacity(sizes.runs);
    let mut found = 0usize;
    for run in 0..sizes.runs {
        let system = format!("r-{}-{}", run % 4, (run / 4) % 4);
        let since = now - SPAN_MS + (i64::try_from(run)? * 3_637 * MINUTE_MS) % (SPAN_MS - HOUR_MS);
        let path = format!(
            "/v1/timeline?system={system}&since={}&until={}&limit=100",
            time(since)?,
            time(since + HOUR_MS)?
        );
        let (elapsed, page) = get(path).await?;
        latencies.push(elapsed);
        found += page["items"].as_array().map_or(0, Vec::len);
    }
    let (median, p99) = (percentile(&mut latencies, 0.5), percentile(&mut latencies, 0.99));
    figures.push(Figure {
        name: "timeline: system subtree, 1 h window".into(),
        value: millis(p99),
        unit: "ms p99",
        target: 50.0,
        goal: Goal::AtMost,
        detail: format!(
            "GET /v1/timeline?system=<level-2 aggregate, {} leaves>&since&until&limit=100 over HTTP, {} runs, \
             median {:.2} ms, {:.0} events/page on average",
            sizes.leaves / 16,
            sizes.runs,
            millis(median),
            found as f64 / sizes.runs as f64
        ),
    });

    // 2. why over 30 days, for a leaf system; the first asks (of other leaves) warm the caches
    // and are reported apart.
    let runs = (sizes.runs / 4).max(5);
    let mut cold = Vec::new();
    for run in 0..3 {
        let system = leaf((run * 41 + 11) % sizes.leaves);
        let path = format!("/v1/why?target=system:{system}&at={}&window=30d", time(now)?);
        cold.push(millis(get(path).await?.0));
    }
    let mut latencies = Vec::with_capacity(runs);
    let mut read = 0u64;
    for run in 0..runs {
        let system = leaf((run * 37) % sizes.leaves);
        let path = format!("/v1/why?target=system:{system}&at={}&window=30d", time(now)?);
        let (elapsed, why) = get(path).await?;
        anyhow::ensure!(
            why["suspects"].as_array().is_some_and(|s| !s.is_empty()),
            "why {system} found nothing: {why}"
        );
        if millis(elapsed) > 5.0 * millis(latencies.first().copied().unwrap_or(elapsed)) {
            eprintln!("timeline: why {system} (run {run}) took {:.1} ms", millis(elapsed));
        }
        latencies.push(elapsed);
        read += why["considered"].as_u64().unwrap_or(0);
    }
    let (median, max) = (percentile(&mut latencies, 0.5), percentile(&mut latencies, 1.0));
    figures.push(Figure {
        name: "timeline: why over 30 days".into(),
        value: millis(max),
        unit: "ms max",
        target: 100.0,
        goal: Goal::AtMost,
        detail: format!(
            "GET /v1/why?target=system:<leaf>&window=30d over HTTP, {runs} leaves, median {:.2} ms, \
             {:.0} candidate events read on average (its system and its 2 hosts); the 3 first asks after \
             the server started (other leaves, not counted): {}",
            millis(median),
            read as f64 / runs as f64,
            cold.iter()
                .map(|ms| format!("{ms:.0} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    // 3. The rolled-up status of the whole five-level tree: the status of the root, with the
    // leaf that decided it (depth 0), then the same with the whole tree in the answer.
    let mut latencies = Vec::with_capacity(sizes.runs);
    let mut reason = String::new();
    for _ in 0..sizes.runs {
        let (elapsed, root) = get("/v1/systems/root?depth=0".into()).await?;
        latencies.push(elapsed);
        reason = format!(
            "{} ({})",
            root["status"]["reason"].as_str().unwrap_or_default(),
            root["status"]["path"].as_array().map_or(0, Vec::len)
        );
    }
    let (median, p99) = (percentile(&mut latencies, 0.5), percentile(&mut latencies, 0.99));
    let mut tree = Vec::with_capacity(20);
    for _ in 0..20 {
        tree.push(get("/v1/systems/root".into()).await?.0);
    }
    let tree_median = percentile(&mut tree, 0.5);
    figures.push(Figure {
        name: "timeline: rolled-up status of a five-level aggregate".into(),
        value: millis(p99),
        unit: "ms p99",
        target: 10.0,
        goal: Goal::AtMost,
        detail: format!(
            "GET /v1/systems/root?depth=0 over HTTP: {} leaves ({} instance(s) each on {} hosts) under 84 \
             aggregates; {} runs, median {:.2} ms; root says: {reason}; with the whole tree and every \
             component's spec in the answer (no depth), median {:.2} ms",
            sizes.leaves,
            sizes.hosts / GROUPS,
            sizes.hosts,
            sizes.runs,
            millis(median),
            millis(tree_median)
        ),
    });
    Ok(figures)
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let idx = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[idx]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
