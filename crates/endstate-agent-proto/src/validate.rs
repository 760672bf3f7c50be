//! The bounds and rules of every message, checked after parsing and before encoding.
//!
//! Paths: an artifact `path` source is absolute, or relative (resolved by the agent against its
//! artifact root) without `..` segments; a config file path is relative without `..`.
//!
//! Field paths are built only when a check fails, so a valid batch of observations costs no
//! allocation here.

use std::collections::BTreeSet;

use endstate_types::validate_name;

use crate::error::ProtoError;
use crate::limits::{
    MAX_ACTION_OUTPUT_BYTES, MAX_ACTION_PARAMS, MAX_ACTION_TIMEOUT_MS, MAX_ACTIONS, MAX_ARGS, MAX_CHECK_OUTPUT_BYTES,
    MAX_CHECK_STATUS, MAX_CHECKS, MAX_CONFIG_FILE_BYTES, MAX_CONFIG_FILES, MAX_DETAIL_BYTES, MAX_DISKS, MAX_ENV,
    MAX_INSTANCES, MAX_LABELS, MAX_LOG_BYTES, MAX_OBSERVATIONS, MAX_PATH_BYTES, MAX_PEM_BYTES, MAX_PORTS,
    MAX_STOP_GRACE_MS, MAX_WORD_BYTES,
};
use crate::message::{
    ActualState, ArtifactSource, CheckProbe, DesiredInstances, Facts, FromAgent, FromServer, HealthProbe, Hello,
    InstanceAssignment, InstanceId, Observations, Observed, Probe, Refused, VersionRange, Welcome,
};

type Result<T = ()> = std::result::Result<T, ProtoError>;

/// Checks every bound and rule of a message sent by an agent.
pub(crate) fn from_agent(message: &FromAgent) -> Result {
    match message {
        FromAgent::Hello(hello) => check_hello(hello),
        FromAgent::Facts(facts) => check_facts(facts, ""),
        FromAgent::Keepalive(_) => Ok(()),
        FromAgent::Observations(batch) => check_observations(batch),
        FromAgent::ActualState(actual) => check_actual_state(actual),
        FromAgent::Logs(logs) => {
            instance_id(&logs.instance, || "instance".into())?;
            no_nul(&logs.stdout, MAX_LOG_BYTES, || "stdout".into())?;
            no_nul(&logs.stderr, MAX_LOG_BYTES, || "stderr".into())
        }
        FromAgent::Renew(renew) => text(&renew.csr_pem, MAX_PEM_BYTES, || "csr_pem".into()),
        FromAgent::ActionOutput(output) => {
            word(&output.run, || "run".into())?;
            no_nul(&output.data, MAX_ACTION_OUTPUT_BYTES, || "data".into())
        }
    }
}

/// Checks every bound and rule of a message sent by the server.
pub(crate) fn from_server(message: &FromServer) -> Result {
    match message {
        FromServer::Welcome(welcome) => check_welcome(welcome),
        FromServer::Refused(refused) => check_refused(refused),
        FromServer::Ack(_) | FromServer::Ping(_) => Ok(()),
        FromServer::DesiredInstances(desired) => check_desired(desired),
        FromServer::Revoke(revoke) => text(&revoke.reason, MAX_DETAIL_BYTES, || "reason".into()),
        FromServer::LogsRequest(request) => instance_id(&request.instance, || "instance".into()),
        FromServer::Certificate(certificate) => text(&certificate.cert_pem, MAX_PEM_BYTES, || "cert_pem".into()),
        FromServer::RunAction(run) => {
            word(&run.run, || "run".into())?;
            text(&run.signature, MAX_DETAIL_BYTES, || "signature".into())?;
            word(&run.action, || "action".into())?;
            count(run.params.len(), MAX_ACTION_PARAMS, || "params".into())?;
            for (name, value) in &run.params {
                word(name, || "params (a name)".into())?;
                no_nul(value, MAX_PATH_BYTES, || format!("params.{}", shown(name)))?;
            }
            Ok(())
        }
        FromServer::CancelAction(cancel) => word(&cancel.run, || "run".into()),
    }
}

/// Checks that a range is not empty and starts at 1 or above.
pub(crate) fn check_range(range: VersionRange, field: impl FnOnce() -> String) -> Result {
    if range.min == 0 || range.min > range.max {
        return Err(invalid(
            field(),
            format!("{}..={} is not a version range (1 <= min <= max)", range.min, range.max),
        ));
    }
    Ok(())
}

// === messages ===

fn check_hello(hello: &Hello) -> Result {
    check_range(hello.versions, || "versions".into())?;
    word(&hello.agent_version, || "agent_version".into())?;
    word(&hello.host.0, || "host".into())?;
    count(hello.labels.len(), MAX_LABELS, || "labels".into())?;
    for (key, value) in &hello.labels {
        word(key, || "labels (a key)".into())?;
        text(value, MAX_WORD_BYTES, || format!("labels.{}", shown(key)))?;
    }
    check_facts(&hello.facts, "facts.")
}

fn check_facts(facts: &Facts, prefix: &str) -> Result {
    word(&facts.hostname, || format!("{prefix}hostname"))?;
    text(&facts.os, MAX_WORD_BYTES, || format!("{prefix}os"))?;
    text(&facts.kernel, MAX_WORD_BYTES, || format!("{prefix}kernel"))?;
    text(&facts.arch, MAX_WORD_BYTES, || format!("{prefix}arch"))?;
    word(&facts.agent_version, || format!("{prefix}agent_version"))?;
    count(facts.disks.len(), MAX_DISKS, || format!("{prefix}disks"))?;
    for (disk_idx, disk) in facts.disks.iter().enumerate() {
        text(&disk.mount, MAX_PATH_BYTES, || {
            format!("{prefix}disks[{disk_idx}].mount")
        })?;
    }
    Ok(())
}

fn check_observations(batch: &Observations) -> Result {
    let observations = &batch.observations;
    if observations.is_empty() {
        return Err(invalid(
            "observations",
            "empty: a batch has at least one observation".into(),
        ));
    }
    count(observations.len(), MAX_OBSERVATIONS, || "observations".into())?;
    let mut previous: u64 = 0;
    for (obs_idx, observation) in observations.iter().enumerate() {
        let at = |field: &str| format!("observations[{obs_idx}].{field}");
        if observation.seq <= previous {
            let reason = if obs_idx == 0 {
                "0: sequence numbers start at 1".to_owned()
            } else {
                format!(
                    "{} after {previous}: sequence numbers strictly increase",
                    observation.seq
                )
            };
            return Err(invalid(at("seq"), reason));
        }
        previous = observation.seq;
        match &observation.observed {
            Observed::InstanceState(change) => {
                instance_id(&change.instance, || at("observed.instance"))?;
                word(&change.version, || at("observed.version"))?;
                text(&change.detail, MAX_DETAIL_BYTES, || at("observed.detail"))?;
            }
            Observed::Health(health) => {
                instance_id(&health.instance, || at("observed.instance"))?;
                text(&health.detail, MAX_DETAIL_BYTES, || at("observed.detail"))?;
            }
            Observed::Resources(resources) => instance_id(&resources.instance, || at("observed.instance"))?,
            Observed::Check(check) => {
                word(&check.name, || at("observed.name"))?;
                if check.status > MAX_CHECK_STATUS {
                    return Err(invalid(
                        at("observed.status"),
                        format!(
                            "{}, at most {MAX_CHECK_STATUS} (0 ok, 1 warning, 2 critical, 3 unknown)",
                            check.status
                        ),
                    ));
                }
                text(&check.output, MAX_CHECK_OUTPUT_BYTES, || at("observed.output"))?;
                text(&check.perfdata, MAX_CHECK_OUTPUT_BYTES, || at("observed.perfdata"))?;
            }
            Observed::Action(result) => {
                word(&result.run, || at("observed.run"))?;
                word(&result.action, || at("observed.action"))?;
                no_nul(&result.output, MAX_ACTION_OUTPUT_BYTES, || at("observed.output"))?;
                text(&result.detail, MAX_DETAIL_BYTES, || at("observed.detail"))?;
            }
        }
    }
    Ok(())
}

fn check_actual_state(actual: &ActualState) -> Result {
    count(actual.instances.len(), MAX_INSTANCES, || "instances".into())?;
    let mut seen = BTreeSet::new();
    for (instance_idx, instance) in actual.instances.iter().enumerate() {
        let at = |field: &str| format!("instances[{instance_idx}].{field}");
        instance_id(&instance.instance, || at("instance"))?;
        if !seen.insert(instance.instance.0.as_str()) {
            return Err(invalid(
                at("instance"),
                format!("{} is listed twice", shown(&instance.instance.0)),
            ));
        }
        word(&instance.version, || at("version"))?;
    }
    Ok(())
}

fn check_welcome(welcome: &Welcome) -> Result {
    if welcome.version == 0 {
        return Err(invalid("version", "0: versions start at 1".into()));
    }
    word(&welcome.server_version, || "server_version".into())
}

fn check_refused(refused: &Refused) -> Result {
    text(&refused.reason, MAX_DETAIL_BYTES, || "reason".into())?;
    check_range(refused.agent_versions, || "agent_versions".into())?;
    check_range(refused.server_versions, || "server_versions".into())
}

fn check_desired(desired: &DesiredInstances) -> Result {
    count(desired.actions.len(), MAX_ACTIONS, || "actions".into())?;
    let mut names = BTreeSet::new();
    for (idx, action) in desired.actions.iter().enumerate() {
        let at = |field: &str| format!("actions[{idx}].{field}");
        word(&action.name, || at("name"))?;
        if !names.insert(action.name.as_str()) {
            return Err(invalid(at("name"), format!("{} is listed twice", shown(&action.name))));
        }
        if action.command.is_empty() || (action.shell && action.command.len() != 1) {
            return Err(invalid(
                at("command"),
                "at least one element; exactly one with shell".into(),
            ));
        }
        count(action.command.len(), MAX_ARGS, || at("command"))?;
        for (i, arg) in action.command.iter().enumerate() {
            no_nul(arg, MAX_PATH_BYTES, || at(&format!("command[{i}]")))?;
        }
        count(action.parameters.len(), MAX_ACTION_PARAMS, || at("parameters"))?;
        for (name, parameter) in &action.parameters {
            word(name, || at("parameters (a name)"))?;
            count(parameter.values.len(), MAX_ARGS, || {
                at(&format!("parameters.{}.values", shown(name)))
            })?;
            for value in &parameter.values {
                no_nul(value, MAX_WORD_BYTES, || {
                    at(&format!("parameters.{}.values", shown(name)))
                })?;
            }
        }
        if action.timeout_ms == 0 || action.timeout_ms > MAX_ACTION_TIMEOUT_MS {
            return Err(invalid(
                at("timeout_ms"),
                format!("{}, must be 1 to {MAX_ACTION_TIMEOUT_MS}", action.timeout_ms),
            ));
        }
    }
    count(desired.checks.len(), MAX_CHECKS, || "checks".into())?;
    let mut ids = BTreeSet::new();
    for (idx, check) in desired.checks.iter().enumerate() {
        let at = |field: &str| format!("checks[{idx}].{field}");
        text(&check.id, MAX_DETAIL_BYTES, || at("id"))?;
        word(&check.check, || at("check"))?;
        text(&check.target, MAX_WORD_BYTES, || at("target"))?;
        if !ids.insert(check.id.as_str()) {
            return Err(invalid(at("id"), format!("{} is listed twice", shown(&check.id))));
        }
        if check.interval_ms == 0 || check.timeout_ms == 0 {
            return Err(invalid(
                at("interval_ms"),
                "the interval and the timeout must be above 0".into(),
            ));
        }
        match &check.probe {
            CheckProbe::Exec { command, args } => {
                path_like(command, || at("probe.command"))?;
                count(args.len(), MAX_ARGS, || at("probe.args"))?;
                for (i, arg) in args.iter().enumerate() {
                    text(arg, MAX_PATH_BYTES, || at(&format!("probe.args[{i}]")))?;
                }
            }
            CheckProbe::Http { url, body_match, .. } => {
                text(url, MAX_PATH_BYTES, || at("probe.url"))?;
                if let Some(body_match) = body_match {
                    text(body_match, MAX_DETAIL_BYTES, || at("probe.body_match"))?;
                }
            }
            CheckProbe::Tcp { host, .. } => word(host, || at("probe.host"))?,
        }
    }
    count(desired.instances.len(), MAX_INSTANCES, || "instances".into())?;
    let mut seen = BTreeSet::new();
    for (instance_idx, assignment) in desired.instances.iter().enumerate() {
        check_assignment(assignment, &|field: &str| format!("instances[{instance_idx}].{field}"))?;
        if !seen.insert(assignment.id.0.as_str()) {
            return Err(invalid(
                format!("instances[{instance_idx}].id"),
                format!("{} is listed twice", shown(&assignment.id.0)),
            ));
        }
    }
    Ok(())
}

fn check_assignment(assignment: &InstanceAssignment, at: &dyn Fn(&str) -> String) -> Result {
    instance_id(&assignment.id, || at("id"))?;
    word(&assignment.artifact.version, || at("artifact.version"))?;
    match &assignment.artifact.source {
        ArtifactSource::Path { path } => {
            path_like(path, || at("artifact.source.path"))?;
            // Absolute, or relative to the agent's artifact root; a relative one must stay under it.
            if !path.starts_with('/') && path.split('/').any(|part| part == "..") {
                return Err(invalid(
                    at("artifact.source.path"),
                    format!("{}: a relative path must not contain '..'", shown(path)),
                ));
            }
        }
        ArtifactSource::Url { url, sha256 } => {
            path_like(url, || at("artifact.source.url"))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    at("artifact.source.url"),
                    format!("{}: not http(s)", shown(url)),
                ));
            }
            let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
            if sha256.len() != 64 || !sha256.bytes().all(is_hex) {
                return Err(invalid(
                    at("artifact.source.sha256"),
                    format!("{}: not 64 lowercase hex digits", shown(sha256)),
                ));
            }
        }
    }
    path_like(&assignment.command, || at("command"))?;
    count(assignment.args.len(), MAX_ARGS, || at("args"))?;
    for (arg_idx, arg) in assignment.args.iter().enumerate() {
        no_nul(arg, MAX_PATH_BYTES, || at(&format!("args[{arg_idx}]")))?;
    }
    count(assignment.env.len(), MAX_ENV, || at("env"))?;
    for (key, value) in &assignment.env {
        word(key, || at("env (a name)"))?;
        if key.contains(['=', '\0']) {
            return Err(invalid(
                at("env"),
                format!("{}: a name has no '=' and no NUL", shown(key)),
            ));
        }
        no_nul(value, MAX_PATH_BYTES, || at(&format!("env.{}", shown(key))))?;
    }
    count(assignment.config_files.len(), MAX_CONFIG_FILES, || at("config_files"))?;
    for (file_idx, file) in assignment.config_files.iter().enumerate() {
        let field = || at(&format!("config_files[{file_idx}].path"));
        path_like(&file.path, field)?;
        if file.path.starts_with('/') || file.path.split('/').any(|part| part == "..") {
            return Err(invalid(
                field(),
                format!("{}: must be relative, without '..'", shown(&file.path)),
            ));
        }
        text(&file.content, MAX_CONFIG_FILE_BYTES, || {
            at(&format!("config_files[{file_idx}].content"))
        })?;
    }
    count(assignment.ports.len(), MAX_PORTS, || at("ports"))?;
    for (name, port) in &assignment.ports {
        word(name, || at("ports (a name)"))?;
        if *port == 0 {
            return Err(invalid(at(&format!("ports.{}", shown(name))), "0 is not a port".into()));
        }
    }
    if let Some(health) = &assignment.health {
        check_probe(health, assignment, at)?;
    }
    if let Some(run_as) = &assignment.run_as {
        word(&run_as.user, || at("run_as.user"))?;
        no_nul(&run_as.user, MAX_WORD_BYTES, || at("run_as.user"))?;
        if let Some(group) = &run_as.group {
            word(group, || at("run_as.group"))?;
            no_nul(group, MAX_WORD_BYTES, || at("run_as.group"))?;
        }
    }
    if assignment.stop_grace_ms > MAX_STOP_GRACE_MS {
        return Err(invalid(
            at("stop_grace_ms"),
            format!("{}, at most {MAX_STOP_GRACE_MS}", assignment.stop_grace_ms),
        ));
    }
    Ok(())
}

fn check_probe(health: &HealthProbe, assignment: &InstanceAssignment, at: &dyn Fn(&str) -> String) -> Result {
    let known_port = |port: &String| {
        if assignment.ports.contains_key(port) {
            Ok(())
        } else {
            Err(invalid(
                at("health.probe.port"),
                format!("{} is not one of the instance's ports", shown(port)),
            ))
        }
    };
    match &health.probe {
        Probe::Http { port, path } => {
            known_port(port)?;
            path_like(path, || at("health.probe.path"))?;
            if !path.starts_with('/') {
                return Err(invalid(
                    at("health.probe.path"),
                    format!("{}: must start with '/'", shown(path)),
                ));
            }
        }
        Probe::Tcp { port } => known_port(port)?,
        Probe::Exec { command, args } => {
            path_like(command, || at("health.probe.command"))?;
            count(args.len(), MAX_ARGS, || at("health.probe.args"))?;
            for (arg_idx, arg) in args.iter().enumerate() {
                no_nul(arg, MAX_PATH_BYTES, || at(&format!("health.probe.args[{arg_idx}]")))?;
            }
        }
    }
    for (value, field) in [(health.interval_ms, "interval_ms"), (health.timeout_ms, "timeout_ms")] {
        if value == 0 {
            return Err(invalid(at(&format!("health.{field}")), "0, at least 1".into()));
        }
    }
    for (value, field) in [
        (health.healthy_after, "healthy_after"),
        (health.unhealthy_after, "unhealthy_after"),
    ] {
        if value == 0 {
            return Err(invalid(at(&format!("health.{field}")), "0, at least 1".into()));
        }
    }
    Ok(())
}

// === rules ===

/// An instance id: `system/component#slot`.
fn instance_id(id: &InstanceId, field: impl FnOnce() -> String) -> Result {
    let id = &id.0;
    if id.len() > MAX_WORD_BYTES {
        return Err(ProtoError::TooLong {
            field: field(),
            len: id.len(),
            max: MAX_WORD_BYTES,
        });
    }
    let parts = id
        .split_once('/')
        .and_then(|(system, rest)| rest.split_once('#').map(|(component, slot)| (system, component, slot)));
    let well_formed = parts.is_some_and(|(system, component, slot)| {
        validate_name(system).is_ok()
            && validate_name(component).is_ok()
            && !slot.is_empty()
            && slot.bytes().all(|b| b.is_ascii_digit())
            && slot.parse::<u32>().is_ok()
    });
    if !well_formed {
        return Err(invalid(field(), format!("{}: not system/component#slot", shown(id))));
    }
    Ok(())
}

/// A non-empty short word.
fn word(value: &str, field: impl FnOnce() -> String) -> Result {
    if value.is_empty() {
        return Err(invalid(field(), "empty".into()));
    }
    text(value, MAX_WORD_BYTES, field)
}

/// A non-empty path, command or URL without NUL.
fn path_like(value: &str, field: impl FnOnce() -> String) -> Result {
    if value.is_empty() {
        return Err(invalid(field(), "empty".into()));
    }
    no_nul(value, MAX_PATH_BYTES, field)
}

/// A string that reaches `exec` or the file system: bounded and without NUL.
fn no_nul(value: &str, max: usize, field: impl FnOnce() -> String) -> Result {
    if value.len() > max {
        return Err(ProtoError::TooLong {
            field: field(),
            len: value.len(),
            max,
        });
    }
    if value.contains('\0') {
        return Err(invalid(field(), "contains a NUL character".into()));
    }
    Ok(())
}

fn text(value: &str, max: usize, field: impl FnOnce() -> String) -> Result {
    if value.len() > max {
        return Err(ProtoError::TooLong {
            field: field(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn count(len: usize, max: usize, field: impl FnOnce() -> String) -> Result {
    if len > max {
        return Err(ProtoError::TooMany {
            field: field(),
            len,
            max,
        });
    }
    Ok(())
}

fn invalid(field: impl Into<String>, reason: String) -> ProtoError {
    ProtoError::Invalid {
        field: field.into(),
        reason,
    }
}

/// A value quoted for an error message, cut to a readable length (it may be 4 MiB of garbage).
fn shown(value: &str) -> String {
    const MAX_SHOWN: usize = 64;
    if value.len() <= MAX_SHOWN {
        return format!("{value:?}");
    }
    let mut end = MAX_SHOWN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &value[..end])
}
