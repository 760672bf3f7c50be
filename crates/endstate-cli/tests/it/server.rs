//! The binary as a server: apply, status and timeline through the CLI, durability across
//! `kill -9`, and `endstate dev` bringing up the example systems.

use std::path::Path;
use std::time::Duration;

use crate::{Process, run, text};

const SYSTEMS: &str = "apiVersion: endstate/v1\nkind: System\nname: shop\nowners: [team-shop]\nsubsystems: [payments]\n---\napiVersion: endstate/v1\nkind: System\nname: payments\nowners: [team-payments]\n";

fn write_spec(dir: &Path, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("systems.yaml"), text).unwrap();
    dir.to_str().unwrap().to_string()
}

/// Starts `endstate server` on a free port; returns the process, its URL and its admin token.
pub(crate) fn start_server(data: &Path, config: &Path) -> (Process, String, Option<String>) {
    start_server_with(data, config, &[])
}

/// `start_server` with more flags.
pub(crate) fn start_server_with(data: &Path, config: &Path, extra: &[&str]) -> (Process, String, Option<String>) {
    let mut args = vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--agent-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut server = Process::spawn(&args, config);
    let first = server.wait_for("endstate server listening on");
    let token = server
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("admin token written to "))
        .and_then(|rest| rest.split(" (mode 0600)").next())
        .map(|path| std::fs::read_to_string(path).unwrap().trim().to_owned());
    let start = first.find("https://").unwrap();
    let url = first[start..].to_string();
    // The client config pins the server's CA (what `endstate login` writes; tested there).
    let mut written: serde_json::Value = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    written["server"] = url.clone().into();
    written["ca_pem"] = std::fs::read_to_string(data.join("pki").join("ca.pem")).unwrap().into();
    if let Some(token) = &token {
        written["token"] = token.clone().into();
    }
    std::fs::write(config, written.to_string()).unwrap();
    (server, url, token)
}

pub(crate) fn cli(args: &[&str], url: &str, token: &str, config: &Path) -> std::process::Output {
    let mut all = vec!["--server", url, "--token", token];
    all.extend_from_slice(args);
    run(&all, config)
}

#[test]
fn apply_converges_and_status_and_timeline_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let (_server, url, token) = start_server(&dir.path().join("data"), &config);
    let token = token.expect("the first start prints the admin token");
    let spec = write_spec(&dir.path().join("spec"), SYSTEMS);

    let out = cli(&["apply", &spec, "--yes", "-m", "first systems"], &url, &token, &config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(text(&out.stdout).contains("+ system payments"), "{}", text(&out.stdout));
    assert!(stderr.contains("Change 1 converged"), "{stderr}");

    let out = cli(&["plan", &spec], &url, &token, &config);
    assert_eq!(
        text(&out.stdout),
        "Compared with revision 1, the last one whose change converged.\nNo changes. The desired state matches what is in force.\n"
    );

    let status = text(&cli(&["status"], &url, &token, &config).stdout);
    // What is in force first, then the tree.
    let (first, tree) = status.split_once('\n').unwrap();
    assert!(first.starts_with("revision 1 in force (change 1, since "), "{status}");
    assert_eq!(tree, "shop  healthy\n└─ payments  healthy\n");

    let out = cli(&["timeline", "payments", "-o", "json"], &url, &token, &config);
    let kinds: Vec<String> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["revision.submitted", "change.planning", "change.converged"]);

    // An invalid spec is refused with its location, and apply says so in its exit code.
    let bad = write_spec(
        &dir.path().join("bad"),
        &SYSTEMS.replace("owners: [team-shop]", "owners: yes"),
    );
    let out = cli(&["apply", &bad, "--yes"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("systems.yaml:4:9: error["),
        "{}",
        text(&out.stderr)
    );

    // Without --yes and without a terminal, apply refuses.
    let out = cli(&["apply", &spec], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pass --yes"));
}

#[test]
fn what_the_api_acknowledged_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let data = dir.path().join("data");
    let (mut server, url, token) = start_server(&data, &config);
    let token = token.unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 32 clients submit revisions as fast as they can; the server is SIGKILLed while submissions
    // are in flight. Every submission answered 201 must be there after the restart.
    let ca = std::fs::read_to_string(data.join("pki").join("ca.pem")).unwrap();
    let acknowledged: Vec<String> = runtime.block_on(async {
        let client = endstate_client::Client::with_ca(&url, &token, &ca).unwrap();
        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for task in 0..32 {
            let (client, acked_tx) = (client.clone(), acked_tx.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let message = format!("t{task}-{n}");
                    let request = endstate_api::SubmitRevision {
                        documents: vec![endstate_api::Document {
                            path: "systems.yaml".into(),
                            content: SYSTEMS.into(),
                        }],
                        message: message.clone(),
                        source: endstate_api::RevisionSource {
                            kind: "api".into(),
                            reference: None,
                        },
                        parent: None,
                        options: Default::default(),
                        basis: None,
                    };
                    match client.submit(&request).await {
                        Ok(_) => {
                            if acked_tx.send(message).is_err() {
                                return;
                            }
                        }
                        Err(_) => return, // the server is gone: this one was not acknowledged
                    }
                }
            });
        }
        drop(acked_tx);
        let mut acknowledged = Vec::new();
        while acknowledged.len() < 100 {
            acknowledged.push(acked_rx.recv().await.unwrap());
        }
        server.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
        server.child.wait().unwrap();
        // Answers already on their way count as acknowledged too.
        while let Some(message) = acked_rx.recv().await {
            acknowledged.push(message);
        }
        acknowledged
    });

    let (_again, url, second_token) = start_server(&data, &config);
    assert_eq!(second_token, None, "the admin token is shown once, at the first start");
    let out = cli(
        &[
            "timeline",
            "--kind",
            "revision.submitted",
            "--limit",
            "1000",
            "-o",
            "json",
        ],
        &url,
        &token,
        &config,
    );
    let stored: std::collections::HashSet<String> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["data"]["message"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        stored.len() < 1000,
        "more revisions than one page holds; raise the page or page back"
    );
    let lost: Vec<&String> = acknowledged.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged revisions lost after kill -9: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    // The restarted server picks up the newest open change and carries it to its end. While it
    // does, what is in force moves, and `apply --yes` refuses a plan previewed on an older base
    // (saying so): that refusal is right, so apply again until the base holds still.
    let spec = write_spec(&dir.path().join("spec"), SYSTEMS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(
            &["apply", &spec, "--yes", "-m", "after restart", "--timeout", "60s"],
            &url,
            &token,
            &config,
        );
        let stderr = text(&out.stderr);
        if out.status.code() == Some(2)
            && stderr.contains("moved since the plan was previewed")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        break;
    }
}

#[test]
fn dev_brings_up_the_example_systems() {
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
    let url = dev.wait_for_url("API:");
    let applied = dev.wait_for("examples:");
    assert!(applied.contains("applied as revision 1 (change 1)"), "{applied}");
    // The CLI finds the server through the config file dev wrote.
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written["server"], url.as_str());
    let status = run(&["status"], &config);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status = text(&status.stdout);
    for system in ["shop", "storefront", "payments", "platform", "cache"] {
        assert!(status.contains(system), "{system} missing:\n{status}");
    }
    // Three local agents enrol and run the examples as real processes, until the change converges.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let out = run(&["timeline", "--kind", "change.converged", "-o", "json"], &config);
        last = format!("{}{}", text(&out.stdout), text(&out.stderr));
        if last.contains("change.converged") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let agent_log: String = ["a", "b", "c"]
        .iter()
        .map(|zone| {
            let log = std::fs::read_to_string(data.join(format!("agents/{zone}/agent.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "--- {zone}:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    let timeline = text(&run(&["timeline", "--limit", "40"], &config).stdout);
    assert!(
        last.contains("8 instances running and healthy at revision 1"),
        "{last}\nseen: {:#?}\nagents: {agent_log}\ntimeline:\n{timeline}",
        dev.seen
    );
    let status = text(&run(&["status"], &config).stdout);
    for line in [
        "storefront/web 1.0.0 (3/3 ready)  healthy",
        "cache/memo 1.0.0 (3/3 ready)  healthy",
        "payments/api 1.0.0 (2/2 ready)  healthy",
    ] {
        assert!(status.contains(line), "{line} missing:\n{status}");
    }
    let hosts: Vec<serde_json::Value> =
        serde_json::from_str(&text(&run(&["hosts", "-o", "json"], &config).stdout)).unwrap();
    let names: Vec<(&str, &str, &str)> = hosts
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap(),
                h["liveness"].as_str().unwrap(),
                h["labels"]["zone"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("dev-a", "reachable", "a"),
            ("dev-b", "reachable", "b"),
            ("dev-c", "reachable", "c")
        ]
    );
    // Real processes: each runs from an agent's own data directory.
    let running = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("{}/agents/.*/versions/.*example-service", data.display()),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&running.stdout).lines().count(), 8, "one process per instance");

    // Stopping dev stops its agents, and they stop their instances.
    drop(dev);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = std::process::Command::new("pgrep")
            .args(["-f", &format!("{}/agents/", data.display())])
            .output()
            .unwrap();
        if text(&left.stdout).trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {}",
            text(&left.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `endstate login` pins the server's CA as ssh pins a host key: a wrong fingerprint is
/// refused, no fingerprint and no terminal shows it and writes nothing, the right one is written
/// into the client config, which every other command then uses.
#[test]
fn login_pins_the_servers_ca_by_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url, token) = start_server(&dir.path().join("data"), &dir.path().join("unused.json"));
    let token = token.unwrap();
    let line = server.wait_for("API certificate from the server's CA, sha256 ");
    let sha256 = line
        .strip_prefix("API certificate from the server's CA, sha256 ")
        .unwrap()
        .to_owned();
    let config = dir.path().join("client.json");

    let wrong = run(
        &["login", &url, "--token", &token, "--ca-sha256", &"ab".repeat(32)],
        &config,
    );
    assert_ne!(wrong.status.code(), Some(0));
    assert!(
        text(&wrong.stderr).contains("not the one pinned"),
        "{}",
        text(&wrong.stderr)
    );
    assert!(!config.exists(), "nothing written");

    let asked = run(&["login", &url, "--token", &token], &config);
    assert_ne!(asked.status.code(), Some(0));
    assert!(text(&asked.stdout).contains(&sha256), "{}", text(&asked.stdout));
    assert!(text(&asked.stderr).contains("--ca-sha256"), "{}", text(&asked.stderr));
    assert!(!config.exists(), "nothing written");

    let pinned = run(&["login", &url, "--token", &token, "--ca-sha256", &sha256], &config);
    assert_eq!(pinned.status.code(), Some(0), "{}", text(&pinned.stderr));
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written["server"], url.as_str());
    assert!(written["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let status = run(&["status"], &config);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
}

/// A lost admin token is not the end: `endstate server admin-token` on the stopped server's data
/// directory revokes it and prints a new one, and the next start has it on the timeline.
#[test]
fn a_lost_admin_token_is_replaced_while_the_server_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let data = dir.path().join("data");
    let (server, _, old) = start_server(&data, &config);
    let old = old.unwrap();
    drop(server);
    let out = run(
        &["server", "admin-token", "--data-dir", data.to_str().unwrap()],
        &config,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let new = printed
        .trim()
        .rsplit(' ')
        .next()
        .filter(|t| t.starts_with("es_"))
        .unwrap_or_else(|| panic!("no token printed: {printed}"))
        .to_owned();
    assert!(!printed.contains(&old));

    let (_server, url, none) = start_server(&data, &config);
    assert_eq!(none, None, "the restart creates no other token");
    let refused = cli(&["status"], &url, &old, &config);
    assert_ne!(refused.status.code(), Some(0));
    assert!(text(&refused.stderr).contains("revoked"), "{}", text(&refused.stderr));
    let out = cli(&["timeline", "--kind", "token.", "-o", "json"], &url, &new, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("admin token replaced offline; 1 previous admin token(s) revoked"),
        "{}",
        text(&out.stdout)
    );
}

/// For scripts: `-o json` prints only JSON on stdout (apply included), a destructive command
/// without a terminal to confirm on is refused unless `--yes`, and a server that cannot be
/// reached exits 4, apart from a refusal (2).
#[test]
fn scripts_get_only_json_confirmations_and_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let (_server, url, token) = start_server(&dir.path().join("data"), &config);
    let token = token.unwrap();
    let spec = write_spec(&dir.path().join("spec"), SYSTEMS);

    let out = cli(&["apply", &spec, "--yes", "-o", "json"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let change: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not only JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(change["state"], "converged", "{change}");
    assert!(
        text(&out.stderr).contains("+ system payments"),
        "the plan goes to stderr"
    );

    let out = cli(&["rollback", "shop", "--to", "1"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("every system"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pass --yes"), "{}", text(&out.stderr));
    let out = cli(&["hosts", "revoke", "nobody"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pass --yes"), "{}", text(&out.stderr));
    let timeline = text(&cli(&["timeline", "--kind", "change.", "-o", "json"], &url, &token, &config).stdout);
    assert_eq!(
        timeline.matches("\"change.planning\"").count(),
        1,
        "nothing was rolled back: {timeline}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = cli(&["status"], &nowhere, &token, &config);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach"), "{}", text(&out.stderr));
}

/// Webhooks are delivered at least once: a server killed after sending a notification but before
/// recording that it was delivered sends it again when it starts, with the same delivery id, so
/// the receiver sees the id twice and acts once. Every call is signed.
#[test]
fn a_webhook_interrupted_by_kill_9_is_sent_again_with_the_same_delivery_id() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let data = dir.path().join("data");
    // A receiver that holds its first answer until the test says so, and answers the others at once.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let (seen_tx, seen) = std::sync::mpsc::channel::<(String, bool)>();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for (n, stream) in receiver.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut delivery, mut signed, mut length) = (String::new(), false, 0_usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("endstate-delivery:") {
                    delivery = value.trim().to_owned();
                }
                signed |= lower.starts_with("endstate-signature: sha256=");
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0_u8; length];
            let _ = reader.read_exact(&mut body);
            let _ = seen_tx.send((delivery, signed));
            if n == 0 {
                let _ = release.recv();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let flags = ["--alert-webhook", hook.as_str()];
    let (mut server, url, token) = start_server_with(&data, &config, &flags);
    let token = token.unwrap();
    let spec = write_spec(&dir.path().join("spec"), SYSTEMS);
    assert_eq!(
        cli(&["apply", &spec, "--yes"], &url, &token, &config).status.code(),
        Some(0)
    );
    // An alert from Alertmanager opens, and is notified.
    let ca = std::fs::read_to_string(data.join("pki").join("ca.pem")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let answer = http
            .post(format!("{url}/v1/alertmanager"))
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "version": "4", "status": "firing", "receiver": "endstate", "groupKey": "g",
                "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093",
                "alerts": [{ "status": "firing", "labels": { "alertname": "Down", "instance": "web-1", "system": "shop" },
                    "annotations": {}, "startsAt": "2026-12-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "", "fingerprint": "f1" }]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    });
    let (first, signed) = seen
        .recv_timeout(Duration::from_secs(30))
        .expect("the webhook was called");
    assert!(first.starts_with("d_"), "{first}");
    assert!(signed, "every call is signed");
    // Killed while the receiver has not answered: nothing recorded the delivery.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = release_tx.send(());
    let (_again, url, _) = start_server_with(&data, &config, &flags);
    let (second, _) = seen
        .recv_timeout(Duration::from_secs(30))
        .expect("the webhook was called again");
    assert_eq!(second, first, "the same delivery id");
    // Recorded once delivered: not sent a third time.
    assert!(
        seen.recv_timeout(Duration::from_secs(3)).is_err(),
        "a delivery already recorded was sent again"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(
            &["timeline", "--kind", "alert.notified", "-o", "json"],
            &url,
            &token,
            &config,
        );
        if text(&out.stdout).contains(&first) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {}",
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
