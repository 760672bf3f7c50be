//! Sanctioned actions: the agent runs an action only from the catalogue of its current desired
//! set, fills in only the parameters it declares, and reports how each run ended.
//!
//! - A `run_action` names an action and gives parameter values; it never carries a command. The
//!   request is refused (an `action` observation with outcome `refused` and the reason, which the
//!   server puts on the timeline) when its generation is not the one the agent holds, the action
//!   is not in that catalogue, a parameter is not declared, missing from a placeholder, or does
//!   not fit its type, enumeration or range, or a run of the same id is already running.
//! - The command is the catalogue's argv with `{{ params.<name> }}` replaced by the values: each
//!   value lands inside one argument and is never split or interpreted. With `shell`, the single
//!   element runs under `sh -c` and a value never enters the command's text: the placeholder
//!   becomes `"$ENDSTATE_PARAM_<NAME>"` (a quoted reference) and the value is that variable of
//!   the process's environment, so the shell expands it as one word and never parses it.
//! - The process runs in the agent's artifact root (so `bin/tool` is an artifact's file; others
//!   are found on the minimal `PATH`), in its own process group, without stdin, with a minimal environment
//!   (`PATH=/usr/sbin:/usr/bin:/sbin:/bin`, `LC_ALL=C`); its output goes to the server live, in
//!   pieces (not durable), and its tail ([`MAX_ACTION_OUTPUT_BYTES`]) is in the result, which is an
//!   observation: buffered on disk and resent until acknowledged, like every other one.
//! - At the timeout or on `cancel_action`, the whole group is killed (SIGKILL).
//!
//! # Caveats
//! - A string parameter's `pattern` is checked by the server only (the agent has no regular
//!   expressions); values are still confined to their argument, or to a variable for the shell.
//! - Runs are not durable on the agent: a killed agent does not resume them (their process groups
//!   are recorded with the instances' and stopped by the next agent at its start, and the server
//!   counts such hosts as lost).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use endstate_agent_proto::limits::{MAX_ACTION_OUTPUT_BYTES, MAX_DETAIL_BYTES};
use endstate_agent_proto::{
    ActionAssignment, ActionOutcome, ActionOutput, ActionParameter, ActionParameterType, ActionResult, Observed,
    OutputStream, RunAction,
};
use endstate_types::Generation;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::checks::cut;
use tokio::sync::{mpsc, oneshot};

/// Where results go (durable) and where output goes (live, dropped when nobody listens); and
/// where a run's process group is recorded (`Some(label)`) and forgotten (`None`), so an agent
/// restarted after a `kill -9` stops what its predecessor's runs left running.
#[derive(Clone)]
pub(crate) struct Outlets {
    pub(crate) results: mpsc::Sender<Observed>,
    pub(crate) output: mpsc::Sender<ActionOutput>,
    pub(crate) groups: Arc<dyn Fn(u32, Option<String>) + Send + Sync>,
}

/// The catalogue of the current set and the runs in flight.
pub(crate) struct Actions {
    outlets: Outlets,
    /// Where commands run: the agent's artifact root, so `bin/tool` names an artifact's file.
    dir: PathBuf,
    catalogue: Mutex<(Option<Generation>, BTreeMap<String, ActionAssignment>)>,
    running: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions").finish_non_exhaustive()
    }
}

impl Actions {
    pub(crate) fn new(outlets: Outlets, dir: PathBuf) -> Actions {
        Actions {
            outlets,
            dir,
            catalogue: Mutex::new((None, BTreeMap::new())),
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The catalogue of an accepted set replaces the previous one (runs in flight go on).
    pub(crate) fn set(&self, generation: Generation, actions: &[ActionAssignment]) {
        let mut catalogue = self.catalogue.lock().unwrap_or_else(PoisonError::into_inner);
        *catalogue = (
            Some(generation),
            actions.iter().map(|a| (a.name.clone(), a.clone())).collect(),
        );
    }

    /// Starts a run, or reports its refusal. Returns at once; the result comes as an observation.
    pub(crate) async fn run(&self, request: RunAction) {
        let prepared = {
            let catalogue = self.catalogue.lock().unwrap_or_else(PoisonError::into_inner);
            prepare(catalogue.0, &catalogue.1, &request)
        };
        let (argv, env, timeout) = match prepared {
            Ok(ok) => ok,
            Err(reason) => {
                tracing::warn!(run = request.run, action = request.action, reason, "Action refused.");
                self.report(refused(&request, reason)).await;
                return;
            }
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let duplicate = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.contains_key(&request.run) {
                true
            } else {
                running.insert(request.run.clone(), cancel_tx);
                false
            }
        };
        if duplicate {
            let reason = format!("run {} is already running here", request.run);
            self.report(refused(&request, reason)).await;
            return;
        }
        tracing::info!(run = request.run, action = request.action, ?argv, "Action starting.");
        let outlets = self.outlets.clone();
        let running = Arc::clone(&self.running);
        let dir = self.dir.clone();
        tokio::spawn(async move {
            let result = execute(&request, (&argv, &env), &dir, timeout, cancel_rx, &outlets).await;
            running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&request.run);
            tracing::info!(run = request.run, outcome = ?result.outcome, "Action ended.");
            let _ = outlets.results.send(Observed::Action(result)).await;
        });
    }

    /// Reports a request refused before it reached the catalogue (a bad signature).
    pub(crate) async fn refuse(&self, request: &RunAction, reason: String) {
        tracing::warn!(run = request.run, action = request.action, reason, "Action refused.");
        self.report(refused(request, reason)).await;
    }

    /// Cancels a run in flight; an unknown run (already ended) is ignored.
    pub(crate) fn cancel(&self, run: &str) {
        let cancel = self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(run);
        if let Some(cancel) = cancel {
            let _ = cancel.send(());
        }
    }

    async fn report(&self, result: ActionResult) {
        let _ = self.outlets.results.send(Observed::Action(result)).await;
    }
}

fn refused(request: &RunAction, reason: String) -> ActionResult {
    ActionResult {
        run: request.run.clone(),
        action: request.action.clone(),
        outcome: ActionOutcome::Refused,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        output: String::new(),
        detail: cut(reason, MAX_DETAIL_BYTES),
    }
}

/// Checks that a request is signed by the server's CA (the certificate pinned at enrolment).
pub(crate) fn check_signature(ca_pem: &str, request: &RunAction) -> Result<(), String> {
    let signature = hex_decode(&request.signature).ok_or_else(|| "the request's signature is not hex".to_owned())?;
    endstate_pki::verify_ca_signature(ca_pem, &request.signed_bytes(), &signature)
        .map_err(|error| format!("the request is not signed by this agent's server: {error}"))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A checked request: its argv, the variables it adds to the minimal environment, its timeout.
pub(crate) type Prepared = (Vec<String>, BTreeMap<String, String>, Duration);

/// Checks a request against the catalogue and renders its argv. Pure.
pub(crate) fn prepare(
    generation: Option<Generation>,
    catalogue: &BTreeMap<String, ActionAssignment>,
    request: &RunAction,
) -> Result<Prepared, String> {
    let Some(held) = generation else {
        return Err("this agent holds no catalogue yet".to_owned());
    };
    if held != request.generation {
        return Err(format!(
            "the request is for the catalogue of generation {}, this agent holds generation {}",
            request.generation.0, held.0
        ));
    }
    let Some(action) = catalogue.get(&request.action) else {
        return Err(format!(
            "{} is not in this host's catalogue at generation {}",
            request.action, held.0
        ));
    };
    for (name, value) in &request.params {
        let Some(declared) = action.parameters.get(name) else {
            return Err(format!("parameter {name} is not declared by {}", action.name));
        };
        check_value(name, declared, value)?;
    }
    if action.shell {
        // `max-age` and `max_age` would share ENDSTATE_PARAM_MAX_AGE: one value would stand for both.
        let mut variables: BTreeMap<String, &str> = BTreeMap::new();
        for name in action.parameters.keys() {
            if let Some(other) = variables.insert(param_variable(name), name) {
                return Err(format!(
                    "parameters {other} and {name} of {} would share the variable {}; rename one",
                    action.name,
                    param_variable(name)
                ));
            }
        }
    }
    let mut argv = Vec::with_capacity(action.command.len());
    let mut env = BTreeMap::new();
    for element in &action.command {
        argv.push(fill(element, &request.params, action.shell.then_some(&mut env))?);
    }
    if action.shell {
        argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), argv.remove(0)];
    }
    Ok((argv, env, Duration::from_millis(action.timeout_ms)))
}

/// The variable a parameter's value is passed in under `shell`: `ENDSTATE_PARAM_` and its name
/// in capitals, anything but letters and digits as `_`.
pub(crate) fn param_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ENDSTATE_PARAM_{name}")
}

fn check_value(name: &str, declared: &ActionParameter, value: &str) -> Result<(), String> {
    match declared.kind {
        ActionParameterType::String => Ok(()),
        ActionParameterType::Boolean if value == "true" || value == "false" => Ok(()),
        ActionParameterType::Boolean => Err(format!("parameter {name}: {value:?} is not true or false")),
        ActionParameterType::Enum if declared.values.iter().any(|v| v == value) => Ok(()),
        ActionParameterType::Enum => Err(format!(
            "parameter {name}: {value:?} is not one of {}",
            declared.values.join(", ")
        )),
        ActionParameterType::Integer => {
            let n: i64 = value
                .parse()
                .map_err(|_| format!("parameter {name}: {value:?} is not a whole number"))?;
            if declared.min.is_some_and(|min| n < min) || declared.max.is_some_and(|max| n > max) {
                return Err(format!(
                    "parameter {name}: {n} is outside {}..={}",
                    declared.min.map(|m| m.to_string()).unwrap_or_default(),
                    declared.max.map(|m| m.to_string()).unwrap_or_default()
                ));
            }
            Ok(())
        }
    }
}

/// Replaces every `{{ params.<name> }}` in `template`; any other placeholder is an error (the
/// server renders everything else). For a shell command (`shell_env` given), the placeholder
/// becomes a quoted reference to the value's variable, which goes into `shell_env`.
fn fill(
    template: &str,
    params: &BTreeMap<String, String>,
    mut shell_env: Option<&mut BTreeMap<String, String>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("an unclosed placeholder in {template:?}"));
        };
        let key = after[..end].trim();
        let Some(name) = key.strip_prefix("params.") else {
            return Err(format!("{{{{ {key} }}}} is not a parameter placeholder"));
        };
        let Some(value) = params.get(name) else {
            return Err(format!("parameter {name} has no value"));
        };
        if let Some(env) = shell_env.as_deref_mut() {
            let variable = param_variable(name);
            out.push_str(&format!("\"${variable}\""));
            env.insert(variable, value.clone());
        } else {
            out.push_str(value);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn execute(
    request: &RunAction,
    (argv, env): (&[String], &BTreeMap<String, String>),
    dir: &Path,
    timeout: Duration,
    cancel: oneshot::Receiver<()>,
    outlets: &Outlets,
) -> ActionResult {
    let output = &outlets.output;
    let started = Instant::now();
    let mut result = ActionResult {
        run: request.run.clone(),
        action: request.action.clone(),
        outcome: ActionOutcome::Failed,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        output: String::new(),
        detail: String::new(),
    };
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            result.detail = cut(format!("could not start {}: {error}", argv[0]), MAX_DETAIL_BYTES);
            return result;
        }
    };
    let group = crate::group::led_by(&child);
    let kill_group = || crate::group::kill_now(group);
    if let Some(group) = group.and_then(|g| u32::try_from(g.as_raw()).ok()) {
        (outlets.groups)(group, Some(format!("action {} ({})", request.action, request.run)));
    }
    let tail = Mutex::new(Tail::default());
    let stdout = pump(child.stdout.take(), OutputStream::Stdout, request, output, &tail);
    let stderr = pump(child.stderr.take(), OutputStream::Stderr, request, output, &tail);
    let ended = {
        let wait = async {
            let ((), (), status) = tokio::join!(stdout, stderr, child.wait());
            status
        };
        tokio::pin!(wait);
        let ended = tokio::select! {
            status = &mut wait => Ok(status),
            () = tokio::time::sleep(timeout) => Err(ActionOutcome::TimedOut),
            Ok(()) = cancel => Err(ActionOutcome::Cancelled),
        };
        if ended.is_err() {
            // What the run wrote before it was killed may still be in the pipes: read it to
            // the end (bounded: a process that left the group could hold them open).
            kill_group();
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut wait).await;
        }
        ended
    };
    kill_group();
    if let Some(group) = group.and_then(|g| u32::try_from(g.as_raw()).ok()) {
        (outlets.groups)(group, None);
    }
    match ended {
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            result.exit_code = status.code();
            result.signal = status.signal();
            result.outcome = if status.success() {
                ActionOutcome::Succeeded
            } else {
                ActionOutcome::Failed
            };
        }
        Ok(Err(error)) => result.detail = cut(format!("could not wait for it: {error}"), MAX_DETAIL_BYTES),
        Err(outcome) => {
            let _ = child.wait().await;
            result.outcome = outcome;
            result.signal = Some(Signal::SIGKILL as i32);
            result.detail = match outcome {
                ActionOutcome::TimedOut => format!("killed after its timeout of {} ms", timeout.as_millis()),
                _ => "cancelled: its process group was killed".to_owned(),
            };
        }
    }
    result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result.output = tail.lock().unwrap_or_else(PoisonError::into_inner).text();
    result
}

/// Reads one stream to its end: each piece goes out live and into the tail.
async fn pump(
    stream: Option<impl AsyncRead + Unpin>,
    which: OutputStream,
    request: &RunAction,
    output: &mpsc::Sender<ActionOutput>,
    tail: &Mutex<Tail>,
) {
    let Some(mut stream) = stream else { return };
    let mut buf = vec![0_u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = String::from_utf8_lossy(&buf[..n]).into_owned();
        tail.lock().unwrap_or_else(PoisonError::into_inner).push(&data);
        // Live output is best effort: with nobody connected, or a slow link, pieces are dropped
        // (the tail is in the result).
        let _ = output.try_send(ActionOutput {
            run: request.run.clone(),
            stream: which,
            data,
        });
    }
}

/// The last [`MAX_ACTION_OUTPUT_BYTES`] of output.
#[derive(Default)]
struct Tail {
    text: String,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, data: &str) {
        self.text.push_str(data);
        let limit = MAX_ACTION_OUTPUT_BYTES - 64;
        if self.text.len() > limit {
            let mut cut_at = self.text.len() - limit;
            while !self.text.is_char_boundary(cut_at) {
                cut_at += 1;
            }
            self.dropped += cut_at as u64;
            self.text.drain(..cut_at);
        }
    }

    fn text(&self) -> String {
        if self.dropped == 0 {
            self.text.clone()
        } else {
            format!("[{} bytes cut]\n{}", self.dropped, self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> BTreeMap<String, ActionAssignment> {
        let mut parameters = BTreeMap::new();
        parameters.insert(
            "scope".to_owned(),
            ActionParameter {
                kind: ActionParameterType::Enum,
                values: vec!["all".into(), "sessions".into()],
                min: None,
                max: None,
            },
        );
        parameters.insert(
            "age".to_owned(),
            ActionParameter {
                kind: ActionParameterType::Integer,
                values: vec![],
                min: Some(0),
                max: Some(60),
            },
        );
        parameters.insert(
            "note".to_owned(),
            ActionParameter {
                kind: ActionParameterType::String,
                values: vec![],
                min: None,
                max: None,
            },
        );
        let flush = ActionAssignment {
            name: "shop/flush".into(),
            command: vec![
                "/bin/echo".into(),
                "--scope={{ params.scope }}".into(),
                "{{params.note}}".into(),
            ],
            shell: false,
            parameters: parameters.clone(),
            timeout_ms: 1000,
        };
        let shelled = ActionAssignment {
            name: "shop/shelled".into(),
            command: vec!["echo {{ params.note }} && echo {{ params.age }}".into()],
            shell: true,
            parameters,
            timeout_ms: 1000,
        };
        [(flush.name.clone(), flush), (shelled.name.clone(), shelled)]
            .into_iter()
            .collect()
    }

    fn request(action: &str, generation: u64, params: &[(&str, &str)]) -> RunAction {
        RunAction {
            run: "run-1".into(),
            action: action.into(),
            generation: Generation(generation),
            params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            signature: String::new(),
        }
    }

    #[test]
    fn only_a_request_signed_by_the_pinned_ca_passes() {
        let now = 1_795_305_600_000;
        let ca =
            endstate_pki::CertificateAuthority::generate("endstate", now, endstate_pki::DEFAULT_CA_VALIDITY).unwrap();
        let other =
            endstate_pki::CertificateAuthority::generate("endstate", now, endstate_pki::DEFAULT_CA_VALIDITY).unwrap();
        let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut signed = request("shop/flush", 3, &[("scope", "all")]);
        signed.signature = hex(ca.sign_message(&signed.signed_bytes()).unwrap());
        check_signature(ca.cert_pem(), &signed).unwrap();
        // Another action, or other values, under the same signature: refused.
        let mut swapped = signed.clone();
        swapped.action = "shop/rm".into();
        assert!(
            check_signature(ca.cert_pem(), &swapped)
                .unwrap_err()
                .contains("not signed by this agent's server")
        );
        let mut changed = signed.clone();
        changed.params.insert("scope".into(), "sessions".into());
        assert!(check_signature(ca.cert_pem(), &changed).is_err());
        // Signed by another CA, unsigned, or garbage.
        let mut foreign = signed.clone();
        foreign.signature = hex(other.sign_message(&foreign.signed_bytes()).unwrap());
        assert!(check_signature(ca.cert_pem(), &foreign).is_err());
        let unsigned = request("shop/flush", 3, &[("scope", "all")]);
        assert!(check_signature(ca.cert_pem(), &unsigned).is_err());
        let mut garbage = signed;
        garbage.signature = "zz".into();
        assert!(
            check_signature(ca.cert_pem(), &garbage)
                .unwrap_err()
                .contains("not hex")
        );
    }

    #[test]
    fn values_stay_inside_their_argument() {
        let (argv, env, timeout) = prepare(
            Some(Generation(3)),
            &catalogue(),
            &request("shop/flush", 3, &[("scope", "all"), ("note", "a b; rm -rf / $(id)")]),
        )
        .unwrap();
        assert_eq!(argv, ["/bin/echo", "--scope=all", "a b; rm -rf / $(id)"]);
        assert!(env.is_empty(), "no variables without a shell");
        assert_eq!(timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_shell_command_gets_its_values_in_variables_never_in_its_text() {
        let (argv, env, _) = prepare(
            Some(Generation(3)),
            &catalogue(),
            &request("shop/shelled", 3, &[("note", "it's $(id)"), ("age", "5")]),
        )
        .unwrap();
        assert_eq!(
            argv,
            [
                "/bin/sh",
                "-c",
                r#"echo "$ENDSTATE_PARAM_NOTE" && echo "$ENDSTATE_PARAM_AGE""#
            ]
        );
        assert_eq!(
            env,
            BTreeMap::from([
                ("ENDSTATE_PARAM_AGE".to_owned(), "5".to_owned()),
                ("ENDSTATE_PARAM_NOTE".to_owned(), "it's $(id)".to_owned()),
            ])
        );
        // Two parameters that would share a variable: refused, naming both.
        let mut clashing = catalogue();
        let shelled = clashing.get_mut("shop/shelled").unwrap();
        let age = shelled.parameters["age"].clone();
        shelled.parameters.insert("AGE".into(), age);
        let refused = prepare(
            Some(Generation(3)),
            &clashing,
            &request("shop/shelled", 3, &[("age", "5")]),
        )
        .unwrap_err();
        assert!(
            refused.contains("AGE and age") && refused.contains("ENDSTATE_PARAM_AGE"),
            "{refused}"
        );
        // What the shell makes of it: the value, as it was, and nothing run.
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $(id)\n5\n");
    }

    #[test]
    fn anything_outside_the_catalogue_or_the_declarations_is_refused() {
        let c = catalogue();
        let refuse = |r: RunAction, generation: Option<u64>| prepare(generation.map(Generation), &c, &r).unwrap_err();
        assert!(refuse(request("shop/flush", 3, &[]), None).contains("no catalogue"));
        assert!(refuse(request("shop/flush", 2, &[]), Some(3)).contains("generation 2, this agent holds generation 3"));
        assert!(refuse(request("shop/rm", 3, &[]), Some(3)).contains("shop/rm is not in this host's catalogue"));
        assert!(refuse(request("shop/flush", 3, &[("cmd", "x")]), Some(3)).contains("cmd is not declared"));
        assert!(
            refuse(request("shop/flush", 3, &[("scope", "everything")]), Some(3)).contains("not one of all, sessions")
        );
        assert!(
            refuse(request("shop/shelled", 3, &[("note", "x"), ("age", "61")]), Some(3)).contains("outside 0..=60")
        );
        assert!(
            refuse(request("shop/shelled", 3, &[("note", "x"), ("age", "1e3")]), Some(3))
                .contains("not a whole number")
        );
        assert!(refuse(request("shop/flush", 3, &[("scope", "all")]), Some(3)).contains("note has no value"));
    }

    #[test]
    fn a_placeholder_other_than_a_parameter_is_refused() {
        let params = BTreeMap::new();
        assert!(
            fill("{{ ports.http }}", &params, None)
                .unwrap_err()
                .contains("not a parameter placeholder")
        );
        assert!(fill("{{ params.x", &params, None).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn the_tail_keeps_the_end() {
        let mut tail = Tail::default();
        for _ in 0..100 {
            tail.push(&"x".repeat(1000));
        }
        tail.push("the end");
        let text = tail.text();
        assert!(text.starts_with('[') && text.ends_with("the end"), "{}", &text[..40]);
        assert!(text.len() <= MAX_ACTION_OUTPUT_BYTES);
    }
}
