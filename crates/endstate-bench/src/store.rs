//! Store benchmarks: durable instance transitions with group commit, timeline appends, and a
//! filtered timeline query over a large timeline. Every run uses a fresh SQLite store in a temp
//! dir with `synchronous=FULL` (an acknowledged write is fsynced).

use std::sync::Arc;
use std::time::Duration;

use endstate_store::{
    ActualInstance, DesiredInstance, EventQuery, InstanceRecord, InstanceTransition, NewEvent, SqliteStore, Store,
};
use endstate_types::{Generation, HostName, Status};
use tokio::time::Instant;

use crate::figure::{Figure, Goal};

/// Concurrent callers, each acknowledging one observation at a time (as an agent connection handler would).
const CALLERS: usize = 256;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const N_SYSTEMS: usize = 200;

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut figures = Vec::new();
        figures.extend(transitions(smoke, CALLERS).await?);
        // The same with more callers: group commit batches by what is in flight, so more
        // concurrency means bigger commits (Little's law: throughput = in flight / commit latency).
        figures.extend(transitions(smoke, 8 * CALLERS).await?);
        figures.extend(appends(smoke).await?);
        figures.extend(query(smoke).await?);
        Ok(figures)
    })
}

fn fresh_store() -> anyhow::Result<(tempfile::TempDir, Arc<SqliteStore>)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("bench.db"))?;
    Ok((dir, Arc::new(store)))
}

/// Benchmark 1: durable instance state transitions, one per call, from many concurrent callers.
async fn transitions(smoke: bool, callers: usize) -> anyhow::Result<Vec<Figure>> {
    let total = if smoke { 2_000 * callers / CALLERS } else { 200_000 };
    let per_caller = total / callers;
    let total = per_caller * callers;
    let (_dir, store) = fresh_store()?;
    let instances: Vec<InstanceRecord> = (0..callers).map(bench_instance).collect();
    store.put_instances(instances.clone()).await?;
    eprintln!("store: recording {total} transitions from {callers} callers");
    let before = store.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for inst in instances {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            for i in 0..per_caller {
                let transition = InstanceTransition {
                    component_key: inst.component_key.clone(),
                    host: inst.host.clone(),
                    slot: inst.slot,
                    actual: ActualInstance {
                        version: Some("1.0.0".to_owned()),
                        status: if i.is_multiple_of(2) {
                            Status::Healthy
                        } else {
                            Status::Degraded
                        },
                        state: "running".to_owned(),
                        since_ms: i64::try_from(i)?,
                    },
                    change: None,
                    actor: Some("agent:bench".to_owned()),
                };
                let call = Instant::now();
                store.record_transitions(vec![transition]).await?;
                latencies.push(call.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let stats = store.stats();
    let (batches, ops) = (stats.batches - before.batches, stats.ops - before.ops);
    let mean_batch = ops as f64 / batches.max(1) as f64;
    let cycle_ms = millis(elapsed) / batches.max(1) as f64;
    let detail = format!(
        "{total} transitions, {callers} concurrent callers, 1 transition per call, synchronous=FULL; \
         {batches} commits, {mean_batch:.0} ops/commit on average, max {}, {cycle_ms:.1} ms per commit cycle \
         (apply + fsync): throughput is bounded by callers in flight / commit cycle",
        stats.max_batch
    );
    store.close().await;
    Ok(vec![
        Figure {
            name: format!("store: durable transitions, {callers} callers"),
            value: total as f64 / elapsed.as_secs_f64(),
            unit: "transitions/s",
            target: 100_000.0,
            goal: Goal::AtLeast,
            detail: detail.clone(),
        },
        Figure {
            name: format!("store: transition latency p99, {callers} callers"),
            value: millis(percentile(&mut latencies, 0.99)),
            unit: "ms",
            target: 20.0,
            goal: Goal::AtMost,
            detail: format!(
                "per call, awaited until committed; median {:.2} ms",
                millis(percentile(&mut latencies, 0.5))
            ),
        },
    ])
}

/// Benchmark 2: timeline appends, one event per call from many callers, then 100-event batches.
async fn appends(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let total = if smoke { 2_000 } else { 200_000 };
    let mut figures = Vec::new();
    for (batch, callers) in [(1_usize, CALLERS), (100, 16)] {
        let per_caller = total / (batch * callers);
        let n_events = per_caller * batch * callers;
        let (_dir, store) = fresh_store()?;
        eprintln!("store: appending {n_events} events, {batch} per call, {callers} callers");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for caller in 0..callers {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..per_caller {
                    let events = (0..batch)
                        .map(|j| bench_event(caller * 7 + i * batch + j, 0, 7 * DAY_MS))
                        .collect();
                    store.append_events(events).await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = started.elapsed();
        let stats = store.stats();
        store.close().await;
        figures.push(Figure {
            name: format!("store: timeline append, {batch} event(s)/call"),
            value: n_events as f64 / elapsed.as_secs_f64(),
            unit: "events/s",
            target: 50_000.0,
            goal: Goal::AtLeast,
            detail: format!(
                "{n_events} events, {callers} concurrent callers, synchronous=FULL; {} commits",
                stats.batches
            ),
        });
    }
    Ok(figures)
}

/// Benchmark 3: one system subtree (5 systems) and a one-hour window over a large timeline.
async fn query(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let total: usize = if smoke { 20_000 } else { 1_000_000 };
    let span_ms = 7 * DAY_MS;
    let (_dir, store) = fresh_store()?;
    eprintln!("store: loading {total} events over {N_SYSTEMS} systems and 7 days");
    let load_started = Instant::now();
    let chunk = 5_000;
    let mut tasks = Vec::new();
    let n_loaders = 4;
    for loader in 0..n_loaders {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut next = loader * chunk;
            while next < total {
                let end = (next + chunk).min(total);
                let events = (next..end).map(|i| bench_event(i, i, span_ms)).collect();
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
    eprintln!("store: loaded in {:.1} s, querying", load.as_secs_f64());

    let runs = 100;
    let mut latencies = Vec::with_capacity(runs);
    let mut n_found = 0;
    for run in 0..runs {
        let first = (run * 37) % (N_SYSTEMS - 5);
        let systems = (first..first + 5).map(system_name).collect();
        let since = (i64::try_from(run)? * 1_237 * 60_000) % (span_ms - HOUR_MS);
        let query = EventQuery {
            systems: Some(systems),
            since_ms: Some(since),
            until_ms: Some(since + HOUR_MS),
            limit: 100,
            ..EventQuery::default()
        };
        let started = Instant::now();
        let page = store.query_events(&query).await?;
        latencies.push(started.elapsed());
        n_found += page.items.len();
    }
    store.close().await;
    let median = millis(percentile(&mut latencies, 0.5));
    Ok(vec![Figure {
        name: "store: timeline query, subtree + 1 h window".to_owned(),
        value: millis(percentile(&mut latencies, 0.99)),
        unit: "ms p99",
        target: 20.0,
        goal: Goal::AtMost,
        detail: format!(
            "{total} events, {N_SYSTEMS} systems, 7 days; 5 systems, 1 h, limit 100; {runs} runs, median \
                 {median:.2} ms, {:.0} events/page on average; loaded at {:.0} events/s (5,000/call)",
            n_found as f64 / runs as f64,
            total as f64 / load.as_secs_f64()
        ),
    }])
}

fn bench_instance(idx: usize) -> InstanceRecord {
    InstanceRecord {
        component_key: format!("{}/web", system_name(idx % N_SYSTEMS)),
        system: system_name(idx % N_SYSTEMS),
        host: HostName(format!("host-{idx}")),
        slot: 0,
        desired: DesiredInstance {
            version: "1.0.0".to_owned(),
            config_digest: "sha256:bench".to_owned(),
            generation: Generation(1),
        },
        actual: None,
    }
}

/// Event `idx` of a timeline spread evenly over `span_ms`; every tenth also belongs to an aggregate system.
fn bench_event(idx: usize, position: usize, span_ms: i64) -> NewEvent {
    let system = idx.wrapping_mul(7919) % N_SYSTEMS;
    let mut systems = vec![system_name(system)];
    if idx.is_multiple_of(10) {
        systems.push(system_name((system + 1) % N_SYSTEMS));
    }
    let time_ms = i64::try_from(position).unwrap_or(0).wrapping_mul(7_919) % span_ms;
    NewEvent {
        systems,
        host: Some(format!("host-{}", idx % 1_000)),
        component: Some(format!("{}/web", system_name(system))),
        data: serde_json::json!({"idx": idx, "state": "running"}),
        ..NewEvent::new(
            time_ms,
            "instance.transitioned",
            format!("web on host-{} is running", idx % 1_000),
        )
    }
}

fn system_name(idx: usize) -> String {
    format!("sys-{idx:03}")
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(idx).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}
