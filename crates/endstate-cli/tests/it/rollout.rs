//! Rollouts end to end: `endstate dev` (a server and three real agents in zones a, b and c running
//! the example service), then `endstate apply` of a good version and of a bad one.

use std::path::Path;
use std::time::Duration;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Process, repo_root, run, text};

/// Starts `endstate dev` in `dir` (with `extra` flags) and waits until its first change converged.
fn dev(dir: &Path, extra: &[&str]) -> Process {
    let config = dir.join("config.json");
    let data = dir.join("data");
    let mut args = vec![
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut dev = Process::spawn(&args, &config);
    dev.wait_for_url("API:");
    dev.wait_for("examples:");
    wait_for_event(
        &config,
        "change.converged",
        "8 instances running and healthy at revision 1",
    );
    dev
}

/// Waits (at most 120 s) until the timeline has an event of `kind` whose text contains `needle`.
fn wait_for_event(config: &Path, kind: &str, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let out = run(&["timeline", "--kind", kind, "-o", "json", "--limit", "100"], config);
        last = text(&out.stdout);
        if last.contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let timeline = text(&run(&["timeline", "--limit", "60"], config).stdout);
    panic!("no {kind} event with {needle:?}; last: {last}\ntimeline:\n{timeline}");
}

/// A copy of the example spec with storefront/web at `version`.
fn spec_with_web_version(dir: &Path, version: &str) -> std::path::PathBuf {
    let spec = dir.join(format!("spec-{version}"));
    std::fs::create_dir_all(&spec).unwrap();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let mut body = std::fs::read_to_string(&path).unwrap();
        if path.file_name().unwrap() == "components.yaml" {
            // The first component of the file is storefront/web.
            body = body.replacen("version: \"1.0.0\"", &format!("version: \"{version}\""), 1);
        }
        std::fs::write(spec.join(path.file_name().unwrap()), body).unwrap();
    }
    spec
}

/// The change's events of these kinds, oldest first.
fn change_events(config: &Path, change: u64, kinds: &str) -> Vec<serde_json::Value> {
    let out = run(&["timeline", "--kind", kinds, "-o", "json", "--limit", "1000"], config);
    let mut events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["change"].as_u64() == Some(change))
        .collect();
    events.sort_by_key(|e| e["seq"].as_u64());
    events
}

fn web_instances(config: &Path) -> Vec<(String, String, String)> {
    let described: serde_json::Value =
        serde_json::from_str(&text(&run(&["describe", "storefront", "-o", "json"], config).stdout)).unwrap();
    let mut out = Vec::new();
    for component in described["components"].as_array().into_iter().flatten() {
        if component["key"].as_str() != Some("storefront/web") {
            continue;
        }
        for instance in component["instances"].as_array().into_iter().flatten() {
            out.push((
                instance["host"].as_str().unwrap_or_default().to_owned(),
                instance["actual_version"].as_str().unwrap_or_default().to_owned(),
                instance["status"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_good_version_rolls_out_by_zone_a_bad_one_rolls_back_and_a_freeze_holds_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let _dev = dev(dir.path(), &[]);

    // The plan shows the waves: the canary in zone a, then zone b, then zone c.
    let good = spec_with_web_version(dir.path(), "1.1.0");
    let plan = run(&["plan", good.to_str().unwrap()], &config);
    let plan_text = text(&plan.stdout);
    assert!(plan.status.success(), "{plan_text}{}", text(&plan.stderr));
    assert!(plan_text.contains("Waves:"), "{plan_text}");

    // A good version: canary, then one zone at a time, converged.
    let apply = run(
        &[
            "apply",
            good.to_str().unwrap(),
            "--yes",
            "--timeout",
            "180s",
            "-m",
            "web 1.1.0",
        ],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert!(apply.status.success(), "apply of a good version failed:\n{output}");
    assert!(output.contains("converged"), "{output}");
    let started = change_events(&config, 2, "change.wave_started");
    let domains: Vec<String> = started
        .iter()
        .map(|e| e["summary"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        started.len(),
        3,
        "three waves for three instances:\n{domains:#?}\n{output}"
    );
    for (event, zone) in started.iter().zip(["zone=a", "zone=b", "zone=c"]) {
        let summary = event["summary"].as_str().unwrap_or_default();
        assert!(
            summary.contains(zone),
            "waves go one zone at a time, a first: {domains:#?}"
        );
    }
    assert!(
        domains[0].contains("canary"),
        "the first wave is the canary: {domains:#?}"
    );
    // Every wave was allowed by a decision, written before it started.
    let decisions = change_events(&config, 2, "decision.");
    assert!(
        decisions.iter().filter(|d| d["kind"] == "decision.allow").count() >= 4,
        "an allow before each of 3 waves and one to converge: {decisions:#?}"
    );
    assert_eq!(
        web_instances(&config),
        [
            ("dev-a".into(), "1.1.0".into(), "healthy".into()),
            ("dev-b".into(), "1.1.0".into(), "healthy".into()),
            ("dev-c".into(), "1.1.0".into(), "healthy".into()),
        ]
    );

    // A version whose health check fails: the canary goes bad, the change rolls back by itself
    // and never starts a second wave.
    let bad = spec_with_web_version(dir.path(), "1.2.0-bad-health");
    let apply = run(
        &[
            "apply",
            bad.to_str().unwrap(),
            "--yes",
            "--timeout",
            "180s",
            "-m",
            "web 1.2.0",
        ],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert_eq!(
        apply.status.code(),
        Some(1),
        "a rolled-back change fails apply:\n{output}"
    );
    assert!(output.contains("rolled_back"), "{output}");
    let started = change_events(&config, 3, "change.wave_started");
    assert_eq!(started.len(), 1, "only the canary started: {started:#?}");
    let rollback = change_events(&config, 3, "decision.rollback");
    assert_eq!(rollback.len(), 1, "{rollback:#?}");
    let findings = rollback[0]["data"]["findings"].to_string();
    assert!(
        findings.contains("health") && findings.contains("storefront/web#0"),
        "the decision names the failing canary: {findings}"
    );
    let ended = change_events(&config, 3, "change.rolled_back");
    assert_eq!(ended.len(), 1, "{ended:#?}");
    // Back where it was: every web instance at 1.1.0 and healthy.
    assert_eq!(
        web_instances(&config),
        [
            ("dev-a".into(), "1.1.0".into(), "healthy".into()),
            ("dev-b".into(), "1.1.0".into(), "healthy".into()),
            ("dev-c".into(), "1.1.0".into(), "healthy".into()),
        ]
    );
    // Status says what is in force and what was rolled back, and the fleet is healthy at it:
    // not "pending: runs 1.1.0 instead of 1.2.0-bad-health" forever.
    let status = run(&["status"], &config);
    let status = text(&status.stdout);
    let first = status.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("revision 3 rolled back at ") && first.contains("; revision 2 in force (change 2, since "),
        "{status}"
    );
    assert!(status.contains("storefront/web 1.1.0 (3/3 ready)  healthy"), "{status}");
    assert!(!status.contains("pending"), "{status}");

    // The 3 a.m. questions about the canary that went bad: did it just happen, and what changed
    // right before? The failed rollout is the first suspect, with its reason.
    let canary = "storefront/web#0@dev-a";
    let history = run(&["history", canary, "-o", "json"], &config);
    assert!(history.status.success(), "{}", text(&history.stderr));
    let history: serde_json::Value = serde_json::from_str(&text(&history.stdout)).unwrap();
    assert!(
        history["first_failed"].is_string(),
        "the canary failed today: {history:#}"
    );
    assert_eq!(history["failing"], false, "and was rolled back: {history:#}");
    let why = run(&["why", canary, "-o", "json"], &config);
    assert!(why.status.success(), "{}", text(&why.stderr));
    let why: serde_json::Value = serde_json::from_str(&text(&why.stdout)).unwrap();
    // The moment explained is the start of its latest failure (the canary may fail again while
    // the rollback replaces it), never before its first.
    let (at, first) = (
        why["at"].as_str().unwrap_or_default(),
        history["first_failed"].as_str().unwrap_or_default(),
    );
    assert!(
        !first.is_empty() && at >= first,
        "why explains a moment it failed: {why:#}\n{history:#}"
    );
    assert!(
        why["at_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("recovered since"),
        "{why:#}"
    );
    let first = &why["suspects"][0];
    assert_eq!(first["change"], 3, "the bad rollout comes first: {why:#}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("change 3, in progress then ("),
        "{why:#}"
    );
    let good = why["suspects"].as_array().unwrap().iter().find(|s| s["change"] == 2);
    assert!(
        good.is_some_and(|s| s["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("change 2, ended before")),
        "the earlier good rollout is listed too, lower: {why:#}"
    );
    let shown = text(&run(&["why", canary], &config).stdout);
    assert!(
        shown.contains("when it last turned unhealthy") && shown.contains("   1. ["),
        "{shown}"
    );
    // The system: when something in it last turned bad, the same rollout first.
    let system = run(&["why", "storefront", "-o", "json"], &config);
    let system: serde_json::Value = serde_json::from_str(&text(&system.stdout)).unwrap();
    assert_eq!(system["kind"], "system", "{system:#}");
    assert!(
        system["suspects"].as_array().unwrap().iter().any(|s| s["change"] == 3),
        "{system:#}"
    );

    // A freeze window holds the next change before its first wave and says why; a person
    // pauses, resumes and aborts it, each on the timeline with who did it.
    let frozen = spec_with_web_version(dir.path(), "1.3.0");
    std::fs::write(
        frozen.join("freeze.yaml"),
        "apiVersion: endstate/v1\nkind: Policy\nname: incident-freeze\napplies_to:\n  systems: [storefront]\nrules:\n  freeze_windows:\n    - cron: \"* * * * *\"\n      duration: 1h\n      reason: incident INC-7 in progress\n",
    )
    .unwrap();
    let apply = run(
        &["apply", frozen.to_str().unwrap(), "--yes", "--timeout", "4s"],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert_eq!(apply.status.code(), Some(3), "a frozen change is still open:\n{output}");
    assert!(
        output.contains("freeze window of policy incident-freeze") && output.contains("INC-7"),
        "apply says which window holds it and why:\n{output}"
    );
    let pause = run(&["change", "pause", "4", "--reason", "looking at INC-7"], &config);
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    assert!(
        text(&pause.stdout).contains("paused by admin: looking at INC-7"),
        "{}",
        text(&pause.stdout)
    );
    let again = run(&["change", "pause", "4"], &config);
    assert_eq!(again.status.code(), Some(2), "pausing twice is refused");
    assert!(
        text(&again.stderr).contains("already paused"),
        "{}",
        text(&again.stderr)
    );
    let resume = run(&["change", "resume", "4"], &config);
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    let abort = run(&["change", "abort", "4", "--reason", "after the incident"], &config);
    assert!(abort.status.success(), "{}", text(&abort.stderr));
    let aborted = text(&abort.stdout);
    assert!(
        aborted.contains("rolled_back") && aborted.contains("no wave had started"),
        "{aborted}"
    );
    assert!(
        change_events(&config, 4, "change.wave_started").is_empty(),
        "the freeze held every wave"
    );
    let kinds: Vec<String> = change_events(&config, 4, "change.")
        .iter()
        .map(|e| {
            format!(
                "{} by {}",
                e["kind"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default()
            )
        })
        .collect();
    for expected in [
        "change.paused by admin",
        "change.resumed by admin",
        "change.rolled_back by admin",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "{expected} missing: {kinds:#?}");
    }
    let decided = change_events(&config, 4, "decision.wait");
    assert!(
        decided
            .iter()
            .any(|d| d["data"]["findings"].to_string().contains("incident INC-7 in progress")),
        "{decided:#?}"
    );
    let refused = run(&["change", "resume", "4"], &config);
    assert_eq!(refused.status.code(), Some(2), "an ended change cannot be resumed");
}

/// The web and memo instances per host, as `describe` has them: (host, component, version).
fn placed(config: &Path) -> Vec<(String, String, String)> {
    let described: serde_json::Value =
        serde_json::from_str(&text(&run(&["describe", "storefront", "-o", "json"], config).stdout)).unwrap();
    let mut out = Vec::new();
    for component in described["components"].as_array().into_iter().flatten() {
        for instance in component["instances"].as_array().into_iter().flatten() {
            out.push((
                instance["host"].as_str().unwrap_or_default().to_owned(),
                component["key"].as_str().unwrap_or_default().to_owned(),
                instance["actual_version"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_targeted_change_holds_after_its_hosts_and_a_retired_host_is_drained_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let _dev = dev(dir.path(), &[]);

    // Only dev-b first: its waves, then the change holds for a person.
    let good = spec_with_web_version(dir.path(), "1.1.0");
    let apply = run(
        &[
            "apply",
            good.to_str().unwrap(),
            "--yes",
            "--target",
            "dev-b",
            "--timeout",
            "120s",
        ],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert_eq!(apply.status.code(), Some(3), "a held change is still open:\n{output}");
    assert!(
        output.contains("-- hold: the targeted hosts are done"),
        "the plan shows the hold:\n{output}"
    );
    assert!(
        output.contains("holding after the targeted hosts (dev-b)"),
        "apply says why it stopped following:\n{output}"
    );
    assert_eq!(
        web_instances(&config),
        [
            ("dev-a".into(), "1.0.0".into(), "healthy".into()),
            ("dev-b".into(), "1.1.0".into(), "healthy".into()),
            ("dev-c".into(), "1.0.0".into(), "healthy".into()),
        ],
        "only the targeted host changed"
    );
    let resume = run(&["change", "resume", "2", "--reason", "dev-b looks fine"], &config);
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    wait_for_event(&config, "change.converged", "at revision 2 after");
    assert!(web_instances(&config).iter().all(|(_, version, _)| version == "1.1.0"));

    // Retire dev-c: its instances start elsewhere, then stop on it; it stays empty afterwards.
    let before = placed(&config);
    assert!(before.iter().any(|(host, _, _)| host == "dev-c"), "{before:#?}");
    let plan = run(&["plan", good.to_str().unwrap(), "--retire", "dev-c"], &config);
    let plan_text = text(&plan.stdout);
    assert!(plan.status.success(), "{plan_text}{}", text(&plan.stderr));
    assert!(plan_text.contains("on retired host dev-c"), "{plan_text}");
    let apply = run(
        &[
            "apply",
            good.to_str().unwrap(),
            "--yes",
            "--retire",
            "dev-c",
            "--timeout",
            "120s",
            "-m",
            "drain dev-c",
        ],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert!(apply.status.success(), "retiring dev-c failed:\n{output}");
    let after = placed(&config);
    assert!(after.iter().all(|(host, _, _)| host != "dev-c"), "{after:#?}");
    assert_eq!(
        after.iter().filter(|(_, c, _)| c == "storefront/web").count(),
        3,
        "web keeps its three instances, on the two other hosts: {after:#?}"
    );
    wait_for_event(&config, "host.retired", "host dev-c retired by change 3");
    // The retirement lasts: planning the same state again changes nothing, and naming the
    // retired host is refused with the field it is in.
    let again = run(&["plan", good.to_str().unwrap()], &config);
    assert!(text(&again.stdout).contains("No changes"), "{}", text(&again.stdout));
    let refused = run(&["plan", good.to_str().unwrap(), "--host-group", "dev-c"], &config);
    assert_ne!(refused.status.code(), Some(0));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("options.host_groups[0][0]") && stderr.contains("no host named \"dev-c\" is in service"),
        "{stderr}"
    );

    // Targeted scaling: one component, a new revision that only moves it.
    let zero = run(&["scale", "storefront/web", "0"], &config);
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero.stderr));
    assert!(text(&zero.stderr).contains("count: is 0"), "{}", text(&zero.stderr));
    let unknown = run(&["scale", "storefront/nope", "2"], &config);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));
    assert!(text(&unknown.stderr).contains("\"storefront/nope\" is not in the latest revision"));
    let scale = run(&["scale", "storefront/web", "4", "--reason", "more traffic"], &config);
    assert!(scale.status.success(), "{}{}", text(&scale.stdout), text(&scale.stderr));
    wait_for_event(&config, "change.converged", "at revision 4 after");
    let after = placed(&config);
    assert_eq!(
        after.iter().filter(|(_, c, _)| c == "storefront/web").count(),
        4,
        "{after:#?}"
    );
    let submitted = text(&run(&["timeline", "--kind", "revision.submitted", "-o", "json"], &config).stdout);
    assert!(
        submitted.contains("scale storefront/web from 3 to 4 in total (on revision 3) by admin: more traffic"),
        "{submitted}"
    );
}

/// A GET over HTTP/1.0 on loopback: the status and the body.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Kills the process when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The components file of the examples with storefront/web at `version`, gated on its error rate
/// as Prometheus measures it, each wave held 8 s so the canary's errors are scraped in time.
fn gated_spec(dir: &Path, version: &str) -> std::path::PathBuf {
    let spec = spec_with_web_version(dir, &format!("gated-{version}"));
    let components = spec.join("components.yaml");
    let body = std::fs::read_to_string(&components)
        .unwrap()
        .replacen("version: \"gated-", "version: \"", 1)
        .replacen("  min_healthy_time: 3s\n", "  min_healthy_time: 8s\n", 1)
        .replacen(
            "depends_on: [cache/memo]\n",
            "depends_on: [cache/memo]\ngates:\n  - name: error-rate\n    prometheus: '(sum(rate(example_requests_total{endstate_component=\"storefront/web\",code=\"500\"}[5s])) or vector(0)) / sum(rate(example_requests_total{endstate_component=\"storefront/web\"}[5s]))'\n    max: 0.1\n  - name: canary-errors\n    prometheus: 'sum(rate(example_requests_total{endstate_component=\"storefront/web\",endstate_version=\"{{ version }}\",code=\"500\"}[5s])) or vector(0)'\n    max_ratio_to_baseline: 2\n",
            1,
        );
    assert!(
        body.contains("error-rate") && body.contains(&format!("\"{version}\"")),
        "{body}"
    );
    std::fs::write(&components, body).unwrap();
    spec
}

#[test]
fn a_raised_error_rate_measured_by_a_real_prometheus_trips_the_gate_and_rolls_back() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("Prometheus is missing: install Debian's `prometheus` package (.ci/run does)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let prom_addr = format!("127.0.0.1:{}", crate::hosts::free_port("127.0.0.1"));
    let prom_url = format!("http://{prom_addr}");
    // The API over plain HTTP on loopback: this test speaks raw HTTP to it, and so does Prometheus.
    let _dev = dev(dir.path(), &["--prometheus-url", &prom_url, "--insecure-http"]);
    let client: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let api = client["server"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let token = client["token"].as_str().unwrap().to_owned();

    // A real Prometheus on a free port, discovering every instance through endstate. (Debian's
    // Prometheus 2.42 sends the credentials without a scheme unless `type: Bearer` is given.)
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: endstate\n    http_sd_configs:\n      - url: http://{api}/v1/prometheus/targets\n        refresh_interval: 1s\n        authorization:\n          type: Bearer\n          credentials: {token}\n"
        ),
    )
    .unwrap();
    let _prometheus = Guard(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(&prom_addr, "/-/ready", None).map(|(code, _)| code).ok() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not start: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Endstate's discovery lists the nine running instances.
    let (code, targets) = http_get(&api, "/v1/prometheus/targets", Some(&token)).unwrap();
    assert_eq!(code, 200, "{targets}");
    let groups: Vec<serde_json::Value> = serde_json::from_str(&targets).unwrap();
    assert_eq!(groups.len(), 8, "{targets}");

    // Traffic on every storefront/web instance, as discovery finds them, until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, api, token) = (Arc::clone(&stop), api.clone(), token.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((200, body)) = http_get(&api, "/v1/prometheus/targets", Some(&token)) else {
                    continue;
                };
                let groups: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
                for group in groups
                    .iter()
                    .filter(|g| g["labels"]["endstate_component"] == "storefront/web")
                {
                    if let Some(target) = group["targets"][0].as_str() {
                        for _ in 0..5 {
                            let _ = http_get(target, "/work", None);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // A good version passes its gate, read from Prometheus.
    let good = gated_spec(dir.path(), "1.1.0");
    let apply = run(
        &["apply", good.to_str().unwrap(), "--yes", "--timeout", "240s"],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert!(apply.status.success(), "a good version converges:\n{output}");
    let allowed = change_events(&config, 2, "decision.allow");
    assert!(
        allowed.iter().any(|d| {
            d["data"]["findings"].as_array().into_iter().flatten().any(|f| {
                f["rule"] == "gate:storefront/web:error-rate"
                    && f["ok"] == true
                    && f["message"].as_str().unwrap_or_default().contains("<= max 0.1")
            })
        }),
        "the gate was read and passed: {allowed:#?}"
    );
    assert!(
        allowed.iter().any(|d| {
            d["data"]["findings"].as_array().into_iter().flatten().any(|f| {
                f["rule"] == "gate:storefront/web:canary-errors"
                    && f["ok"] == true
                    && f["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("endstate_version=\"1.1.0\"")
            })
        }),
        "the canary was compared with the baseline and passed: {allowed:#?}"
    );

    // A version that answers 500: the canary raises the error rate, the gate trips, it rolls back.
    let bad = gated_spec(dir.path(), "1.2.0-errors");
    let apply = run(&["apply", bad.to_str().unwrap(), "--yes", "--timeout", "240s"], &config);
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    assert_eq!(apply.status.code(), Some(1), "the change is rolled back:\n{output}");
    assert!(output.contains("rolled_back"), "{output}");
    let rollback = change_events(&config, 3, "decision.rollback");
    assert_eq!(rollback.len(), 1, "{rollback:#?}\n{output}");
    let tripped = rollback[0]["data"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["rule"] == "gate:storefront/web:error-rate" && f["ok"] == false)
        .unwrap_or_else(|| panic!("the gate decided: {:#?}", rollback[0]["data"]["findings"]));
    assert!(
        tripped["message"].as_str().unwrap_or_default().contains("> max 0.1"),
        "{tripped}"
    );
    // Canary against baseline: the new version's errors against the version in force's.
    let compared = rollback[0]["data"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["rule"] == "gate:storefront/web:canary-errors")
        .unwrap_or_else(|| panic!("the baseline gate decided: {:#?}", rollback[0]["data"]["findings"]));
    let message = compared["message"].as_str().unwrap_or_default();
    assert!(
        compared["ok"] == false && message.contains("2 × baseline") && message.contains("1.2.0-errors"),
        "{compared}"
    );
    assert_eq!(
        change_events(&config, 3, "change.wave_started").len(),
        1,
        "only the canary started"
    );
    assert_eq!(
        web_instances(&config),
        [
            ("dev-a".into(), "1.1.0".into(), "healthy".into()),
            ("dev-b".into(), "1.1.0".into(), "healthy".into()),
            ("dev-c".into(), "1.1.0".into(), "healthy".into()),
        ]
    );
}

/// The examples with storefront/web at `version`, gated on a monitoring plugin: Debian's
/// `check_http` on every web instance's `/work` (the traffic path), run by the agents every
/// second; the gate allows no instance whose latest result is not OK. Each wave is held 6 s so
/// the canary is checked a few times.
fn check_gated_spec(dir: &Path, version: &str) -> std::path::PathBuf {
    let spec = spec_with_web_version(dir, &format!("checked-{version}"));
    let components = spec.join("components.yaml");
    let body = std::fs::read_to_string(&components)
        .unwrap()
        .replacen("version: \"checked-", "version: \"", 1)
        .replacen("  min_healthy_time: 3s\n", "  min_healthy_time: 6s\n", 1)
        .replacen(
            "depends_on: [cache/memo]\n",
            "depends_on: [cache/memo]\ngates:\n  - name: work-answers\n    check: web-work\n",
            1,
        );
    assert!(body.contains("work-answers"), "{body}");
    std::fs::write(&components, body).unwrap();
    let operations = spec.join("operations.yaml");
    let mut body = std::fs::read_to_string(&operations).unwrap();
    body.push_str(
        "---\napiVersion: endstate/v1\nkind: Check\nname: web-work\nsystem: storefront\nexec:\n  command: /usr/lib/nagios/plugins/check_http\n  args: [-H, 127.0.0.1, -p, \"{{ ports.http }}\", -u, /work, -t, \"1\"]\ninterval: 1s\ntimeout: 1s\ntargets: { component: web }\n",
    );
    std::fs::write(&operations, body).unwrap();
    spec
}

#[test]
fn a_check_gate_on_a_monitoring_plugin_rolls_back_a_version_that_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let _dev = dev(dir.path(), &[]);

    // A good version passes: the plugin finds /work answering on every instance.
    let good = check_gated_spec(dir.path(), "1.1.0");
    let apply = run(
        &["apply", good.to_str().unwrap(), "--yes", "--timeout", "240s"],
        &config,
    );
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert!(apply.status.success(), "a good version converges:\n{output}");
    let allowed = change_events(&config, 2, "decision.allow");
    assert!(
        allowed.iter().any(|d| {
            d["data"]["findings"].as_array().into_iter().flatten().any(|f| {
                f["rule"] == "gate:storefront/web:work-answers"
                    && f["ok"] == true
                    && f["message"].as_str().unwrap_or_default().contains("all OK")
            })
        }),
        "the check gate was read and passed: {allowed:#?}"
    );

    // A version whose /work answers 500 (its /health is fine): the plugin fails on the canary,
    // the gate trips, the change rolls back.
    let bad = check_gated_spec(dir.path(), "1.2.0-errors");
    let apply = run(&["apply", bad.to_str().unwrap(), "--yes", "--timeout", "240s"], &config);
    let output = format!("{}{}", text(&apply.stdout), text(&apply.stderr));
    assert_eq!(apply.status.code(), Some(1), "the change is rolled back:\n{output}");
    let rollback = change_events(&config, 3, "decision.rollback");
    assert_eq!(rollback.len(), 1, "{rollback:#?}\n{output}");
    let tripped = rollback[0]["data"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["rule"] == "gate:storefront/web:work-answers" && f["ok"] == false)
        .unwrap_or_else(|| panic!("the check gate decided: {:#?}", rollback[0]["data"]["findings"]));
    let message = tripped["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1 of 3 instance(s) of storefront/web not OK") && message.contains("> max 0"),
        "{tripped}"
    );
    assert_eq!(
        change_events(&config, 3, "change.wave_started").len(),
        1,
        "only the canary started"
    );
    assert_eq!(
        web_instances(&config),
        [
            ("dev-a".into(), "1.1.0".into(), "healthy".into()),
            ("dev-b".into(), "1.1.0".into(), "healthy".into()),
            ("dev-c".into(), "1.1.0".into(), "healthy".into()),
        ]
    );
}

/// `endstate dev --git`: the examples live in a Git repository a source follows. A developer
/// clones it, commits a new version of storefront/web and pushes: the commit becomes revision 2
/// and rolls out until it converges; the timeline names the commit.
#[test]
fn dev_git_a_push_rolls_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let _dev = dev(dir.path(), &["--git"]);
    let repo = endstate_testkit::git::GitRepo::clone_of(&dir.path().join("data").join("examples.git"));
    let components = repo.work.join("components.yaml");
    let body = std::fs::read_to_string(&components).unwrap();
    // The first component of the file is storefront/web.
    std::fs::write(
        &components,
        body.replacen("version: \"1.0.0\"", "version: \"1.1.0\"", 1),
    )
    .unwrap();
    let commit = repo.commit_and_push("storefront/web 1.1.0");
    wait_for_event(&config, "change.converged", "at revision 2");
    let seen = text(&run(&["timeline", "--kind", "source.commit", "-o", "json"], &config).stdout);
    let applied: Vec<serde_json::Value> = seen
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|e: &serde_json::Value| e["data"]["commit"] == commit.as_str())
        .collect();
    assert_eq!(applied.len(), 1, "{seen}");
    assert_eq!(applied[0]["data"]["outcome"], "applied", "{seen}");
    assert_eq!(applied[0]["data"]["revision"], 2, "{seen}");
    let status = text(&run(&["status"], &config).stdout);
    assert!(status.contains("storefront/web 1.1.0 (3/3 ready)  healthy"), "{status}");
}
