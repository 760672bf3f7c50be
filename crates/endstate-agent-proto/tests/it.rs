//! The protocol from the outside: round trips, golden frames, every bound, hostile input.
//!
//! `UPDATE_GOLDEN=1 cargo test -p endstate-agent-proto` rewrites `tests/golden/`; a diff there is a
//! change of the wire, to review as one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use endstate_agent_proto::limits::{MAX_FRAME_BYTES, MAX_OBSERVATIONS};
use endstate_agent_proto::{
    Ack, ActualInstance, ActualState, Artifact, ArtifactSource, CheckAssignment, CheckProbe, CheckResult, ConfigFile,
    DesiredInstances, Disk, Facts, FromAgent, FromServer, GenerationDecision, HealthProbe, HealthResult, Hello,
    IgnoreReason, InstanceAssignment, InstanceId, InstanceStateChange, InstanceStateWord, Keepalive, Observation,
    Observations, Observed, PROTOCOL_VERSION, Ping, Probe, ProtoError, Refused, ResourceUse, Revoke, VersionRange,
    Welcome, accept_generation, decode_from_agent, decode_from_server, encode, negotiate,
};
use endstate_types::{Generation, HostName};
use serde_json::{Value, json};

// === fixtures ===

fn facts() -> Facts {
    Facts {
        hostname: "web-a1".into(),
        os: "Debian GNU/Linux 13".into(),
        kernel: "6.12.0-1-amd64".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 4 << 30,
        disks: vec![Disk {
            mount: "/".into(),
            total_bytes: 40 << 30,
            free_bytes: 12 << 30,
        }],
        agent_version: "0.1.0".into(),
    }
}

fn hello() -> Hello {
    Hello {
        versions: VersionRange::new(1, 1),
        agent_version: "0.1.0".into(),
        host: HostName("web-a1".into()),
        labels: BTreeMap::from([("role".into(), "web".into()), ("zone".into(), "a".into())]),
        facts: facts(),
    }
}

fn web0() -> InstanceId {
    InstanceId::new("shop", "web", 0)
}

fn observations() -> Observations {
    let observation = |seq, observed| Observation {
        seq,
        at_unix_ms: 1_767_225_600_000 + seq,
        observed,
    };
    Observations {
        observations: vec![
            observation(
                41,
                Observed::InstanceState(InstanceStateChange {
                    instance: web0(),
                    generation: Generation(7),
                    state: InstanceStateWord::Exited,
                    version: "1.4.2".into(),
                    pid: Some(4242),
                    exit_code: None,
                    signal: Some(9),
                    restarts: 3,
                    detail: "killed by signal 9".into(),
                }),
            ),
            observation(
                42,
                Observed::Health(HealthResult {
                    instance: web0(),
                    healthy: false,
                    detail: "HTTP 503".into(),
                }),
            ),
            observation(
                43,
                Observed::Resources(ResourceUse {
                    instance: web0(),
                    rss_bytes: 24 << 20,
                    cpu_millis: 1530,
                }),
            ),
            observation(
                44,
                Observed::Check(CheckResult {
                    name: "platform/disk-root".into(),
                    target: "h1".into(),
                    duration_ms: 12,
                    status: 1,
                    output: "DISK WARNING - free space: / 1200 MB (9%)".into(),
                    perfdata: "/=10800MB;10000;11000;0;12000".into(),
                }),
            ),
        ],
    }
}

fn actual_state() -> ActualState {
    ActualState {
        generation: Some(Generation(7)),
        last_seq: 44,
        instances: vec![ActualInstance {
            instance: web0(),
            generation: Generation(7),
            version: "1.4.2".into(),
            state: InstanceStateWord::Running,
            pid: Some(4243),
            healthy: Some(true),
        }],
    }
}

fn assignment() -> InstanceAssignment {
    InstanceAssignment {
        id: web0(),
        artifact: Artifact {
            version: "1.4.2".into(),
            source: ArtifactSource::Url {
                url: "https://artifacts.example/example-service-1.4.2".into(),
                sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            },
        },
        command: "bin/example-service".into(),
        args: vec!["--config".into(), "etc/service.toml".into()],
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        config_files: vec![ConfigFile {
            path: "etc/service.toml".into(),
            content: "listen = 8080\n".into(),
        }],
        ports: BTreeMap::from([("http".into(), 8080)]),
        health: Some(HealthProbe {
            probe: Probe::Http {
                port: "http".into(),
                path: "/health".into(),
            },
            interval_ms: 1000,
            timeout_ms: 500,
            healthy_after: 2,
            unhealthy_after: 3,
        }),
        stop_grace_ms: 10_000,
        upgrade: endstate_agent_proto::UpgradeOrder::StopFirst,
        run_as: None,
    }
}

fn desired() -> DesiredInstances {
    let mut worker = assignment();
    worker.id = InstanceId::new("shop", "worker", 1);
    worker.artifact.source = ArtifactSource::Path {
        path: "/opt/worker/2.0.0".into(),
    };
    worker.ports.clear();
    worker.config_files.clear();
    worker.health = Some(HealthProbe {
        probe: Probe::Exec {
            command: "/bin/true".into(),
            args: vec![],
        },
        interval_ms: 5000,
        timeout_ms: 1000,
        healthy_after: 1,
        unhealthy_after: 1,
    });
    let mut cache = assignment();
    cache.id = InstanceId::new("shop", "cache", 0);
    cache.ports = BTreeMap::from([("redis".into(), 6379)]);
    cache.health = Some(HealthProbe {
        probe: Probe::Tcp { port: "redis".into() },
        interval_ms: 1000,
        timeout_ms: 200,
        healthy_after: 1,
        unhealthy_after: 2,
    });
    DesiredInstances {
        generation: Generation(8),
        instances: vec![assignment(), worker, cache],
        checks: vec![
            CheckAssignment {
                id: "shop/http@shop/web#0@h1".into(),
                check: "shop/http".into(),
                target: "shop/web#0@h1".into(),
                probe: CheckProbe::Exec {
                    command: "/usr/lib/nagios/plugins/check_http".into(),
                    args: vec!["-H".into(), "127.0.0.1".into(), "-p".into(), "8080".into()],
                },
                interval_ms: 10_000,
                timeout_ms: 2_000,
                splay_ms: 1_000,
            },
            CheckAssignment {
                id: "shop/tcp@h1".into(),
                check: "shop/tcp".into(),
                target: "h1".into(),
                probe: CheckProbe::Tcp {
                    host: "127.0.0.1".into(),
                    port: 5432,
                },
                interval_ms: 10_000,
                timeout_ms: 2_000,
                splay_ms: 0,
            },
        ],
        actions: vec![endstate_agent_proto::ActionAssignment {
            name: "shop/flush".into(),
            command: vec![
                "bin/shop-admin".into(),
                "flush".into(),
                "--scope={{ params.scope }}".into(),
            ],
            shell: false,
            parameters: [(
                "scope".to_owned(),
                endstate_agent_proto::ActionParameter {
                    kind: endstate_agent_proto::ActionParameterType::Enum,
                    values: vec!["all".into(), "sessions".into()],
                    min: None,
                    max: None,
                },
            )]
            .into_iter()
            .collect(),
            timeout_ms: 60_000,
        }],
    }
}

fn every_agent_message() -> Vec<FromAgent> {
    vec![
        FromAgent::Hello(hello()),
        FromAgent::Facts(facts()),
        FromAgent::Keepalive(Keepalive { seq: 1 }),
        FromAgent::Observations(observations()),
        FromAgent::ActualState(actual_state()),
        FromAgent::ActualState(ActualState {
            generation: None,
            last_seq: 0,
            instances: vec![],
        }),
        FromAgent::ActionOutput(endstate_agent_proto::ActionOutput {
            run: "run-3".into(),
            stream: endstate_agent_proto::OutputStream::Stderr,
            data: "flushing...\n".into(),
        }),
        FromAgent::Observations(Observations {
            observations: vec![Observation {
                seq: 9,
                at_unix_ms: 1_700_000_000_000,
                observed: Observed::Action(endstate_agent_proto::ActionResult {
                    run: "run-3".into(),
                    action: "shop/flush".into(),
                    outcome: endstate_agent_proto::ActionOutcome::Failed,
                    exit_code: Some(2),
                    signal: None,
                    duration_ms: 40,
                    output: "flushing...\nno such scope\n".into(),
                    detail: String::new(),
                }),
            }],
        }),
    ]
}

fn every_server_message() -> Vec<FromServer> {
    vec![
        FromServer::Welcome(Welcome {
            version: 1,
            server_version: "0.1.0".into(),
        }),
        FromServer::Refused(
            negotiate(VersionRange::new(2, 3), VersionRange::new(1, 1))
                .unwrap_err()
                .into(),
        ),
        FromServer::Ack(Ack { up_to_seq: 44 }),
        FromServer::DesiredInstances(desired()),
        FromServer::DesiredInstances(DesiredInstances {
            generation: Generation(9),
            instances: vec![],
            checks: vec![],
            actions: vec![],
        }),
        FromServer::RunAction(endstate_agent_proto::RunAction {
            run: "run-3".into(),
            action: "shop/flush".into(),
            generation: Generation(8),
            params: [("scope".to_owned(), "all".to_owned())].into_iter().collect(),
            signature: "3045022100ab".into(),
        }),
        FromServer::CancelAction(endstate_agent_proto::CancelAction { run: "run-3".into() }),
        FromServer::Revoke(Revoke {
            reason: "host revoked by alice".into(),
        }),
        FromServer::Ping(Ping {}),
    ]
}

/// A frame with the envelope, written without the encoder's checks.
fn raw_frame(message: &impl serde::Serialize) -> Vec<u8> {
    let mut value = serde_json::to_value(message).unwrap();
    value
        .as_object_mut()
        .unwrap()
        .insert("v".into(), json!(PROTOCOL_VERSION));
    serde_json::to_vec(&value).unwrap()
}

fn agent_error(frame: &[u8]) -> String {
    decode_from_agent(frame).unwrap_err().to_string()
}

fn server_error(frame: &[u8]) -> String {
    decode_from_server(frame).unwrap_err().to_string()
}

// === round trips and golden frames ===

#[test]
fn every_message_round_trips() {
    for message in every_agent_message() {
        let frame = encode(&message).unwrap();
        assert_eq!(
            decode_from_agent(&frame).unwrap(),
            message,
            "{}",
            String::from_utf8_lossy(&frame)
        );
    }
    for message in every_server_message() {
        let frame = encode(&message).unwrap();
        assert_eq!(
            decode_from_server(&frame).unwrap(),
            message,
            "{}",
            String::from_utf8_lossy(&frame)
        );
    }
}

#[test]
fn frames_start_with_the_envelope() {
    let frame = encode(&FromServer::Ack(Ack { up_to_seq: 41 })).unwrap();
    assert_eq!(frame, br#"{"v":1,"type":"ack","up_to_seq":41}"#);
    let frame = encode(&FromServer::Ping(Ping {})).unwrap();
    assert_eq!(frame, br#"{"v":1,"type":"ping"}"#);
}

fn check_golden(name: &str, frame: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    let mut expected = frame.to_vec();
    expected.push(b'\n');
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let found = std::fs::read(&path).unwrap_or_default();
    assert!(
        found == expected,
        "{} differs from the frame written now (UPDATE_GOLDEN=1 rewrites it; review the diff):\n{}",
        path.display(),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn golden_frames() {
    let agent = FromAgent::Observations(observations());
    check_golden("from_agent_observations.json", &encode(&agent).unwrap());
    let server = FromServer::DesiredInstances(desired());
    check_golden("from_server_desired_instances.json", &encode(&server).unwrap());
    // What was written before still decodes to the same messages.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let old = std::fs::read(dir.join("from_agent_observations.json")).unwrap();
    assert_eq!(decode_from_agent(&old).unwrap(), agent);
    let old = std::fs::read(dir.join("from_server_desired_instances.json")).unwrap();
    assert_eq!(decode_from_server(&old).unwrap(), server);
}

// === bounds ===

/// Breaks one bound or rule of a valid message, and expects the decoder (and the encoder) to
/// refuse it with this message.
fn check_agent_refused(break_it: impl FnOnce(&mut FromAgent), base: FromAgent, expect: &str) {
    let mut message = base;
    break_it(&mut message);
    assert_eq!(agent_error(&raw_frame(&message)), expect);
    assert_eq!(
        encode(&message).unwrap_err().to_string(),
        expect,
        "encode must refuse it too"
    );
}

fn check_server_refused(break_it: impl FnOnce(&mut DesiredInstances), expect: &str) {
    let mut desired = desired();
    break_it(&mut desired);
    let message = FromServer::DesiredInstances(desired);
    assert_eq!(server_error(&raw_frame(&message)), expect);
    assert_eq!(
        encode(&message).unwrap_err().to_string(),
        expect,
        "encode must refuse it too"
    );
}

fn batch(message: &mut FromAgent) -> &mut Vec<Observation> {
    match message {
        FromAgent::Observations(batch) => &mut batch.observations,
        _ => unreachable!(),
    }
}

fn observed(message: &mut FromAgent, obs_idx: usize) -> &mut Observed {
    &mut batch(message)[obs_idx].observed
}

#[test]
fn observation_bounds_name_their_field() {
    let base = || FromAgent::Observations(observations());
    check_agent_refused(
        |m| {
            // The smallest kind of observation, so that the frame itself stays within its bound.
            let one = batch(m)[2].clone();
            *batch(m) = (1..=20_000).map(|seq| Observation { seq, ..one.clone() }).collect();
        },
        base(),
        "observations: 20000 items, at most 10000",
    );
    check_agent_refused(
        |m| batch(m).clear(),
        base(),
        "observations: empty: a batch has at least one observation",
    );
    check_agent_refused(
        |m| batch(m)[2].seq = 42,
        base(),
        "observations[2].seq: 42 after 42: sequence numbers strictly increase",
    );
    check_agent_refused(
        |m| batch(m)[0].seq = 0,
        base(),
        "observations[0].seq: 0: sequence numbers start at 1",
    );
    check_agent_refused(
        |m| {
            if let Observed::Check(check) = observed(m, 3) {
                check.output = "x".repeat(8193);
            }
        },
        base(),
        "observations[3].observed.output: 8193 bytes, at most 8192",
    );
    check_agent_refused(
        |m| {
            if let Observed::Check(check) = observed(m, 3) {
                check.perfdata = "x".repeat(9000);
            }
        },
        base(),
        "observations[3].observed.perfdata: 9000 bytes, at most 8192",
    );
    check_agent_refused(
        |m| {
            if let Observed::Check(check) = observed(m, 3) {
                check.status = 4;
            }
        },
        base(),
        "observations[3].observed.status: 4, at most 3 (0 ok, 1 warning, 2 critical, 3 unknown)",
    );
    check_agent_refused(
        |m| {
            if let Observed::Health(health) = observed(m, 1) {
                health.detail = "d".repeat(1025);
            }
        },
        base(),
        "observations[1].observed.detail: 1025 bytes, at most 1024",
    );
    check_agent_refused(
        |m| {
            if let Observed::InstanceState(change) = observed(m, 0) {
                change.instance = InstanceId("shop/web".into());
            }
        },
        base(),
        "observations[0].observed.instance: \"shop/web\": not system/component#slot",
    );
    check_agent_refused(
        |m| {
            if let Observed::Resources(resources) = observed(m, 2) {
                resources.instance = InstanceId("Shop/web#0".into());
            }
        },
        base(),
        "observations[2].observed.instance: \"Shop/web#0\": not system/component#slot",
    );
    // The most a batch may hold is accepted.
    let mut full = base();
    let one = batch(&mut full)[0].clone();
    *batch(&mut full) = (1..=MAX_OBSERVATIONS as u64)
        .map(|seq| Observation { seq, ..one.clone() })
        .collect();
    assert_eq!(decode_from_agent(&encode(&full).unwrap()).unwrap(), full);
}

#[test]
fn handshake_and_state_bounds_name_their_field() {
    let hello = || FromAgent::Hello(hello());
    let with_hello = |change: fn(&mut Hello)| {
        move |m: &mut FromAgent| {
            if let FromAgent::Hello(hello) = m {
                change(hello);
            }
        }
    };
    check_agent_refused(
        with_hello(|h| h.versions = VersionRange::new(3, 2)),
        hello(),
        "versions: 3..=2 is not a version range (1 <= min <= max)",
    );
    check_agent_refused(with_hello(|h| h.host = HostName(String::new())), hello(), "host: empty");
    check_agent_refused(
        with_hello(|h| h.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
        hello(),
        "labels: 65 items, at most 64",
    );
    check_agent_refused(
        with_hello(|h| {
            h.labels.insert("zone".into(), "z".repeat(300));
        }),
        hello(),
        "labels.\"zone\": 300 bytes, at most 256",
    );
    check_agent_refused(
        with_hello(|h| h.facts.kernel = "k".repeat(257)),
        hello(),
        "facts.kernel: 257 bytes, at most 256",
    );
    check_agent_refused(
        with_hello(|h| h.facts.disks = vec![h.facts.disks[0].clone(); 65]),
        hello(),
        "facts.disks: 65 items, at most 64",
    );
    check_agent_refused(
        |m| {
            if let FromAgent::Facts(facts) = m {
                facts.hostname = String::new();
            }
        },
        FromAgent::Facts(facts()),
        "hostname: empty",
    );
    check_agent_refused(
        |m| {
            if let FromAgent::ActualState(actual) = m {
                actual.instances = vec![actual.instances[0].clone(); 2];
            }
        },
        FromAgent::ActualState(actual_state()),
        "instances[1].instance: \"shop/web#0\" is listed twice",
    );
    check_agent_refused(
        |m| {
            if let FromAgent::ActualState(actual) = m {
                let one = actual.instances[0].clone();
                actual.instances = (0..1001)
                    .map(|slot| ActualInstance {
                        instance: InstanceId::new("shop", "web", slot),
                        ..one.clone()
                    })
                    .collect();
            }
        },
        FromAgent::ActualState(actual_state()),
        "instances: 1001 items, at most 1000",
    );
    let refused = FromServer::Refused(Refused {
        reason: "r".repeat(2000),
        agent_versions: VersionRange::new(1, 1),
        server_versions: VersionRange::new(1, 1),
    });
    assert_eq!(server_error(&raw_frame(&refused)), "reason: 2000 bytes, at most 1024");
    let revoke = FromServer::Revoke(Revoke {
        reason: "r".repeat(1025),
    });
    assert_eq!(server_error(&raw_frame(&revoke)), "reason: 1025 bytes, at most 1024");
    let welcome = FromServer::Welcome(Welcome {
        version: 0,
        server_version: "0.1.0".into(),
    });
    assert_eq!(server_error(&raw_frame(&welcome)), "version: 0: versions start at 1");
}

#[test]
fn desired_instance_bounds_name_their_field() {
    check_server_refused(
        |d| {
            let one = d.instances[0].clone();
            d.instances = (0..1001)
                .map(|slot| InstanceAssignment {
                    id: InstanceId::new("shop", "web", slot),
                    ..one.clone()
                })
                .collect();
        },
        "instances: 1001 items, at most 1000",
    );
    check_server_refused(
        |d| d.instances[2].id = web0(),
        "instances[2].id: \"shop/web#0\" is listed twice",
    );
    check_server_refused(
        |d| d.instances[1].id = InstanceId("shop/web#x".into()),
        "instances[1].id: \"shop/web#x\": not system/component#slot",
    );
    check_server_refused(
        |d| d.instances[0].args = vec!["a".into(); 257],
        "instances[0].args: 257 items, at most 256",
    );
    check_server_refused(
        |d| d.instances[0].args[1] = "a".repeat(4097),
        "instances[0].args[1]: 4097 bytes, at most 4096",
    );
    check_server_refused(
        |d| d.instances[0].args[1] = "a\0b".into(),
        "instances[0].args[1]: contains a NUL character",
    );
    check_server_refused(
        |d| d.instances[0].env = (0..257).map(|i| (format!("V{i}"), String::new())).collect(),
        "instances[0].env: 257 items, at most 256",
    );
    check_server_refused(
        |d| {
            d.instances[0].env.insert("A=B".into(), String::new());
        },
        "instances[0].env: \"A=B\": a name has no '=' and no NUL",
    );
    check_server_refused(
        |d| {
            d.instances[0].env.insert("BIG".into(), "v".repeat(5000));
        },
        "instances[0].env.\"BIG\": 5000 bytes, at most 4096",
    );
    check_server_refused(
        |d| d.instances[0].config_files = vec![d.instances[0].config_files[0].clone(); 33],
        "instances[0].config_files: 33 items, at most 32",
    );
    check_server_refused(
        |d| d.instances[0].config_files[0].content = "c".repeat(256 * 1024 + 1),
        "instances[0].config_files[0].content: 262145 bytes, at most 262144",
    );
    check_server_refused(
        |d| d.instances[0].config_files[0].path = "../../etc/passwd".into(),
        "instances[0].config_files[0].path: \"../../etc/passwd\": must be relative, without '..'",
    );
    check_server_refused(
        |d| d.instances[0].config_files[0].path = "/etc/passwd".into(),
        "instances[0].config_files[0].path: \"/etc/passwd\": must be relative, without '..'",
    );
    check_server_refused(
        |d| d.instances[0].ports = (0..65).map(|i| (format!("p{i}"), 1000 + i)).collect(),
        "instances[0].ports: 65 items, at most 64",
    );
    check_server_refused(
        |d| {
            d.instances[0].ports.insert("admin".into(), 0);
        },
        "instances[0].ports.\"admin\": 0 is not a port",
    );
    check_server_refused(
        |d| {
            d.instances[0].artifact.source = ArtifactSource::Url {
                url: "https://x/y".into(),
                sha256: "ABC".into(),
            };
        },
        "instances[0].artifact.source.sha256: \"ABC\": not 64 lowercase hex digits",
    );
    check_server_refused(
        |d| {
            d.instances[0].artifact.source = ArtifactSource::Url {
                url: "ftp://x/y".into(),
                sha256: "0".repeat(64),
            };
        },
        "instances[0].artifact.source.url: \"ftp://x/y\": not http(s)",
    );
    check_server_refused(
        |d| {
            d.instances[1].artifact.source = ArtifactSource::Path {
                path: "opt/../../worker".into(),
            }
        },
        "instances[1].artifact.source.path: \"opt/../../worker\": a relative path must not contain '..'",
    );
    check_server_refused(
        |d| d.instances[1].artifact.source = ArtifactSource::Path { path: "..".into() },
        "instances[1].artifact.source.path: \"..\": a relative path must not contain '..'",
    );
    check_server_refused(
        |d| d.instances[0].artifact.version = String::new(),
        "instances[0].artifact.version: empty",
    );
    check_server_refused(
        |d| d.instances[0].command = String::new(),
        "instances[0].command: empty",
    );
    check_server_refused(
        |d| d.instances[0].ports.clear(),
        "instances[0].health.probe.port: \"http\" is not one of the instance's ports",
    );
    check_server_refused(
        |d| {
            if let Some(health) = &mut d.instances[0].health {
                health.probe = Probe::Http {
                    port: "http".into(),
                    path: "health".into(),
                };
            }
        },
        "instances[0].health.probe.path: \"health\": must start with '/'",
    );
    check_server_refused(
        |d| {
            if let Some(health) = &mut d.instances[2].health {
                health.unhealthy_after = 0;
            }
        },
        "instances[2].health.unhealthy_after: 0, at least 1",
    );
    check_server_refused(
        |d| d.instances[0].stop_grace_ms = 3_600_001,
        "instances[0].stop_grace_ms: 3600001, at most 3600000",
    );
}

#[test]
fn artifact_paths_are_absolute_or_relative_without_dot_dot() {
    for path in [
        "/opt/worker/2.0.0",
        "bin/example-service",
        "example-service",
        "./bin/x",
        "/opt/../x",
    ] {
        let mut desired = desired();
        desired.instances[1].artifact.source = ArtifactSource::Path { path: path.into() };
        let message = FromServer::DesiredInstances(desired);
        let frame = encode(&message).unwrap_or_else(|error| panic!("{path}: {error}"));
        assert_eq!(decode_from_server(&frame).unwrap(), message, "{path}");
    }
}

#[test]
fn encode_refuses_a_frame_over_the_limit() {
    // Each instance is within its own bounds; together they are not.
    let mut desired = desired();
    let one = desired.instances[0].clone();
    desired.instances = (0..20)
        .map(|slot| {
            let mut instance = one.clone();
            instance.id = InstanceId::new("shop", "web", slot);
            instance.config_files[0].content = "c".repeat(256 * 1024);
            instance
        })
        .collect();
    let error = encode(&FromServer::DesiredInstances(desired)).unwrap_err();
    assert!(
        matches!(error, ProtoError::FrameTooLarge { len, max } if len > MAX_FRAME_BYTES && max == MAX_FRAME_BYTES),
        "{error:?}"
    );
}

// === hostile and malformed frames ===

#[test]
fn an_oversized_frame_is_refused_before_parsing() {
    // Garbage that, parsed, would be malformed: FrameTooLarge shows the size came first.
    let garbage = vec![b'['; 64 * 1024 * 1024];
    let error = decode_from_agent(&garbage).unwrap_err();
    assert!(
        matches!(error, ProtoError::FrameTooLarge { len, .. } if len == 64 * 1024 * 1024),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "frame of 67108864 bytes, at most 4194304");
    let error = decode_from_server(&garbage).unwrap_err();
    assert!(matches!(error, ProtoError::FrameTooLarge { .. }), "{error:?}");
    // One byte over is refused, the limit itself is parsed.
    let mut frame = vec![b' '; MAX_FRAME_BYTES + 1];
    assert!(matches!(
        decode_from_agent(&frame),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    frame.truncate(MAX_FRAME_BYTES);
    assert!(matches!(decode_from_agent(&frame), Err(ProtoError::Malformed { .. })));
}

#[test]
fn malformed_frames_say_what_is_wrong() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "malformed frame: EOF while parsing a value at line 1 column 0"),
        (
            b"{\"v\":1,",
            "malformed frame: EOF while parsing a value at line 1 column 7",
        ),
        (b"[1,2]", "malformed frame: not a JSON object"),
        (b"\xff\xfe", "malformed frame: expected value at line 1 column 1"),
        (b"{\"v\":1}", "the frame has no \"type\" string"),
        (b"{\"v\":1,\"type\":7}", "the frame has no \"type\" string"),
        (
            b"{\"v\":1,\"type\":\"launch_missiles\"}",
            "unknown message type \"launch_missiles\"",
        ),
        // A server message sent by an agent is unknown to the server.
        (
            b"{\"v\":1,\"type\":\"ack\",\"up_to_seq\":1}",
            "unknown message type \"ack\"",
        ),
        (b"{\"v\":1,\"type\":\"keepalive\"}", "keepalive: missing field `seq`"),
        (
            b"{\"v\":1,\"type\":\"keepalive\",\"seq\":-1}",
            "keepalive: invalid value: integer `-1`, expected u64",
        ),
        (
            b"{\"v\":1,\"type\":\"keepalive\",\"seq\":1,\"extra\":true}",
            "keepalive: unknown field `extra`, expected `seq`",
        ),
        (
            b"{\"type\":\"keepalive\",\"seq\":1}",
            "protocol version missing, this side speaks 1",
        ),
        (
            b"{\"v\":2,\"type\":\"keepalive\",\"seq\":1}",
            "protocol version 2, this side speaks 1",
        ),
        (
            b"{\"v\":\"1\",\"type\":\"keepalive\",\"seq\":1}",
            "protocol version \"1\", this side speaks 1",
        ),
        (
            b"{\"v\":65537,\"type\":\"keepalive\",\"seq\":1}",
            "protocol version 65537, this side speaks 1",
        ),
        // The version is checked before the type: a newer peer is told apart from a broken one.
        (
            b"{\"v\":2,\"type\":\"teleport\"}",
            "protocol version 2, this side speaks 1",
        ),
    ];
    for (frame, expect) in cases {
        assert_eq!(agent_error(frame), *expect, "{}", String::from_utf8_lossy(frame));
    }
    assert!(matches!(
        decode_from_agent(b"{\"v\":2,\"type\":\"keepalive\",\"seq\":1}"),
        Err(ProtoError::Version { found: Some(found), supported }) if found == "2" && supported == VersionRange::new(1, 1)
    ));
    assert!(matches!(
        decode_from_server(b"{\"v\":1,\"type\":\"hello\"}"),
        Err(ProtoError::UnknownType { found }) if found == "hello"
    ));
    assert_eq!(
        server_error(b"{\"v\":1,\"type\":\"ping\",\"now\":1}"),
        "ping: unknown field `now`, there are no fields"
    );
    // Nested types refuse unknown fields too.
    let mut value = serde_json::to_value(FromServer::DesiredInstances(desired())).unwrap();
    value["v"] = json!(1);
    value["instances"][0]["artifact"]["source"]["mirror"] = json!("https://elsewhere");
    let error = server_error(&serde_json::to_vec(&value).unwrap());
    assert!(
        error.starts_with("desired_instances: unknown field `mirror`"),
        "{error}"
    );
    // Nesting beyond serde_json's limit is refused, not a stack overflow.
    let deep = format!(
        "{{\"v\":1,\"type\":\"ping\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(
        decode_from_server(deep.as_bytes()),
        Err(ProtoError::Malformed { .. })
    ));
}

#[test]
fn the_handshake_is_read_across_versions() {
    // A future agent: another version, a field this side does not know. Read, so it can be refused
    // with a reason.
    let mut value = serde_json::to_value(FromAgent::Hello(hello())).unwrap();
    let object = value.as_object_mut().unwrap();
    object.insert("v".into(), json!(7));
    object.insert("versions".into(), json!({"min": 5, "max": 7}));
    object.insert("attestation".into(), json!("tpm"));
    object["facts"].as_object_mut().unwrap().insert("gpus".into(), json!(2));
    let frame = serde_json::to_vec(&value).unwrap();
    let FromAgent::Hello(hello) = decode_from_agent(&frame).unwrap() else {
        panic!("not a hello")
    };
    let refused = Refused::from(negotiate(hello.versions, endstate_agent_proto::SUPPORTED_VERSIONS).unwrap_err());
    assert_eq!(
        refused.reason,
        "no common protocol version: the agent speaks 5..=7, the server speaks 1"
    );
    // A future server's refusal is read by this agent too.
    let mut value: Value = serde_json::to_value(FromServer::Refused(refused.clone())).unwrap();
    value.as_object_mut().unwrap().insert("v".into(), json!(9));
    value.as_object_mut().unwrap().insert("retry_after_s".into(), json!(60));
    let decoded = decode_from_server(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(decoded, FromServer::Refused(refused));
    // But a handshake still needs a numeric `v`.
    assert_eq!(
        agent_error(b"{\"type\":\"hello\"}"),
        "protocol version missing, this side speaks 1"
    );
    // And every other message of a future version is refused.
    let mut ack = serde_json::to_value(FromServer::Ack(Ack { up_to_seq: 1 })).unwrap();
    ack.as_object_mut().unwrap().insert("v".into(), json!(2));
    assert!(matches!(
        decode_from_server(&serde_json::to_vec(&ack).unwrap()),
        Err(ProtoError::Version { .. })
    ));
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn no_input_panics_the_decoders() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"{}[]\":,0123456789-.eE truefalsnl\\uv\x00\xff";
    for _ in 0..20_000 {
        let len = rng.below(200);
        let frame: Vec<u8> = if rng.below(2) == 0 {
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect()
        };
        let _ = decode_from_agent(&frame);
        let _ = decode_from_server(&frame);
    }
    // Mutations of valid frames reach deeper: past the JSON parser, into shapes and bounds.
    let valid: Vec<Vec<u8>> = every_agent_message()
        .iter()
        .map(|m| encode(m).unwrap())
        .chain(every_server_message().iter().map(|m| encode(m).unwrap()))
        .collect();
    let mut n_decoded = 0;
    for _ in 0..20_000 {
        let mut frame = valid[rng.below(valid.len())].clone();
        for _ in 0..=rng.below(3) {
            let byte_idx = rng.below(frame.len());
            match rng.below(3) {
                0 => frame[byte_idx] = alphabet[rng.below(alphabet.len())],
                1 => {
                    frame.remove(byte_idx);
                }
                _ => frame.insert(byte_idx, alphabet[rng.below(alphabet.len())]),
            }
        }
        n_decoded += usize::from(decode_from_agent(&frame).is_ok()) + usize::from(decode_from_server(&frame).is_ok());
    }
    // Some mutations are harmless (a digit for a digit): the loop did reach valid messages.
    assert!(n_decoded > 0);
}

// === rules ===

#[test]
fn generations_only_move_forward() {
    assert_eq!(accept_generation(None, Generation(0)), GenerationDecision::Accept);
    assert_eq!(accept_generation(None, Generation(5)), GenerationDecision::Accept);
    assert_eq!(
        accept_generation(Some(Generation(5)), Generation(6)),
        GenerationDecision::Accept
    );
    let same = accept_generation(Some(Generation(5)), Generation(5));
    assert_eq!(
        same,
        GenerationDecision::Ignore(IgnoreReason::Same { current: Generation(5) })
    );
    let older = accept_generation(Some(Generation(5)), Generation(4));
    assert_eq!(
        older,
        GenerationDecision::Ignore(IgnoreReason::Older {
            current: Generation(5),
            incoming: Generation(4)
        })
    );
    let GenerationDecision::Ignore(reason) = older else {
        panic!("accepted an older generation")
    };
    assert_eq!(
        reason.to_string(),
        "generation g4 is older than g5, which the agent has"
    );
    let GenerationDecision::Ignore(reason) = same else {
        panic!("accepted the same generation")
    };
    assert_eq!(reason.to_string(), "generation g5 is already applied");
}
