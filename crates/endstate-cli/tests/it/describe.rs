//! The 3 a.m. commands through the binary: `describe` (golden), `note`, `timeline` filters and
//! JSON lines, `history`.

use endstate_store::{HostRecord, NewEvent, SqliteStore, Store};

use crate::server::{cli, start_server};
use crate::{repo_root, text};

pub(crate) const SPEC: &str = endstate_testkit::fixtures::DESCRIBE_CACHE;

/// Masks what changes from run to run: times, loopback ports, token secrets.
pub(crate) fn mask(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut idx = 0;
    while idx < chars.len() {
        // An RFC 3339 time: dddd-dd-ddTdd:dd:dd[.fraction](Z|+hh:mm)
        let shape = "dddd-dd-ddTdd:dd:dd";
        let is_time = chars.len() - idx >= shape.len()
            && shape.chars().zip(&chars[idx..]).all(|(want, got)| match want {
                'd' => got.is_ascii_digit(),
                other => other == *got,
            });
        if is_time {
            idx += shape.len();
            while idx < chars.len() && (chars[idx] == '.' || chars[idx].is_ascii_digit()) {
                idx += 1;
            }
            if idx < chars.len() && chars[idx] == 'Z' {
                idx += 1;
            }
            out.push_str("<TIME>");
            continue;
        }
        let rest: String = chars[idx..chars.len().min(idx + 10)].iter().collect();
        if rest.starts_with("127.0.0.1:") {
            idx += 10;
            while idx < chars.len() && chars[idx].is_ascii_digit() {
                idx += 1;
            }
            out.push_str("127.0.0.1:<PORT>");
            continue;
        }
        if rest.starts_with("es_") {
            idx += 3;
            while idx < chars.len() && chars[idx].is_ascii_alphanumeric() {
                idx += 1;
            }
            out.push_str("es_<TOKEN>");
            continue;
        }
        out.push(chars[idx]);
        idx += 1;
    }
    out
}

#[test]
fn describe_note_timeline_and_history_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    let data = dir.path().join("data");
    let (server, url, token) = start_server(&data, &config);
    let token = token.unwrap();
    let spec = dir.path().join("spec");
    std::fs::create_dir_all(&spec).unwrap();
    std::fs::write(spec.join("systems.yaml"), SPEC).unwrap();
    let out = cli(&["apply", spec.to_str().unwrap(), "--yes"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A note, signed with the token's name.
    let out = cli(
        &["note", "cache", "Flushed by hand after the catalogue fix; see INC-42."],
        &url,
        &token,
        &config,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.contains("note.added") && line.contains("(admin)"), "{line}");
    // Too long: refused naming `text`, exit 2, nothing stored.
    let long = "x".repeat(5_000);
    let out = cli(&["note", "cache", &long], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("text: is 5000 bytes; a note may be at most 4096 bytes"),
        "{stderr}"
    );
    let out = cli(&["note", "nowhere", "hello"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"nowhere\""), "{}", text(&out.stderr));

    // describe: one screen, golden.
    let out = cli(&["describe", "cache"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let masked = mask(&text(&out.stdout));
    let golden = repo_root().join("crates/endstate-cli/tests/golden/describe-cache.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &masked).unwrap();
    }
    assert_eq!(masked, std::fs::read_to_string(golden).unwrap());
    let out = cli(&["describe", "cache", "-o", "json"], &url, &token, &config);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["escalation"]["contact"], "platform-oncall");
    assert_eq!(json["aggregates"][0]["name"], "platform");
    assert_eq!(json["recent_events"][0]["kind"], "note.added");
    let out = cli(&["describe", "nowhere"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"nowhere\""), "{}", text(&out.stderr));

    // timeline: --actor, JSON lines, and bad windows named.
    let out = cli(
        &["timeline", "shop", "--actor", "admin", "-o", "json"],
        &url,
        &token,
        &config,
    );
    let kinds: Vec<String> = text(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["revision.submitted", "note.added"]);
    let out = cli(&["timeline", "--component", "cache/memo"], &url, &token, &config);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), String::new()));
    let out = cli(&["timeline", "--since", "1h", "--until", "2h"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("since: is after until") && stderr.contains("until: is before since"),
        "{stderr}"
    );
    let out = cli(&["timeline", "--since", "last tuesday"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("since:"), "{}", text(&out.stderr));
    let out = cli(&["timeline", "nowhere"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    let help = text(&cli(&["timeline", "--help"], &url, &token, &config).stdout);
    assert!(help.contains("JSON lines"), "{help}");

    // history: bad and unknown targets.
    let out = cli(&["history", "dev-a"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("system/component#slot@host"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&["history", "host:h-a"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not in the inventory"),
        "{}",
        text(&out.stderr)
    );

    // A host with history, written to the store while the server is stopped.
    drop(server);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(data.join("endstate.db")).unwrap();
        store
            .upsert_host(HostRecord {
                name: endstate_types::HostName("h-a".into()),
                labels: Default::default(),
                facts: serde_json::json!({}),
                last_seen_ms: None,
                retired_ms: None,
            })
            .await
            .unwrap();
        let now = jiff::Timestamp::now().as_millisecond();
        let event = |ago_h: i64, kind: &str| NewEvent {
            host: Some("h-a".into()),
            ..NewEvent::new(now - ago_h * 3_600_000, kind, kind)
        };
        // Reachable 8 days ago, unreachable for the last 2 days: chronic.
        store
            .append_events(vec![event(8 * 24, "host.reachable"), event(48, "host.unreachable")])
            .await
            .unwrap();
        store.close().await;
    });
    let (_server, url, _) = start_server(&data, &config);
    let out = cli(&["history", "host:h-a"], &url, &token, &config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = mask(&text(&out.stdout));
    assert_eq!(
        shown,
        "host:h-a (host): chronic\n\
         \x20 now           unreachable, failing since <TIME>\n\
         \x20 first failed  <TIME>\n\
         \x20 transitions   2 in the last 30 days\n\
         \x20 failing       24h 100.00%   7d 28.57%   30d 25.00%  (of the time observed)\n\
         \x20 flapping      no (0 change(s) between healthy and failing in the last hour; 5 or more is flapping)\n"
    );
    let out = cli(&["history", "host:h-a", "-o", "json"], &url, &token, &config);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["label"], "chronic");
    assert_eq!(json["unhealthy"][1]["percent"], 28.57);
}
