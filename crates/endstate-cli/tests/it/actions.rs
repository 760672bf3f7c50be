//! Sanctioned actions end to end on `endstate dev`: the example's `flush-cache` runs on the three
//! real agents and flushes each memo instance through its admin client, with live output and
//! the whole run on the timeline; bad parameters are refused by field; `purge-web-cache` waits for
//! a second person with the approver role, and nobody approves their own run; a slow action
//! added to the spec is cancelled mid-run and its processes are killed on every host.

use std::path::Path;
use std::time::Duration;

use crate::hosts::{alive, pgrep};
use crate::{Process, repo_root, run, text};

fn as_token(token: &str, args: &[&str], config: &Path) -> std::process::Output {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    run(&all, config)
}

fn events(config: &Path, kind: &str) -> Vec<serde_json::Value> {
    let out = run(&["timeline", "-o", "json", "--limit", "1000", "--kind", kind], config);
    text(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>, explain: impl Fn() -> String) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        if let Some(found) = probe() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{what} did not happen:\n{}", explain());
}

fn create_token(config: &Path, name: &str, role: &str, systems: &str) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role];
    if !systems.is_empty() {
        args.extend(["--systems", systems]);
    }
    let out = run(&args, config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().last().unwrap().trim().to_owned()
}

fn run_view(config: &Path, id: &str) -> serde_json::Value {
    let out = run(&["runs", "--show", id, "-o", "json"], config);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn actions_run_through_the_agents_with_approval_refusals_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let data = dir.path().join("data");
    let mut dev = Process::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &config,
    );
    dev.wait_for_url("API:");
    dev.wait_for("examples:");
    wait_for(
        "the examples to converge",
        || (!events(&config, "change.converged").is_empty()).then_some(()),
        || text(&run(&["timeline", "--limit", "40"], &config).stdout),
    );

    // === a direct action on three real agents, live output, on the timeline ===
    let out = run(
        &[
            "run",
            "flush-cache",
            "--system",
            "cache",
            "-p",
            "scope=sessions",
            "--reason",
            "catalogue fix",
        ],
        &config,
    );
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    for host in ["dev-a", "dev-b", "dev-c"] {
        let line = shown
            .lines()
            .find(|l| l.starts_with(host) && l.contains("| flushed sessions on 127.0.0.1:"))
            .unwrap_or_else(|| panic!("no output line from {host}:\n{shown}"));
        assert!(line.contains("\"dropped\""), "{line}");
        assert!(
            shown.contains(&format!("{host:<16} = succeeded, exit code 0")),
            "{shown}"
        );
    }
    assert!(shown.contains("run-1 succeeded: 3 of 3 hosts succeeded"), "{shown}");
    let requested = events(&config, "action.requested");
    assert_eq!(requested.len(), 1, "{requested:#?}");
    assert_eq!(requested[0]["actor"], "admin");
    assert_eq!(requested[0]["data"]["params"]["scope"], "sessions");
    assert_eq!(requested[0]["data"]["reason"], "catalogue fix");
    let finished = events(&config, "action.host_finished");
    assert_eq!(finished.len(), 3, "{finished:#?}");
    for event in &finished {
        assert_eq!(event["data"]["state"], "succeeded", "{event:#}");
        assert!(event["actor"].as_str().unwrap().starts_with("agent:dev-"), "{event:#}");
        assert!(
            event["data"]["output"].as_str().unwrap().contains("flushed sessions"),
            "{event:#}"
        );
    }
    assert_eq!(events(&config, "action.finished")[0]["data"]["state"], "succeeded");
    // "Did someone just do that already?"
    let runs = text(&run(&["runs", "--system", "cache"], &config).stdout);
    assert!(
        runs.contains("run-1") && runs.contains("cache/flush-cache") && runs.contains("by admin \"catalogue fix\""),
        "{runs}"
    );

    // === bad input: refused by field, nothing runs ===
    for (args, expected) in [
        (vec!["-p", "scope=everything"], "params.scope"),
        (
            vec!["-p", "scope=all; touch /tmp/endstate-pwned"],
            "not one of all, sessions, catalog",
        ),
        (vec!["-p", "cmd=rm"], "not a parameter of flush-cache"),
        (vec!["--hosts", "dev-z"], "dev-z is not a host of cache/flush-cache"),
    ] {
        let mut all = vec!["run", "flush-cache", "--system", "cache"];
        all.extend(args);
        let out = run(&all, &config);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains(expected), "{all:?}: {}", text(&out.stderr));
    }
    let out = run(&["run", "reboot-everything", "--system", "cache"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("declares no action \"reboot-everything\"; it has flush-cache"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["run", "failover-db", "--system", "payments"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("escalate only"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("payments-oncall"), "{}", text(&out.stderr));
    assert_eq!(
        events(&config, "action.requested").len(),
        1,
        "a refused request is not a run"
    );

    // === approval by a second person with the approver role ===
    let alice = create_token(&config, "alice", "operator", "storefront");
    let bob = create_token(&config, "bob", "approver", "");
    let ask = |token: &str, ticket: &str| {
        as_token(
            token,
            &[
                "run",
                "purge-web-cache",
                "--system",
                "storefront",
                "-p",
                &format!("ticket={ticket}"),
                "--reason",
                "stale prices",
            ],
            &config,
        )
    };
    let out = ask(&alice, "OPS-1; rm -rf /");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not match the pattern"),
        "{}",
        text(&out.stderr)
    );
    let out = as_token(&alice, &["run", "flush-cache", "--system", "cache"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("only on systems storefront"),
        "{}",
        text(&out.stderr)
    );
    let out = ask(&alice, "OPS-7");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("run-2 of storefront/purge-web-cache awaits approval"),
        "{}",
        text(&out.stdout)
    );
    let out = ask(&bob, "OPS-8");
    assert_eq!(out.status.code(), Some(2), "not reentrant");
    assert!(
        text(&out.stderr).contains("run-2 of storefront/purge-web-cache (asked by alice) is awaiting approval"),
        "{}",
        text(&out.stderr)
    );
    let out = as_token(&alice, &["approve", "run-2"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("needs approver"), "{}", text(&out.stderr));
    assert_eq!(run_view(&config, "run-2")["state"], "awaiting_approval");
    let out = as_token(&bob, &["approve", "run-2", "--reason", "checked OPS-7"], &config);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}\n{}", text(&out.stderr));
    assert!(shown.contains("run-2 succeeded: 3 of 3 hosts succeeded"), "{shown}");
    let approved = events(&config, "action.approved");
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["actor"], "bob");
    assert_eq!(approved[0]["data"]["requested_by"], "alice");
    // Nobody approves their own run.
    let out = ask(&bob, "OPS-9");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = as_token(&bob, &["approve", "run-3"], &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("a second person must approve it"),
        "{}",
        text(&out.stderr)
    );
    let out = as_token(&bob, &["cancel", "run-3", "--reason", "wrong ticket"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run_view(&config, "run-3")["state"], "cancelled");

    // === cancelling mid-run kills the process groups on every host ===
    let spec = dir.path().join("spec");
    std::fs::create_dir_all(&spec).unwrap();
    for file in ["systems.yaml", "components.yaml", "operations.yaml"] {
        std::fs::copy(repo_root().join("examples").join(file), spec.join(file)).unwrap();
    }
    std::fs::write(
        spec.join("slow.yaml"),
        "apiVersion: endstate/v1\nkind: Action\nname: slow-report\nsystem: cache\ndescription: A long report.\n\
         parameters:\n  label: { type: string, default: \"it's $(id)\" }\n\
         command: [\"echo started {{ params.label }}; exec sleep 600\"]\nshell: true\n\
         targets: { component: memo }\nconcurrency: 3\ntimeout: 5m\nengagement: direct\n",
    )
    .unwrap();
    let out = run(&["apply", spec.to_str().unwrap(), "--yes"], &config);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let out = wait_for(
        "the new catalogue to reach the agents",
        || {
            let out = run(&["run", "slow-report", "--system", "cache", "--no-follow"], &config);
            out.status.success().then_some(out)
        },
        || text(&run(&["timeline", "--limit", "20"], &config).stdout),
    );
    let id = text(&out.stdout).split_whitespace().next().unwrap().to_owned();
    let view = wait_for(
        "the slow report to start on every host",
        || {
            let view = run_view(&config, &id);
            let hosts = view["hosts"].as_array()?;
            (hosts.len() == 3
                && hosts
                    .iter()
                    .all(|h| h["state"] == "running" && h["output"].as_str().unwrap_or_default().contains("started")))
            .then_some(view)
        },
        || format!("{:#}", run_view(&config, &id)),
    );
    // The value reached the shell quoted: printed as given, never run.
    assert!(
        view["hosts"][0]["output"]
            .as_str()
            .unwrap()
            .contains("started it's $(id)"),
        "{view:#}"
    );
    let sleepers: Vec<i32> = pgrep("sleep 600").into_iter().filter(|p| alive(*p)).collect();
    assert_eq!(sleepers.len(), 3, "{sleepers:?}");
    let out = run(&["cancel", &id, "--reason", "enough"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view = wait_for(
        "every host to report the cancellation",
        || {
            let view = run_view(&config, &id);
            view["hosts"]
                .as_array()?
                .iter()
                .all(|h| h["state"] == "cancelled")
                .then_some(view)
        },
        || format!("{:#}", run_view(&config, &id)),
    );
    assert_eq!(view["state"], "cancelled", "{view:#}");
    wait_for(
        "the sleeps to be killed",
        || sleepers.iter().all(|p| !alive(*p)).then_some(()),
        || format!("{sleepers:?}"),
    );
    assert!(
        events(&config, "action.cancelled")
            .iter()
            .any(|e| e["data"]["run"] == id.as_str() && e["data"]["reason"] == "enough")
    );
}
