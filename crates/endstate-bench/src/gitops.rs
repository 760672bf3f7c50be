//! GitOps through a real `endstate server` process and real repositories (Debian's `git`,
//! served over `file://`; the server fetches them with gix):
//! - a repository of 10,000 systems (one file each), a commit changing one: from `POST
//!   /v1/sources/NAME/sync` to its answer, the commit fetched, read, validated, composed,
//!   planned and stored as a revision with its change (target 1 s); and how many objects the
//!   revision changes (only the one system);
//! - 100 sources on one repository: fetches made by one trigger (target 1);
//! - a push to the revision and change stored, through the forge's signed webhook (target p99
//!   2 s; Argo CD polls every 3 minutes).

use std::time::Duration;

use endstate_api::{AddSource, SourceView};
use endstate_client::{Client, TimelineQuery};
use endstate_testkit::git::GitRepo;
use tokio::time::Instant;

use crate::agents::server::{ServerProc, ServerSpec, endstate_exe, log_tail};
use crate::figure::{Figure, Goal};

const SYNC_P50: &str = "gitops: commit touching 1 of 10,000 systems -> revision stored, p50";
const SYNC_MAX: &str = "gitops: commit touching 1 of 10,000 systems -> revision stored, max";
const PLANNED: &str = "gitops: objects changed by a commit touching 1 of 10,000 systems";
const FETCHES: &str = "gitops: fetches per trigger, 100 sources on one repository";
const HOOK_P99: &str = "gitops: push -> revision stored, through the webhook, p99";

struct Sizes {
    systems: usize,
    commits: usize,
    sources: usize,
    pushes: usize,
}

fn expected() -> [(&'static str, &'static str, f64); 5] {
    [
        (SYNC_P50, "ms", 1000.0),
        (SYNC_MAX, "ms", 1000.0),
        (PLANNED, "objects", 1.0),
        (FETCHES, "fetches", 1.0),
        (HOOK_P99, "ms", 2000.0),
    ]
}

/// Runs the benchmarks; a figure it could not measure is reported as not measured.
pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let sizes = if smoke {
        Sizes {
            systems: 200,
            commits: 3,
            sources: 10,
            pushes: 3,
        }
    } else {
        Sizes {
            systems: 10_000,
            commits: 20,
            sources: 100,
            pushes: 50,
        }
    };
    let mut figures = Vec::new();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(measure(&sizes, &mut figures)));
    let reason = match outcome {
        Ok(()) => "the benchmark ended before measuring it".to_owned(),
        Err(error) => {
            eprintln!("gitops: {error:#}");
            format!("{error:#}")
        }
    };
    for (name, unit, target) in expected() {
        if !figures.iter().any(|f| f.name == name) {
            figures.push(Figure::not_measured(
                name.to_owned(),
                unit,
                target,
                Goal::AtMost,
                reason.clone(),
            ));
        }
    }
    Ok(figures)
}

fn system(name: &str, description: &str) -> String {
    format!("apiVersion: endstate/v1\nkind: System\nname: {name}\ndescription: {description}\nowners: [team-{name}]\n")
}

fn source(name: &str, repo: &GitRepo, paths: Vec<String>, secret_file: Option<String>) -> AddSource {
    AddSource {
        name: name.to_owned(),
        repository: repo.url(),
        branch: Some("main".into()),
        paths,
        // Only the benchmark's triggers fetch.
        interval: Some("1h".into()),
        credentials_file: None,
        webhook_secret_file: secret_file,
    }
}

async fn measure(sizes: &Sizes, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ServerSpec::local(&endstate_exe()?, dir.path().join("server"));
    let mut server = ServerProc::start(&spec).await?;
    let result = async {
        let admin = server
            .admin_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the server printed no admin token"))?;
        let client = Client::new(&server.http, &admin)?;
        many_systems(&client, sizes, figures).await?;
        many_sources(&client, sizes, figures).await?;
        webhook(&client, &server, dir.path(), sizes, figures).await
    }
    .await;
    if result.is_err() {
        eprintln!(
            "gitops: server log tail:\n{}",
            log_tail(&spec.data_dir.join("server.log"), 20)
        );
    }
    server.stop(Duration::from_secs(5)).await;
    result
}

/// Percentile by nearest rank of sorted samples.
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(idx).copied().unwrap_or(f64::NAN)
}

async fn many_systems(client: &Client, sizes: &Sizes, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let repo = GitRepo::new();
    for i in 0..sizes.systems {
        let name = format!("s{i:05}");
        repo.write(&format!("systems/{name}.yaml"), &system(&name, "version 0"));
    }
    repo.commit_and_push("10,000 systems");
    client
        .add_source(&source("many", &repo, vec!["systems".into()], None))
        .await?;
    let first = client.sync_source("many").await?;
    anyhow::ensure!(
        first.systems.len() == sizes.systems && first.problems.is_empty() && first.error.is_none(),
        "the first commit was not applied: {first:?}"
    );
    let mut took = Vec::new();
    let mut objects = Vec::new();
    for n in 1..=sizes.commits {
        let name = format!("s{:05}", (n * 7919) % sizes.systems);
        repo.write(&format!("systems/{name}.yaml"), &system(&name, &format!("version {n}")));
        let commit = repo.commit_and_push(&format!("{name}: version {n}"));
        let started = Instant::now();
        let view = client.sync_source("many").await?;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            view.latest.as_deref() == Some(commit.as_str()),
            "commit {n} was not applied: {view:?}"
        );
        // What the revision changes, from its `revision.submitted` event.
        let submitted = client
            .timeline(&TimelineQuery {
                kind: Some("revision.submitted".into()),
                limit: Some(1),
                ..TimelineQuery::default()
            })
            .await?;
        let changed = submitted
            .items
            .first()
            .and_then(|e| e.data.get("objects"))
            .and_then(|o| o.as_array())
            .map_or(usize::MAX, Vec::len);
        objects.push(changed as f64);
    }
    let n = took.len();
    let p50 = percentile(&mut took, 0.5);
    let max = percentile(&mut took, 1.0);
    let detail = format!(
        "{n} commits, each changing the description of one of {} systems (one file each under systems/), \
         synced by POST /v1/sources/many/sync: fetch (gix, file://), read every spec file at the commit, \
         validate, compose, plan and store the revision and its change, on a real server process",
        sizes.systems
    );
    figures.push(Figure {
        name: SYNC_P50.to_owned(),
        value: p50,
        unit: "ms",
        target: 1000.0,
        goal: Goal::AtMost,
        detail: detail.clone(),
    });
    figures.push(Figure {
        name: SYNC_MAX.to_owned(),
        value: max,
        unit: "ms",
        target: 1000.0,
        goal: Goal::AtMost,
        detail,
    });
    figures.push(Figure {
        name: PLANNED.to_owned(),
        value: objects.iter().copied().fold(0.0, f64::max),
        unit: "objects",
        target: 1.0,
        goal: Goal::AtMost,
        detail: format!("the most objects any of the {n} revisions changed (its revision.submitted event's objects)"),
    });
    Ok(())
}

async fn many_sources(client: &Client, sizes: &Sizes, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let repo = GitRepo::new();
    for i in 0..sizes.sources {
        repo.write(
            &format!("teams/t{i:03}/system.yaml"),
            &system(&format!("team{i:03}"), "one"),
        );
    }
    repo.commit_and_push("one system per team");
    // Each added and synced in turn: one revision each (a sync serves every source of the
    // repository, the ones added before see nothing new).
    for i in 0..sizes.sources {
        let name = format!("t{i:03}");
        client
            .add_source(&source(&name, &repo, vec![format!("teams/t{i:03}")], None))
            .await?;
        client.sync_source(&name).await?;
    }
    let before = client.source("t000").await?.fetches;
    repo.write("teams/t000/system.yaml", &system("team000", "two"));
    let commit = repo.commit_and_push("team000: two");
    let after: SourceView = client.sync_source("t000").await?;
    anyhow::ensure!(
        after.latest.as_deref() == Some(commit.as_str()),
        "the commit was not applied: {after:?}"
    );
    let all = client.sources().await?;
    let handled = all
        .iter()
        .filter(|s| s.name.starts_with('t') && s.handled.as_deref() == Some(commit.as_str()))
        .count();
    anyhow::ensure!(
        handled == sizes.sources,
        "{handled} of {} sources handled the commit of the one fetch",
        sizes.sources
    );
    figures.push(Figure {
        name: FETCHES.to_owned(),
        value: (after.fetches - before) as f64,
        unit: "fetches",
        target: 1.0,
        goal: Goal::AtMost,
        detail: format!(
            "{} sources on one repository, each on its own directory; one sync: fetches of the repository counted \
             by the server (GET /v1/sources), and all {} sources handled the new head",
            sizes.sources, sizes.sources
        ),
    });
    Ok(())
}

async fn webhook(
    client: &Client,
    server: &ServerProc,
    dir: &std::path::Path,
    sizes: &Sizes,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let repo = GitRepo::new();
    repo.write("shop/system.yaml", &system("shop", "version 0"));
    repo.commit_and_push("shop");
    let secret = b"bench-webhook-secret";
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, secret)?;
    client
        .add_source(&source(
            "hooked",
            &repo,
            vec!["shop".into()],
            Some(secret_file.display().to_string()),
        ))
        .await?;
    client.sync_source("hooked").await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sources/hooked/hook", server.http);
    let mut took = Vec::new();
    for n in 1..=sizes.pushes {
        repo.write("shop/system.yaml", &system("shop", &format!("version {n}")));
        let commit = repo.commit("shop: next version");
        let body = format!(r#"{{"ref":"refs/heads/main","after":"{commit}"}}"#);
        repo.push(false);
        // From the push done (the forge sends its hook then) to the revision stored.
        let started = Instant::now();
        let answer = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-delivery", format!("bench-{n}"))
            .header("x-hub-signature-256", github_signature(secret, body.as_bytes()))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(answer.status() == 202, "the webhook was refused: {}", answer.status());
        loop {
            let view = client.source("hooked").await?;
            if view.latest.as_deref() == Some(commit.as_str()) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "push {n} was not applied in 30 s: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let n = took.len();
    let p50 = percentile(&mut took, 0.5);
    figures.push(Figure {
        name: HOOK_P99.to_owned(),
        value: percentile(&mut took, 0.99),
        unit: "ms",
        target: 2000.0,
        goal: Goal::AtMost,
        detail: format!(
            "{n} pushes, each followed by a GitHub-signed POST /v1/sources/hooked/hook; until GET /v1/sources/hooked \
             names the commit in the latest revision (polled every 5 ms); p50 {p50:.1} ms; nearest rank (20 or \
             fewer: the max); on the server of the figures above, so each revision composes and plans the \
             whole desired state ({} systems besides this one); the change's first wave needs agents and is \
             not in this figure",
            sizes.systems + sizes.sources
        ),
    });
    Ok(())
}

fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}
