//! Commands that need no server: validate, plan --offline, schema, agent, help.

use crate::{repo_root, run, text};

#[test]
fn the_examples_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["validate", "examples"], &dir.path().join("c.json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "examples: valid (0 warning(s))\n");
}

#[test]
fn validate_reports_every_problem_with_its_location_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec");
    std::fs::create_dir_all(&spec).unwrap();
    std::fs::write(
        spec.join("a.yaml"),
        "apiVersion: endstate/v1\nkind: System\nname: shop\nowner: [x]\n",
    )
    .unwrap();
    std::fs::write(spec.join("b.yaml"), "apiVersion: endstate/v1\nkind: Component\nname: web\nsystem: nowhere\nartifact: { version: '1', path: x }\ncommand: web\nplacement: { count: { total: 1 } }\n").unwrap();
    std::fs::write(spec.join("c.yaml"), [0u8, 159, 146, 150]).unwrap();
    let out = run(&["validate", spec.to_str().unwrap()], &dir.path().join("c.json"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let located: Vec<&str> = stderr.lines().filter(|l| l.contains(": error[")).collect();
    assert_eq!(located.len(), 3, "{stderr}");
    assert!(located[0].contains("a.yaml:4:1: error[unknown-field]"), "{stderr}");
    assert!(located[1].contains("b.yaml:4:9: error["), "{stderr}");
    assert!(located[1].contains("nowhere"), "{stderr}");
    assert!(located[2].contains("c.yaml"), "{stderr}");
    let out = run(
        &["validate", spec.to_str().unwrap(), "--output", "json"],
        &dir.path().join("c.json"),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 3);
    let missing = run(&["validate", "no/such/dir"], &dir.path().join("c.json"));
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("no/such/dir"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn offline_plan_of_the_examples_matches_its_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["plan", "examples", "--offline"], &dir.path().join("c.json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let golden = repo_root().join("crates/endstate-cli/tests/golden/plan-examples-offline.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out.stdout).unwrap();
    }
    assert_eq!(text(&out.stdout), std::fs::read_to_string(golden).unwrap());
    let json = run(
        &["plan", "examples", "--offline", "-o", "json"],
        &dir.path().join("c.json"),
    );
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(plan["summary"]["add"], 18);
}

#[test]
fn schema_is_json_schema_for_the_spec_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["schema"], &dir.path().join("c.json"));
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = schema.to_string();
    for kind in ["System", "Component", "Check", "Action", "Policy"] {
        assert!(text.contains(kind), "{kind} missing from the schema");
    }
}

#[test]
fn an_agent_without_identity_or_join_token_says_how_to_enrol_and_help_explains_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let out = run(
        &[
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--name",
            "h1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &dir.path().join("c.json"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("this agent is not enrolled: give --join-token"),
        "{}",
        text(&out.stderr)
    );
    let help = text(&run(&["--help"], &dir.path().join("c.json")).stdout);
    for command in [
        "server", "agent", "dev", "validate", "plan", "apply", "status", "timeline", "hosts", "logs", "schema",
    ] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing from --help:\n{help}"
        );
    }
}

#[test]
fn commands_that_need_a_server_say_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["status"], &dir.path().join("c.json"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no server given: pass --server, set ENDSTATE_SERVER, or run `endstate dev`"));
}

#[test]
fn the_config_file_token_is_never_sent_to_another_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    std::fs::write(
        &config,
        r#"{"server": "http://127.0.0.1:7700", "token": "es_from_the_file"}"#,
    )
    .unwrap();
    let out = run(&["status", "--server", "http://127.0.0.1:9"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no token given"), "{}", text(&out.stderr));
}
