//! Spec benchmarks: reading, parsing and validating a large spec directory.
//!
//! Target (from the issue): a spec directory of 10,000 components is read, parsed and validated
//! in under 1 s.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::figure::{Figure, Goal};

const SYSTEMS: usize = 100;

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let n_components = if smoke { 200 } else { 10_000 };
    let n_runs = if smoke { 1 } else { 3 };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("spec");
    write_spec(&dir, n_components)?;
    let bytes: u64 = walk_bytes(&dir)?;

    let mut timings = Vec::with_capacity(n_runs);
    for _ in 0..n_runs {
        let started = Instant::now();
        let files = endstate_client::spec_dir::read_spec_dir(&dir).map_err(|problems| {
            anyhow::anyhow!(
                "reading the generated spec failed: {}",
                problems.first().map(ToString::to_string).unwrap_or_default()
            )
        })?;
        let loaded = endstate_spec::load(&files, &[]);
        let elapsed = started.elapsed();
        if let Some(first) = loaded.diagnostics.first() {
            anyhow::bail!(
                "the generated spec has {} diagnostics, the first: {first}",
                loaded.diagnostics.len()
            );
        }
        let n_loaded = loaded.desired.map_or(0, |desired| desired.components.len());
        anyhow::ensure!(
            n_loaded == n_components,
            "loaded {n_loaded} components, expected {n_components}"
        );
        timings.push(elapsed.as_secs_f64() * 1000.0);
    }
    timings.sort_by(f64::total_cmp);
    let median = timings.get(timings.len() / 2).copied().unwrap_or_default();
    Ok(vec![Figure {
        name: "spec: read+parse+validate 10k components".to_owned(),
        value: median,
        unit: "ms",
        target: 1000.0,
        goal: Goal::AtMost,
        detail: format!(
            "{n_components} components in {SYSTEMS} systems, {SYSTEMS} files, {} KiB, median of {n_runs}",
            bytes / 1024
        ),
    }])
}

/// One file per system: the system, then its components, each depending on the previous one and,
/// in every file but the first, on a component of the previous system.
fn write_spec(dir: &Path, n_components: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let per_system = n_components.div_ceil(SYSTEMS);
    for s in 0..SYSTEMS {
        let mut text = String::new();
        let subsystems = if s + 1 < SYSTEMS {
            format!("[sys-{:03}]", s + 1)
        } else {
            "[]".to_owned()
        };
        write!(
            text,
            "apiVersion: endstate/v1\nkind: System\nname: sys-{s:03}\ndescription: Generated system {s}.\n\
             owners: [team-{s}]\nescalation: {{ contact: oncall-{s} }}\nlabels: {{ tier: production }}\n\
             subsystems: {subsystems}\n"
        )?;
        for c in 0..per_system {
            if s * per_system + c >= n_components {
                break;
            }
            let mut depends = Vec::new();
            if c > 0 {
                depends.push(format!("comp-{:03}", c - 1));
            }
            if s > 0 && c == 0 {
                depends.push(format!("sys-{:03}/comp-000", s - 1));
            }
            write!(
                text,
                "---\napiVersion: endstate/v1\nkind: Component\nname: comp-{c:03}\nsystem: sys-{s:03}\n\
                 artifact:\n  version: \"1.{c}.0\"\n  url: https://artifacts.example.com/comp-{c}.tar.gz\n  \
                 sha256: {sha}\ncommand: bin/server\nargs: [\"--port\", \"{{{{ ports.http }}}}\", \"--host\", \"{{{{ instance.host }}}}\"]\n\
                 env: {{ RUST_LOG: info }}\nports:\n  - name: http\n    exclusive: true\n\
                 health:\n  http: {{ port: http, path: /healthz }}\n  interval: 10s\n  timeout: 2s\n\
                 placement:\n  selector: {{ role: web, zone: [a, b, c] }}\n  count: {{ total: 6 }}\n  spread_by: zone\n\
                 rollout:\n  canary: 1\n  batch: {{ percent: 25 }}\n  max_unavailable: 2\n  one_domain_at_a_time: zone\n  \
                 min_healthy_time: 30s\n  on_failure: rollback\ndepends_on: [{}]\n",
                depends.join(", "),
                sha = "ab".repeat(32),
            )?;
        }
        std::fs::write(dir.join(format!("sys-{s:03}.yaml")), text)?;
    }
    Ok(())
}

fn walk_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
