//! Monitoring end to end: `endstate dev` runs the example checks through its real agents, among
//! them Debian's `check_http` plugin on every web instance; a web process that stops answering
//! raises an alert that shows in `endstate alerts`, on the timeline and at a webhook listener of
//! the test; acknowledged, then answering again, it is resolved.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::hosts::{alive, pgrep};
use crate::{Process, run, text};

const PLUGIN: &str = "/usr/lib/nagios/plugins/check_http";

/// Waits (at most 90 s) until `probe` returns `Some`.
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

fn events(config: &Path, kind: &str) -> Vec<serde_json::Value> {
    let mut args = vec!["timeline", "-o", "json", "--limit", "1000"];
    if !kind.is_empty() {
        args.extend(["--kind", kind]);
    }
    let out = run(&args, config);
    text(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[test]
fn a_stopped_service_raises_an_alert_seen_in_alerts_the_timeline_and_a_webhook_then_resolves() {
    assert!(
        Path::new(PLUGIN).exists(),
        "{PLUGIN} is missing: install Debian's monitoring-plugins (.ci/run does)"
    );
    let hook = endstate_testkit::webhook::Receiver::start();
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
            "--alert-webhook",
            &hook.url,
        ],
        &config,
    );
    dev.wait_for_url("API:");
    dev.wait_for("examples:");
    let target = "storefront/web#0@dev-a";
    let timeline = |kind: &str| format!("{:#?}", events(&config, kind));

    // The plugin runs on every web instance and finds it answering.
    wait_for(
        "check_http OK on dev-a's web instance",
        || {
            events(&config, "check.status").into_iter().find(|e| {
                e["data"]["check"] == "storefront/web-plugin"
                    && e["data"]["target"] == target
                    && e["data"]["to"] == "ok"
            })
        },
        || timeline("check."),
    );

    // The examples' first change must have converged: a web instance that stops answering
    // while it rolls out would (rightly) roll the change back instead.
    wait_for(
        "the examples' first change to converge",
        || (!events(&config, "change.converged").is_empty()).then_some(()),
        || timeline("change."),
    );

    // The other plugins run too: check_tcp and check_procs on every web instance, check_disk
    // on every host (its status depends on this machine's disk: only that it ran is checked).
    for (check, to, output) in [
        ("storefront/web-tcp", Some("ok"), "TCP OK"),
        ("storefront/web-procs", Some("ok"), "PROCS OK: 1 process"),
        ("platform/disk", None, "DISK "),
    ] {
        wait_for(
            &format!("{check} from its plugin"),
            || {
                events(&config, "check.status").into_iter().find(|e| {
                    e["data"]["check"] == check
                        && e["host"] == "dev-a"
                        && to.is_none_or(|to| e["data"]["to"] == to)
                        && e["data"]["message"].as_str().unwrap_or_default().starts_with(output)
                })
            },
            || timeline("check."),
        );
    }

    // Only what happens from now on counts (an instance checked before it listened may have
    // alerted and resolved already).
    let before = events(&config, "")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let after = |e: &serde_json::Value| e["seq"].as_u64().unwrap_or(0) > before;
    hook.clear();

    // dev-a's web process stops answering (SIGSTOP: the supervisor still sees it running).
    let pattern = format!("{}/agents/a/versions/storefront/web/", data.display());
    let pids: Vec<i32> = pgrep(&pattern).into_iter().filter(|p| alive(*p)).collect();
    assert_eq!(pids.len(), 1, "one web process on dev-a: {pids:?}");
    let web = Pid::from_raw(pids[0]);
    kill(web, Signal::SIGSTOP).unwrap();
    let opened = wait_for(
        "an alert for the stopped web instance",
        || {
            events(&config, "alert.opened").into_iter().find(|e| {
                after(e) && e["data"]["key"]["check"] == "storefront/web-plugin" && e["data"]["key"]["target"] == target
            })
        },
        || timeline("check.,alert."),
    );
    assert_eq!(opened["data"]["status"], "critical", "{opened:#}");
    assert_eq!(opened["host"], "dev-a", "{opened:#}");
    let message = opened["data"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("CRITICAL") || message.contains("timed out") || message.contains("Socket timeout"),
        "{message}"
    );
    // check_procs sees it stopped (state T, not S).
    let procs = wait_for(
        "check_procs to alert on the stopped process",
        || {
            events(&config, "alert.opened").into_iter().find(|e| {
                after(e) && e["data"]["key"]["check"] == "storefront/web-procs" && e["data"]["key"]["target"] == target
            })
        },
        || timeline("check.,alert."),
    );
    assert!(
        procs["data"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("PROCS CRITICAL: 0 processes with STATE = S"),
        "{procs:#}"
    );

    // It is listed, with the plugin's message, and the webhook got it.
    let alerts = run(&["alerts"], &config);
    let listed = text(&alerts.stdout);
    assert!(alerts.status.success(), "{}", text(&alerts.stderr));
    assert!(
        listed.contains("CRITICAL") && listed.contains(&format!("storefront/web-plugin on {target}")),
        "{listed}"
    );
    // It just happened: new, not chronic.
    assert!(listed.contains("[new, failing "), "{listed}");
    let notified = wait_for(
        "the webhook to receive the alert",
        || {
            hook.received()
                .into_iter()
                .find(|n| n["alert"]["key"]["target"] == target && n["alert"]["status"] == "critical")
        },
        || format!("{:#?}\n{}", hook.received(), timeline("alert.")),
    );
    assert_eq!(notified["kind"], "endstate.alert", "{notified:#}");
    assert_eq!(notified["history"]["label"], "new", "{notified:#}");
    assert!(
        events(&config, "alert.notified").iter().any(after),
        "{}",
        timeline("alert.")
    );

    // Someone takes it.
    let ack = run(
        &["ack", "storefront/web-plugin", target, "-m", "looking at dev-a"],
        &config,
    );
    assert!(ack.status.success(), "{}", text(&ack.stderr));
    let listed = text(&run(&["alerts"], &config).stdout);
    assert!(listed.contains("acked by admin: looking at dev-a"), "{listed}");
    // A note for whoever looks next, on every open alert of the system's web check.
    let noted = run(
        &[
            "annotate",
            "--check",
            "storefront/web-plugin",
            "-m",
            "SIGSTOPped on purpose",
        ],
        &config,
    );
    assert!(noted.status.success(), "{}", text(&noted.stderr));
    assert!(
        text(&noted.stdout).contains(&format!("storefront/web-plugin on {target}")),
        "{}",
        text(&noted.stdout)
    );
    let listed = text(&run(&["alerts"], &config).stdout);
    assert!(listed.contains("note by admin: SIGSTOPped on purpose"), "{listed}");
    let unfiltered = run(&["ack", "-m", "everything?"], &config);
    assert_eq!(unfiltered.status.code(), Some(2), "{}", text(&unfiltered.stderr));
    let missing = run(
        &["ack", "storefront/web-plugin", "storefront/web#9@dev-z", "-m", "x"],
        &config,
    );
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    assert!(
        text(&missing.stderr).contains("no open alert"),
        "{}",
        text(&missing.stderr)
    );

    // Answering again, it resolves, and the webhook hears that too.
    kill(web, Signal::SIGCONT).unwrap();
    wait_for(
        "the alert to resolve",
        || {
            events(&config, "alert.resolved")
                .into_iter()
                .find(|e| after(e) && e["data"]["key"]["target"] == target)
        },
        || timeline("check.,alert."),
    );
    wait_for(
        "the webhook to hear of the resolution",
        || {
            hook.received()
                .into_iter()
                .find(|n| n["alert"]["key"]["target"] == target && n["reason"] == "resolved")
        },
        || format!("{:#?}", hook.received()),
    );
    // check_procs resolves too, on its next run.
    wait_for(
        "every alert of the instance to resolve",
        || {
            let listed = text(&run(&["alerts"], &config).stdout);
            (!listed.contains(target)).then_some(())
        },
        || text(&run(&["alerts"], &config).stdout),
    );
    // The other web instances never alerted.
    let others: Vec<_> = events(&config, "alert.opened")
        .into_iter()
        .filter(|e| {
            after(e) && e["data"]["key"]["check"] == "storefront/web-plugin" && e["data"]["key"]["target"] != target
        })
        .collect();
    assert!(others.is_empty(), "{others:#?}");

    // A silence on dev-b: its web instance stops answering too, the alert opens, marked silenced,
    // and nobody is notified; the timeline says what was held back and why.
    let past = run(
        &[
            "silence",
            "--host",
            "dev-b",
            "--for",
            "2020-01-01T00:00:00Z",
            "--reason",
            "x",
        ],
        &config,
    );
    assert_eq!(past.status.code(), Some(2), "{}", text(&past.stderr));
    assert!(
        text(&past.stderr).contains("until: 2020-01-01T00:00:00Z is in the past"),
        "{}",
        text(&past.stderr)
    );
    let everything = run(&["silence", "--for", "1h", "--reason", "x"], &config);
    assert_eq!(everything.status.code(), Some(2), "a silence of everything is refused");
    let silence = run(
        &[
            "silence",
            "--system",
            "storefront",
            "--host",
            "dev-b",
            "--for",
            "10m",
            "--reason",
            "replacing dev-b's disk",
        ],
        &config,
    );
    assert!(silence.status.success(), "{}", text(&silence.stderr));
    let silences = text(&run(&["silences"], &config).stdout);
    assert!(
        silences.contains("host dev-b") && silences.contains("replacing dev-b's disk"),
        "{silences}"
    );
    hook.clear();
    let quiet_target = "storefront/web#0@dev-b";
    let pattern = format!("{}/agents/b/versions/storefront/web/", data.display());
    let pids: Vec<i32> = pgrep(&pattern).into_iter().filter(|p| alive(*p)).collect();
    assert_eq!(pids.len(), 1, "one web process on dev-b: {pids:?}");
    let quiet = Pid::from_raw(pids[0]);
    kill(quiet, Signal::SIGSTOP).unwrap();
    let suppressed = wait_for(
        "the silenced alert to be held back",
        || {
            events(&config, "alert.suppressed")
                .into_iter()
                .find(|e| after(e) && e["data"]["key"]["target"] == quiet_target)
        },
        || timeline("check.,alert.,silence."),
    );
    assert!(
        suppressed["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("replacing dev-b's disk"),
        "{suppressed:#}"
    );
    let listed = text(&run(&["alerts"], &config).stdout);
    assert!(listed.contains(quiet_target) && listed.contains("silenced"), "{listed}");
    kill(quiet, Signal::SIGCONT).unwrap();
    wait_for(
        "the silenced alert to resolve",
        || {
            events(&config, "alert.resolved")
                .into_iter()
                .find(|e| after(e) && e["data"]["key"]["target"] == quiet_target)
        },
        || timeline("check.,alert."),
    );
    let heard: Vec<_> = hook
        .received()
        .into_iter()
        .filter(|n| n["alert"]["key"]["target"] == quiet_target)
        .collect();
    assert!(heard.is_empty(), "a silenced alert notifies nobody: {heard:#?}");
    let id = serde_json::from_str::<serde_json::Value>(&text(&run(&["silences", "-o", "json"], &config).stdout))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let ended = run(&["unsilence", &id.to_string()], &config);
    assert!(ended.status.success(), "{}", text(&ended.stderr));
    assert!(text(&run(&["silences"], &config).stdout).contains("No active silences"));

    // The review of the last hour: what fired, who took it, how long it lasted.
    let review = run(&["review", "--since", "1h", "--system", "storefront"], &config);
    let report = text(&review.stdout);
    assert!(review.status.success(), "{}", text(&review.stderr));
    let line = report
        .lines()
        .find(|l| l.contains(&format!("storefront/web-plugin on {target}")) && l.contains("acked by admin"))
        .unwrap_or_else(|| panic!("dev-a's alert in the review:\n{report}"));
    assert!(line.contains("resolved after"), "{line}");
    assert!(
        report.contains(&format!(
            "storefront/web-plugin on {quiet_target}: never acked, resolved after"
        )),
        "{report}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&text(&run(&["review", "--since", "1h", "-o", "json"], &config).stdout)).unwrap();
    assert!(json["summary"]["acknowledged"].as_u64().unwrap_or(0) >= 1, "{json:#}");
    let reversed = run(&["review", "--since", "2999-01-01T00:00:00Z"], &config);
    assert_eq!(reversed.status.code(), Some(2));
    assert!(
        text(&reversed.stderr).contains("since: is not in the past"),
        "{}",
        text(&reversed.stderr)
    );
}
