//! The benchmark harness: runs every benchmark of the project, prints each figure beside its
//! target, and writes the results as JSON.
//!
//! `cargo xtask bench` runs it in release mode with full sizes; `--smoke` runs every benchmark
//! on small inputs, so CI proves they still work without spending minutes (smoke figures are not
//! compared with the targets).

mod agents;
mod figure;
mod gitops;
mod monitoring;
mod rollout;
mod spec;
mod store;
mod timeline;
mod tls;

use std::path::PathBuf;

use figure::{Figure, Outcome};

/// A group of benchmarks: runs them (small sizes when smoke) and returns their figures.
type Group = fn(bool) -> anyhow::Result<Vec<Figure>>;

fn main() -> anyhow::Result<()> {
    let mut smoke = false;
    let mut out = PathBuf::from("target/bench-results.json");
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some(rollout::PLAN_MEMORY_ARG) {
        // A fresh process that measures the planner's memory for the rollout group.
        let hosts = args
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("{} needs a host count", rollout::PLAN_MEMORY_ARG))?;
        return rollout::plan_memory_child(&hosts);
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--out" => out = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("--out needs a path"))?),
            "--only" => {
                only = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--only needs a benchmark group"))?,
                )
            }
            "--help" | "-h" => {
                println!(
                    "usage: endstate-bench [--smoke] [--out FILE] [--only spec|store|agents|actions|planner|rollout|timeline|monitoring|tls|gitops]"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; see --help"),
        }
    }
    let groups: [(&str, Group); 10] = [
        ("spec", spec::run),
        ("store", store::run),
        ("agents", agents::run),
        ("actions", agents::run_actions),
        ("planner", rollout::run_planner),
        ("rollout", rollout::run),
        ("timeline", timeline::run),
        ("monitoring", monitoring::run),
        ("tls", tls::run),
        ("gitops", gitops::run),
    ];
    if let Some(only) = &only {
        anyhow::ensure!(
            groups.iter().any(|(name, _)| name == only),
            "unknown benchmark group {only:?}; see --help"
        );
    }
    let mut figures = Vec::new();
    for (name, run) in groups {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        println!("== {name}");
        for figure in run(smoke)? {
            println!("{}", figure.line(smoke));
            figures.push(figure);
        }
    }
    let json = serde_json::json!({
        "smoke": smoke,
        "figures": figures.iter().map(|f| f.to_json(smoke)).collect::<Vec<_>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&json)?)?;
    println!("results written to {}", out.display());
    let missed = figures.iter().filter(|f| f.outcome() != Outcome::Met).count();
    let unmeasured: Vec<&str> = figures
        .iter()
        .filter(|f| f.outcome() == Outcome::NotMeasured)
        .map(|f| f.name.as_str())
        .collect();
    if smoke {
        println!(
            "smoke run: {} figures measured, targets not judged on smoke sizes",
            figures.len()
        );
    } else {
        println!(
            "{} figures, {} met, {} missed",
            figures.len(),
            figures.len() - missed,
            missed
        );
    }
    anyhow::ensure!(
        unmeasured.is_empty(),
        "{} figure(s) could not be measured: {}",
        unmeasured.len(),
        unmeasured.join(", ")
    );
    Ok(())
}
