//! The client commands: read a spec directory or call the server, then print for people or scripts.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use endstate_api::{Document, RevisionSource, SubmitRevision};
use endstate_client::{Client, ClientError, TimelineQuery};
use endstate_spec::{Diagnostic, Severity, SourceFile};
use futures_util::StreamExt;

use crate::cli::{ApplyArgs, Global, Output, TimelineArgs};
use crate::{Outcome, config, render};

fn client(global: &Global) -> anyhow::Result<Client> {
    let resolved = config::resolve(global)?;
    Ok(match &resolved.ca_pem {
        Some(ca) => Client::with_ca(&resolved.server, &resolved.token, ca)?,
        None => Client::new(&resolved.server, &resolved.token)?,
    })
}

/// Asks a person to type `yes`, unless `--yes` was given; refuses without a terminal to ask on.
fn confirm(question: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("error: not done without confirmation: pass --yes when not on a terminal");
        return Ok(false);
    }
    eprint!("\n{question} Only 'yes' is accepted: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reads a spec directory, printing every problem of reading it.
fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    endstate_client::spec_dir::read_spec_dir(dir)
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for diagnostic in diagnostics {
        let _ = writeln!(err, "{diagnostic}");
    }
}

/// `endstate validate DIR`
pub(crate) fn validate(global: &Global, dir: &Path) -> anyhow::Result<Outcome> {
    let (files, mut diagnostics) = endstate_client::spec_dir::read_spec_dir_all(dir);
    if !files.is_empty() {
        diagnostics.extend(endstate_spec::load(&files, &[]).diagnostics);
    }
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    let n_errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let n_warnings = diagnostics.len() - n_errors;
    if global.output == Output::Json {
        print_json(
            &serde_json::json!({ "valid": n_errors == 0, "errors": n_errors, "warnings": n_warnings, "diagnostics": diagnostics }),
        )?;
    } else {
        print_diagnostics(&diagnostics);
        if n_errors == 0 {
            println!("{}: valid ({n_warnings} warning(s))", dir.display());
        } else {
            eprintln!("{}: {n_errors} error(s), {n_warnings} warning(s)", dir.display());
        }
    }
    Ok(if n_errors == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

fn documents(files: Vec<SourceFile>) -> Vec<Document> {
    files
        .into_iter()
        .map(|file| Document {
            path: file.path,
            content: file.text,
        })
        .collect()
}

/// Prints the problem details of a refused request: spec diagnostics as file:line:column lines.
fn print_problem(error: &ClientError) {
    match error.problem() {
        Some(problem) => {
            eprintln!("error: {}", problem.detail);
            for d in &problem.diagnostics {
                let location = if d.line == 0 {
                    d.file.clone()
                } else {
                    format!("{}:{}:{}", d.file, d.line, d.column)
                };
                let expected = d
                    .expected
                    .as_ref()
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default();
                eprintln!("{location}: {}[{}]: {}{expected}", d.severity, d.code, d.message);
            }
            for e in &problem.errors {
                eprintln!("  {}: {}", e.field, e.message);
            }
        }
        None => eprintln!("error: {error}"),
    }
}

/// A plan, the files it was made from, and the revisions it was made against.
struct Planned {
    files: Vec<SourceFile>,
    plan: endstate_plan::Plan,
    /// `Some` when a server made the plan: (the base it started from, the latest revision then).
    server: Option<(Option<u64>, Option<u64>)>,
    /// What the server planned from (hosts in service and the base), submitted with the plan.
    basis: Option<endstate_api::PlanBasis>,
}

impl Planned {
    /// One line saying what the plan is compared with.
    fn against(&self) -> String {
        match self.server {
            Some((Some(base), _)) => format!("Compared with revision {base}, the last one whose change converged."),
            Some((None, _)) => "Compared with an empty state: no change has converged on this server yet.".to_string(),
            None => "Compared with an empty state (offline).".to_string(),
        }
    }
}

/// Reads a directory once and plans it: on the server when there is one (unless offline), else
/// locally against nothing.
async fn make_plan(
    global: &Global,
    dir: &Path,
    offline: bool,
    options: &endstate_api::ChangeOptions,
) -> anyhow::Result<Result<Planned, Outcome>> {
    let files = match read_dir(dir) {
        Ok(files) => files,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            return Ok(Err(Outcome::Failed));
        }
    };
    if offline || !config::has_server(global) {
        let loaded = endstate_spec::load(&files, &[]);
        print_diagnostics(&loaded.diagnostics);
        let Some(desired) = loaded.desired else {
            return Ok(Err(Outcome::Failed));
        };
        if !offline {
            eprintln!("note: no server configured; planning against an empty state (pass --offline to say so)");
        }
        if !options.is_empty() {
            eprintln!("error: --host-group, --retire and --target name hosts: they need a server to plan against");
            return Ok(Err(Outcome::Refused));
        }
        let plan = endstate_plan::plan(None, &desired, &[]);
        return Ok(Ok(Planned {
            files,
            plan,
            server: None,
            basis: None,
        }));
    }
    let client = client(global)?;
    let request = endstate_api::PlanRequest {
        documents: documents(files.clone()),
        options: options.clone(),
    };
    match client.plan_with(&request).await {
        Ok(response) => {
            for warning in &response.warnings {
                eprintln!(
                    "{}:{}:{}: warning[{}]: {}",
                    warning.file, warning.line, warning.column, warning.code, warning.message
                );
            }
            let plan = response.plan;
            Ok(Ok(Planned {
                files,
                plan,
                server: Some((response.base_revision, response.latest_revision)),
                basis: Some(response.basis),
            }))
        }
        Err(error) if error.problem().is_some() => {
            print_problem(&error);
            Ok(Err(Outcome::Failed))
        }
        Err(error) => Err(error.into()),
    }
}

/// `endstate plan DIR`
pub(crate) async fn plan(
    global: &Global,
    dir: &Path,
    offline: bool,
    options: &endstate_api::ChangeOptions,
) -> anyhow::Result<Outcome> {
    let planned = match make_plan(global, dir, offline, options).await? {
        Ok(planned) => planned,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&planned.plan)?;
    } else {
        if planned.server.is_some() {
            println!("{}", planned.against());
        }
        print!("{}", endstate_plan::render(&planned.plan, color()));
    }
    Ok(Outcome::Success)
}

/// `endstate plan --source NAME [--ref BRANCH]`
pub(crate) async fn plan_source(
    global: &Global,
    source: &str,
    branch: Option<String>,
    options: &endstate_api::ChangeOptions,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let request = endstate_api::SourcePlanRequest {
        branch,
        options: options.clone(),
    };
    let previewed = match refused_or(client.plan_source(source, &request)).await? {
        Ok(previewed) => previewed,
        Err(outcome) => return Ok(outcome),
    };
    let outcome = if previewed.problems.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failed
    };
    if global.output == Output::Json {
        print_json(&previewed)?;
        return Ok(outcome);
    }
    let short: String = previewed.commit.chars().take(12).collect();
    println!(
        "Source {} at {} ({short} \"{}\" by {}):",
        previewed.source, previewed.branch, previewed.subject, previewed.author
    );
    if !previewed.problems.is_empty() {
        eprintln!("This commit would be refused; nothing of it would apply:");
        for problem in &previewed.problems {
            eprintln!("  {problem}");
        }
    }
    if let Some(preview) = &previewed.preview {
        println!(
            "{}",
            match preview.base_revision {
                Some(base) => format!("Compared with revision {base}, the last one whose change converged."),
                None => "Compared with an empty state: no change has converged on this server yet.".to_owned(),
            }
        );
        print!("{}", endstate_plan::render(&preview.plan, color()));
    }
    Ok(outcome)
}

/// Parses a duration the way specs write them (`90s`, `10m`, `1h30m`).
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    endstate_spec::Duration::parse(text)
        .map(endstate_spec::Duration::as_std)
        .map_err(|reason| anyhow::anyhow!("--timeout {text:?}: {reason}"))
}

/// `endstate apply DIR`
pub(crate) async fn apply(global: &Global, args: ApplyArgs) -> anyhow::Result<Outcome> {
    let timeout = parse_duration(&args.timeout)?;
    let client = client(global)?;
    let options = args.rollout.options();
    let (submitted, before_submit) = loop {
        let planned = match make_plan(global, &args.dir, false, &options).await? {
            Ok(planned) => planned,
            Err(outcome) => return Ok(outcome),
        };
        // With `-o json`, stdout is only JSON: the plan for people goes to stderr.
        let shown = format!(
            "{}\n{}",
            planned.against(),
            endstate_plan::render(&planned.plan, color() && global.output == Output::Text)
        );
        if global.output == Output::Json {
            eprint!("{shown}");
        } else {
            print!("{shown}");
        }
        if !confirm("Apply this plan?", args.yes)? {
            eprintln!("Not applied.");
            return Ok(Outcome::Refused);
        }
        // What is submitted is exactly what was planned: the same files, and the server refuses
        // it if another revision was submitted since the plan was made, or if the hosts or the
        // base revision it was planned from moved.
        let request = SubmitRevision {
            documents: documents(planned.files),
            message: args.message.clone(),
            source: RevisionSource {
                kind: "cli".into(),
                reference: Some(args.dir.display().to_string()),
            },
            parent: planned.server.map(|(_, latest)| latest.unwrap_or(0)),
            options: options.clone(),
            basis: planned.basis,
        };
        let before_submit = newest_seq(&client).await;
        match client.submit(&request).await {
            Ok(submitted) => break (submitted, before_submit),
            Err(error) if error.problem().is_some_and(|p| p.kind.ends_with("/basis-moved")) && !args.yes => {
                print_problem(&error);
                eprintln!("\nThe plan above is not what would run any more. Planning again:\n");
            }
            Err(error) if error.problem().is_some() => {
                print_problem(&error);
                return Ok(Outcome::Refused);
            }
            Err(error) => return Err(error.into()),
        }
    };
    for warning in &submitted.warnings {
        eprintln!(
            "{}:{}:{}: warning[{}]: {}",
            warning.file, warning.line, warning.column, warning.code, warning.message
        );
    }
    let change_id = submitted.change.id;
    eprintln!("Submitted revision {} as change {}.", submitted.revision.id, change_id);
    if args.no_wait {
        if global.output == Output::Json {
            print_json(&submitted)?;
        }
        return Ok(Outcome::Success);
    }
    let progress = indicatif::ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress.enable_steady_tick(Duration::from_millis(120));
    let started = tokio::time::Instant::now();
    let mut last_line = String::new();
    // Every wave and decision of this change, as the timeline has it, printed as it comes.
    let mut after = before_submit;
    let change = loop {
        let page = client
            .timeline(&endstate_client::TimelineQuery {
                kind: Some("change.,decision.".into()),
                after: Some(after),
                limit: Some(500),
                ..Default::default()
            })
            .await?;
        for event in &page.items {
            after = after.max(event.seq);
            if event.change == Some(change_id) && event.kind != "change.waiting" {
                progress.suspend(|| eprintln!("  {}", render::event_line(event, color())));
            }
        }
        let change = client.change(change_id).await?;
        let wave = change
            .wave
            .filter(|_| change.state == "rolling")
            .map(|[k, n]| format!(" (wave {} of {n})", k + 1))
            .unwrap_or_default();
        let reason = change.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
        let line = format!("change {change_id}: {}{wave}{reason}", change.state);
        if line != last_line {
            if !std::io::stderr().is_terminal() {
                eprintln!("{line}");
            }
            progress.set_message(line.clone());
            last_line = line;
        }
        if change.terminal || change.state == "halted" || started.elapsed() >= timeout {
            break change;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    progress.finish_and_clear();
    if global.output == Output::Json {
        print_json(&change)?;
    }
    let reason = change.reason.clone().unwrap_or_default();
    Ok(match change.state.as_str() {
        "converged" => {
            eprintln!("Change {change_id} converged: {reason}");
            Outcome::Success
        }
        // The hold a targeted change asked for: open, waiting for a person.
        "halted" if reason.starts_with("holding after the targeted hosts") => {
            eprintln!("Change {change_id} holds as asked: {reason}");
            Outcome::StillOpen
        }
        state if change.terminal || state == "halted" => {
            eprintln!("Change {change_id} ended {state}: {reason}");
            Outcome::Failed
        }
        state => {
            eprintln!(
                "Change {change_id} is still {state} after {}: {reason}\nIt goes on; follow it with `endstate timeline --follow`.",
                args.timeout
            );
            Outcome::StillOpen
        }
    })
}

/// The newest event's sequence number, so following a change starts from now.
async fn newest_seq(client: &endstate_client::Client) -> u64 {
    // Read before submitting: every event of the change comes after it. A failure here only
    // means more history is looked at.
    client
        .timeline(&endstate_client::TimelineQuery {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .ok()
        .and_then(|page| page.items.iter().map(|e| e.seq).max())
        .unwrap_or(0)
}

/// `endstate version`: this binary's version, and the server's when one is configured.
pub(crate) async fn version(global: &Global) -> anyhow::Result<Outcome> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = if config::has_server(global) {
        Some(client(global)?.version().await.map_err(anyhow::Error::from))
    } else {
        None
    };
    if global.output == Output::Json {
        print_json(&serde_json::json!({
            "client": client_version,
            "server": server.as_ref().and_then(|s| s.as_ref().ok()),
            "server_error": server.as_ref().and_then(|s| s.as_ref().err()).map(|e| format!("{e:#}")),
        }))?;
    } else {
        println!("client: endstate {client_version}");
        match &server {
            Some(Ok(view)) => println!("server: endstate {} (API {})", view.version, view.api),
            Some(Err(error)) => println!("server: unknown ({error:#})"),
            None => println!("server: none configured"),
        }
    }
    Ok(match server {
        Some(Err(_)) => Outcome::Failed,
        _ => Outcome::Success,
    })
}

/// `endstate status [SYSTEM]`
pub(crate) async fn status(global: &Global, system: Option<&str>) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let systems = match system {
        Some(name) => vec![client.system(name).await?],
        None => client.systems(true).await?,
    };
    if global.output == Output::Json {
        print_json(&systems)?;
    } else if systems.is_empty() {
        println!("No systems: nothing was applied yet (try `endstate apply examples`).");
    } else {
        // What is in force first: after a rollback, the fleet is healthy at the revision in force.
        let in_force = client.in_force().await?;
        println!("{}", in_force.summary);
        print!("{}", render::status_tree(&systems, color()));
    }
    Ok(Outcome::Success)
}

/// `endstate timeline [SYSTEM]`
pub(crate) async fn timeline(global: &Global, args: TimelineArgs) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let query = TimelineQuery {
        system: args.system.clone(),
        kind: args.kind.clone(),
        host: args.host.clone(),
        component: args.component.clone(),
        actor: args.actor.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        limit: Some(args.limit),
        ..TimelineQuery::default()
    };
    let page = match refused_or(client.timeline(&query)).await? {
        Ok(page) => page,
        Err(outcome) => return Ok(outcome),
    };
    let mut events = page.items;
    events.reverse();
    for event in &events {
        if global.output == Output::Json {
            println!("{}", serde_json::to_string(event)?);
        } else {
            println!("{}", render::event_line(event, color()));
        }
    }
    if args.follow {
        let after = events.last().map(|e| e.seq);
        let mut stream = Box::pin(
            client
                .stream(&TimelineQuery {
                    after,
                    limit: None,
                    since: None,
                    until: None,
                    ..query
                })
                .await?,
        );
        while let Some(event) = stream.next().await {
            let event = event?;
            if global.output == Output::Json {
                println!("{}", serde_json::to_string(&event)?);
            } else {
                println!("{}", render::event_line(&event, color()));
            }
        }
    }
    Ok(Outcome::Success)
}

/// Runs a read call; a refusal (problem details) is printed with the fields it names and ends
/// the command as refused.
async fn refused_or<T>(call: impl Future<Output = Result<T, ClientError>>) -> anyhow::Result<Result<T, Outcome>> {
    match call.await {
        Ok(value) => Ok(Ok(value)),
        Err(error) if error.problem().is_some() => {
            print_problem(&error);
            Ok(Err(Outcome::Refused))
        }
        Err(error) => Err(error.into()),
    }
}

/// `endstate describe SYSTEM`
pub(crate) async fn describe(global: &Global, system: &str) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let description = match refused_or(client.describe(system)).await? {
        Ok(description) => description,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&description)?;
    } else {
        print!("{}", render::description(&description, color()));
    }
    Ok(Outcome::Success)
}

/// `endstate note SYSTEM TEXT`
pub(crate) async fn note(global: &Global, system: &str, text: &str) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let event = match refused_or(client.add_note(system, text)).await? {
        Ok(event) => event,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&event)?;
    } else {
        println!("{}", render::event_line(&event, color()));
    }
    Ok(Outcome::Success)
}

/// `endstate change pause|resume|abort|accept CHANGE`
pub(crate) async fn change(global: &Global, action: crate::cli::ChangeAction) -> anyhow::Result<Outcome> {
    use crate::cli::ChangeAction;
    let client = client(global)?;
    let (id, command, reason) = match &action {
        ChangeAction::Pause { change, reason } => (*change, "pause", reason),
        ChangeAction::Resume { change, reason } => (*change, "resume", reason),
        ChangeAction::Abort { change, reason } => (*change, "abort", reason),
        ChangeAction::Accept { change, reason } => (*change, "accept", reason),
    };
    let change = match refused_or(client.change_command(id, command, reason.as_deref())).await? {
        Ok(change) => change,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&change)?;
    } else {
        println!(
            "change {}: {}: {}",
            change.id,
            change.state,
            change.reason.unwrap_or_default()
        );
    }
    Ok(Outcome::Success)
}

/// `endstate rollback SYSTEM [--to REVISION]`
pub(crate) async fn rollback(
    global: &Global,
    system: &str,
    to: Option<u64>,
    reason: Option<&str>,
    yes: bool,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let target = to.map_or_else(
        || "the revision before the one in force".to_owned(),
        |to| format!("revision {to}"),
    );
    eprintln!(
        "This goes back to {target} for every system of the desired state, not only {system}: a revision holds them all."
    );
    if !confirm("Roll back?", yes)? {
        eprintln!("Not rolled back.");
        return Ok(Outcome::Refused);
    }
    let change = match refused_or(client.rollback(system, to, reason)).await? {
        Ok(change) => change,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&change)?;
    } else {
        println!(
            "change {} (revision {}): {}: {}\nFollow it with `endstate timeline {system} --follow`.",
            change.id,
            change.revision,
            change.state,
            change.reason.unwrap_or_default()
        );
    }
    Ok(Outcome::Success)
}

/// `endstate alerts`
pub(crate) async fn alerts(global: &Global) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let alerts = match refused_or(client.alerts()).await? {
        Ok(alerts) => alerts,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        for alert in &alerts {
            println!("{}", serde_json::to_string(alert)?);
        }
        return Ok(Outcome::Success);
    }
    if alerts.is_empty() {
        println!("No open alerts.");
        return Ok(Outcome::Success);
    }
    for alert in &alerts {
        let mut flags = Vec::new();
        if let Some(ack) = &alert.acked {
            flags.push(format!("acked by {}: {}", ack.author, ack.comment));
        }
        if let Some(ticket) = &alert.ticket {
            flags.push(format!("ticket {ticket}"));
        }
        if let Some(failed) = &alert.notify_failed {
            flags.push(format!("notification failed: {failed}"));
        }
        if let Some(note) = alert.notes.last() {
            flags.push(format!("note by {}: {}", note.author, note.comment));
        }
        if let Some(silence) = alert.silenced_by {
            flags.push(format!("silenced ({silence})"));
        }
        // Always broken, or did it just happen?
        if let Some(history) = &alert.history {
            let share = history
                .failing_7d_percent
                .map(|p| format!(", failing {p:.1}% of 7 days"))
                .unwrap_or_default();
            flags.push(format!("{}{share}", history.label));
        }
        if alert.flapping {
            flags.push("flapping".into());
        }
        if let Some(cause) = &alert.consequence_of {
            flags.push(format!("consequence: {cause}"));
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join("; "))
        };
        println!(
            "{:<8} {} on {} (host {}, since {}, {} transitions){flags}\n         {}",
            alert.status.to_uppercase(),
            alert.key.check,
            alert.key.target,
            alert.host,
            time_of_ms(alert.opened_ms).unwrap_or_default(),
            alert.transitions,
            alert.message,
        );
    }
    Ok(Outcome::Success)
}

/// A time in milliseconds since the epoch, shown (RFC 3339, UTC).
fn time_of_ms(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// `endstate silence ...`
pub(crate) async fn silence(
    global: &Global,
    system: Option<String>,
    check: Option<String>,
    host: Option<String>,
    labels: &[String],
    (starts, until): (Option<String>, String),
    reason: String,
) -> anyhow::Result<Outcome> {
    let mut parsed = std::collections::BTreeMap::new();
    for label in labels {
        let Some((key, value)) = label.split_once('=') else {
            eprintln!("error: found --label {label:?}; expected key=value");
            return Ok(Outcome::Refused);
        };
        parsed.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    let request = endstate_api::CreateSilence {
        system,
        check,
        host,
        labels: parsed,
        starts,
        until,
        reason,
    };
    let client = client(global)?;
    let silence = match refused_or(client.silence(&request)).await? {
        Ok(silence) => silence,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&silence)?;
    } else {
        println!(
            "Silence {} created; `endstate unsilence {}` ends it.",
            silence.id, silence.id
        );
    }
    Ok(Outcome::Success)
}

/// `endstate review`
pub(crate) async fn review(global: &Global, since: Option<&str>, system: Option<&str>) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let review = match refused_or(client.review(since, system)).await? {
        Ok(review) => review,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&review)?;
        return Ok(Outcome::Success);
    }
    let time = |ms: i64| time_of_ms(ms).unwrap_or_else(|| "-".into());
    let took = |ms: Option<i64>| ms.map_or_else(|| "-".into(), |ms| format!("{}s", ms / 1000));
    println!("Review from {} to {}", time(review.since_ms), time(review.until_ms));
    for (title, list) in [
        ("Needs a person (open, unacknowledged)", &review.unacknowledged),
        ("Chronic (failing most of the week)", &review.chronic),
        ("Flapping", &review.flapping),
        ("Silenced", &review.silenced),
    ] {
        println!("\n{title}: {}", list.len());
        for alert in list {
            println!(
                "  {:<8} {} on {} since {}: {}",
                alert.status.to_uppercase(),
                alert.key.check,
                alert.key.target,
                time(alert.opened_ms),
                alert.message
            );
        }
    }
    println!("\nSilences ending within the hour: {}", review.expiring_silences.len());
    for s in &review.expiring_silences {
        println!("  {} until {}: {}", s.id, time(s.ends_ms), s.reason);
    }
    let summary = &review.summary;
    println!(
        "\nFired: {} (acknowledged {}, resolved {}; median to acknowledge {}, to resolve {})",
        summary.opened,
        summary.acknowledged,
        summary.resolved,
        took(summary.median_to_ack_ms),
        took(summary.median_to_resolve_ms)
    );
    for f in &review.fired {
        let ack = match &f.acknowledged_by {
            Some(by) => format!("acked by {by} after {}", took(f.to_ack_ms)),
            None => "never acked".into(),
        };
        let resolved = match f.to_resolve_ms {
            Some(_) => format!("resolved after {}", took(f.to_resolve_ms)),
            None => "still open".into(),
        };
        println!(
            "  {} {:<8} {} on {}: {ack}, {resolved}: {}",
            time(f.opened_ms),
            f.status.to_uppercase(),
            f.check,
            f.target,
            f.message
        );
    }
    Ok(Outcome::Success)
}

/// `endstate silences`
pub(crate) async fn silences(global: &Global) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let silences = match refused_or(client.silences()).await? {
        Ok(silences) => silences,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        for silence in &silences {
            println!("{}", serde_json::to_string(silence)?);
        }
        return Ok(Outcome::Success);
    }
    if silences.is_empty() {
        println!("No active silences.");
    }
    for s in &silences {
        let until = time_of_ms(s.ends_ms).unwrap_or_default();
        let scope: Vec<String> = [("system", &s.system), ("check", &s.check), ("host", &s.host)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
            .chain(s.labels.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        println!(
            "{:>4}  until {until}  {}  by {}: {}",
            s.id,
            scope.join(", "),
            s.author,
            s.reason
        );
    }
    Ok(Outcome::Success)
}

/// `endstate unsilence ID`
pub(crate) async fn unsilence(global: &Global, id: u64) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    match refused_or(client.unsilence(id)).await? {
        Ok(_) => {
            println!("Silence {id} ended.");
            Ok(Outcome::Success)
        }
        Err(outcome) => Ok(outcome),
    }
}

/// `endstate ack CHECK TARGET -m COMMENT`
pub(crate) async fn ack(
    global: &Global,
    check: Option<String>,
    target: Option<String>,
    filter: crate::cli::AlertFilter,
    comment: &str,
    acknowledge: bool,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let (verb, noun) = if acknowledge {
        ("Acknowledged", "acknowledge")
    } else {
        ("Annotated", "annotate")
    };
    if let (Some(check), Some(target)) = (&check, &target)
        && acknowledge
    {
        let alert = match refused_or(client.ack(check, target, comment)).await? {
            Ok(alert) => alert,
            Err(outcome) => return Ok(outcome),
        };
        if global.output == Output::Json {
            print_json(&alert)?;
        } else {
            println!("{verb}: {check} on {target}.");
        }
        return Ok(Outcome::Success);
    }
    if check.is_some() != target.is_some() {
        eprintln!("error: give both CHECK and TARGET (one alert), or neither and --system, --host, --check or --all");
        return Ok(Outcome::Refused);
    }
    let request = endstate_api::BulkAlerts {
        system: filter.system,
        check: check.or(filter.check),
        host: filter.host,
        target,
        all: filter.all,
        acknowledge,
        comment: comment.to_owned(),
    };
    let done = match refused_or(client.bulk_alerts(&request)).await? {
        Ok(done) => done,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&done)?;
        return Ok(Outcome::Success);
    }
    if done.alerts.is_empty() {
        println!("No open alert matches: nothing to {noun}.");
        return Ok(Outcome::Success);
    }
    println!("{verb} {} alert(s):", done.alerts.len());
    for alert in &done.alerts {
        println!("  {} on {}", alert.key.check, alert.key.target);
    }
    Ok(Outcome::Success)
}

/// `endstate scale SYSTEM/COMPONENT COUNT`
pub(crate) async fn scale(
    global: &Global,
    component: &str,
    count: u32,
    reason: Option<&str>,
) -> anyhow::Result<Outcome> {
    if !component.contains('/') {
        eprintln!("error: found component {component:?}; expected system/name, e.g. shop/web");
        return Ok(Outcome::Refused);
    }
    let client = client(global)?;
    let change = match refused_or(client.scale(component, count, reason)).await? {
        Ok(change) => change,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&change)?;
    } else {
        println!(
            "change {} (revision {}): {}: {}\nFollow it with `endstate timeline --follow`.",
            change.id,
            change.revision,
            change.state,
            change.reason.unwrap_or_default()
        );
    }
    Ok(Outcome::Success)
}

/// `endstate history TARGET`
pub(crate) async fn history(global: &Global, target: &str) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let history = match refused_or(client.history(target)).await? {
        Ok(history) => history,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&history)?;
    } else {
        print!("{}", render::history(&history, color()));
    }
    Ok(Outcome::Success)
}

/// `endstate why TARGET [--at TIME] [--window DURATION]`
pub(crate) async fn why(
    global: &Global,
    target: &str,
    at: Option<&str>,
    window: Option<&str>,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let why = match refused_or(client.why(target, at, window)).await? {
        Ok(why) => why,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&why)?;
    } else {
        print!("{}", render::why(&why));
    }
    Ok(Outcome::Success)
}

/// `endstate inventory [HOST] [--selector S] [--system S] [--kind K] [--csv]`
pub(crate) async fn inventory(
    global: &Global,
    host: Option<&str>,
    filter: &endstate_client::HostsFilter,
    csv: bool,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    if let Some(host) = host {
        let detail = match refused_or(client.host(host)).await? {
            Ok(detail) => detail,
            Err(outcome) => return Ok(outcome),
        };
        if global.output == Output::Json {
            print_json(&detail)?;
        } else {
            print!("{}", render::host_detail(&detail));
        }
        return Ok(Outcome::Success);
    }
    let hosts = match refused_or(client.inventory(filter)).await? {
        Ok(hosts) => hosts,
        Err(outcome) => return Ok(outcome),
    };
    if csv {
        print!("{}", render::inventory_csv(&hosts)?);
    } else if global.output == Output::Json {
        print_json(&hosts)?;
    } else if hosts.is_empty() {
        println!("No host matches.");
    } else {
        print!("{}", render::inventory_table(&hosts));
    }
    Ok(Outcome::Success)
}

/// `endstate hosts`
pub(crate) async fn hosts(global: &Global) -> anyhow::Result<Outcome> {
    let hosts = client(global)?.hosts().await?;
    if global.output == Output::Json {
        print_json(&hosts)?;
    } else if hosts.is_empty() {
        println!("No hosts yet: hosts join the inventory when their agent enrols.");
    } else {
        print!("{}", render::hosts_table(&hosts));
    }
    Ok(Outcome::Success)
}

/// `endstate token create`
pub(crate) async fn token_create(
    global: &Global,
    name: &str,
    role: &str,
    systems: &[String],
) -> anyhow::Result<Outcome> {
    let created = client(global)?.create_token(name, role, systems).await?;
    if global.output == Output::Json {
        print_json(&created)?;
    } else {
        let scope = if created.systems.is_empty() {
            String::new()
        } else {
            format!(", for {}", created.systems.join(", "))
        };
        println!(
            "token {} ({}{scope}) created; its secret is shown this once:\n{}",
            created.name, created.role, created.secret
        );
    }
    Ok(Outcome::Success)
}

/// `endstate token list`
pub(crate) async fn token_list(global: &Global) -> anyhow::Result<Outcome> {
    let tokens = client(global)?.tokens().await?;
    if global.output == Output::Json {
        print_json(&tokens)?;
    } else {
        for t in &tokens {
            let systems = if t.systems.is_empty() {
                "all systems".to_owned()
            } else {
                t.systems.join(",")
            };
            println!(
                "{:<20} {:<9} {:<24} {}{}",
                t.name,
                t.role,
                systems,
                jiff::Timestamp::from_millisecond(t.created_ms)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                if t.revoked { "  revoked" } else { "" }
            );
        }
    }
    Ok(Outcome::Success)
}

/// `endstate token revoke NAME`
pub(crate) async fn token_revoke(global: &Global, name: &str) -> anyhow::Result<Outcome> {
    let revoked = client(global)?.revoke_token(name).await?;
    if global.output == Output::Json {
        print_json(&revoked)?;
    } else {
        println!("token {} ({}) revoked", revoked.name, revoked.role);
    }
    Ok(Outcome::Success)
}

/// `endstate token create --join`
pub(crate) async fn join_token_create(
    global: &Global,
    ttl: Option<String>,
    labels: Option<&str>,
    host: Option<String>,
) -> anyhow::Result<Outcome> {
    let labels = parse_labels(labels.unwrap_or_default())?;
    let server = config::resolve(global)?.server;
    let created = client(global)?
        .create_join_token(&endstate_api::CreateJoinToken { ttl, labels, host })
        .await?;
    if global.output == Output::Json {
        print_json(&created)?;
    } else {
        let labels: Vec<String> = created.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "join token (one use, until {}; shown this once):\n{}",
            created.expires, created.secret
        );
        println!("\nOn the new host:");
        println!(
            "  ENDSTATE_JOIN_TOKEN={} endstate agent --server {server} --ca-sha256 {}{}{}",
            created.secret,
            created.ca_sha256,
            created
                .host
                .as_ref()
                .map(|h| format!(" --name {h}"))
                .unwrap_or_default(),
            if labels.is_empty() {
                String::new()
            } else {
                format!(" --labels {}", labels.join(","))
            },
        );
    }
    Ok(Outcome::Success)
}

/// `key=value,key=value` into labels, naming the bad pair.
pub(crate) fn parse_labels(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    endstate_agent::cli::parse_labels(text)
}

/// `endstate hosts revoke HOST`
pub(crate) async fn hosts_revoke(global: &Global, host: &str, yes: bool) -> anyhow::Result<Outcome> {
    eprintln!(
        "Revoking {host} disconnects its agent for good: it may not connect again until it enrols with a new join token."
    );
    if !confirm(&format!("Revoke {host}?"), yes)? {
        eprintln!("Not revoked.");
        return Ok(Outcome::Refused);
    }
    let view = client(global)?.revoke_host(host).await?;
    if global.output == Output::Json {
        print_json(&view)?;
    } else {
        println!(
            "host {} revoked: its agent was disconnected and may not connect again until it enrols with a new join token",
            view.name
        );
    }
    Ok(Outcome::Success)
}

/// `endstate logs INSTANCE [--host H] [--follow]`
pub(crate) async fn logs(global: &Global, args: crate::cli::LogsArgs) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    // Find where it runs: `system/component#slot`, or `system/component` with one instance.
    let hosts = client.hosts().await?;
    let (wanted_key, wanted_slot) = match args.instance.rsplit_once('#') {
        Some((key, slot)) => (key.to_owned(), Some(slot.to_owned())),
        None => (args.instance.clone(), None),
    };
    let mut candidates = Vec::new();
    for host in &hosts {
        if args.host.as_ref().is_some_and(|h| h != &host.name) {
            continue;
        }
        for line in &host.instances {
            let id = line.split_whitespace().next().unwrap_or_default();
            let Some((key, slot)) = id.rsplit_once('#') else {
                continue;
            };
            if key == wanted_key && wanted_slot.as_deref().is_none_or(|s| s == slot) {
                candidates.push((host.name.clone(), id.to_owned()));
            }
        }
    }
    let (host, instance) = match candidates.as_slice() {
        [one] => one.clone(),
        [] => {
            eprintln!(
                "no instance {} is placed{}",
                args.instance,
                args.host.map(|h| format!(" on {h}")).unwrap_or_default()
            );
            return Ok(Outcome::Refused);
        }
        many => {
            eprintln!("{} is ambiguous; give --host or the slot:", args.instance);
            for (host, id) in many {
                eprintln!("  endstate logs '{id}' --host {host}");
            }
            return Ok(Outcome::Refused);
        }
    };
    let mut seen = (0u64, 0u64);
    loop {
        let logs = client.logs(&host, &instance).await?;
        if global.output == Output::Json && !args.follow {
            print_json(&logs)?;
            return Ok(Outcome::Success);
        }
        print!("{}", new_part(&logs.stdout, logs.stdout_total, seen.0));
        let err = new_part(&logs.stderr, logs.stderr_total, seen.1);
        if !err.is_empty() {
            eprint!("{err}");
        }
        seen = (logs.stdout_total, logs.stderr_total);
        if !args.follow {
            return Ok(Outcome::Success);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What of a tail (ending at byte `total` of the stream) comes after byte `seen`.
fn new_part(tail: &str, total: u64, seen: u64) -> String {
    let new = usize::try_from(total.saturating_sub(seen)).unwrap_or(usize::MAX);
    if new >= tail.len() {
        return tail.to_owned();
    }
    let mut start = tail.len() - new;
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

// === actions ===

/// `endstate run ACTION --system S`
pub(crate) async fn run_action(
    global: &Global,
    system: &str,
    action: &str,
    params: &[String],
    hosts: Vec<String>,
    reason: Option<String>,
    follow: bool,
) -> anyhow::Result<Outcome> {
    let mut values = std::collections::BTreeMap::new();
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            eprintln!("error: --param {param:?} is not NAME=VALUE");
            return Ok(Outcome::Refused);
        };
        // The server takes text for numbers and booleans too, and checks the types it declared.
        values.insert(name.trim().to_owned(), serde_json::Value::String(value.to_owned()));
    }
    let request = endstate_api::RunRequest {
        system: system.to_owned(),
        action: action.to_owned(),
        params: values,
        hosts,
        reason,
    };
    let client = client(global)?;
    let run = match refused_or(client.run_action(&request)).await? {
        Ok(run) => run,
        Err(outcome) => return Ok(outcome),
    };
    if run.state == "awaiting_approval" {
        if global.output == Output::Json {
            print_json(&run)?;
        } else {
            println!(
                "{} of {}/{} awaits approval by someone other than {} (an approver of {}): `endstate approve {}`",
                run.id, run.system, run.action, run.requested_by, run.system, run.id
            );
        }
        return Ok(Outcome::StillOpen);
    }
    if !follow {
        // Accepted and started: follow it with `endstate runs --show RUN`.
        print_run(global, &run)?;
        return Ok(Outcome::Success);
    }
    follow_run(global, &client, run).await
}

/// `endstate approve RUN`
pub(crate) async fn approve_run(global: &Global, id: &str, reason: Option<String>) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let run = match refused_or(client.approve_run(id, reason)).await? {
        Ok(run) => run,
        Err(outcome) => return Ok(outcome),
    };
    if global.output != Output::Json {
        println!("{} approved; it runs now", run.id);
    }
    follow_run(global, &client, run).await
}

/// `endstate cancel RUN`
pub(crate) async fn cancel_run(global: &Global, id: &str, reason: Option<String>) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    let run = match refused_or(client.cancel_run(id, reason)).await? {
        Ok(run) => run,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&run)?;
    } else {
        println!("{} cancelled: {}", run.id, run.summary);
    }
    Ok(Outcome::Success)
}

/// `endstate runs`
pub(crate) async fn runs(
    global: &Global,
    system: Option<&str>,
    action: Option<&str>,
    show: Option<&str>,
) -> anyhow::Result<Outcome> {
    let client = client(global)?;
    if let Some(id) = show {
        let run = match refused_or(client.run(id)).await? {
            Ok(run) => run,
            Err(outcome) => return Ok(outcome),
        };
        return print_run(global, &run);
    }
    let runs = match refused_or(client.runs(system, action, None)).await? {
        Ok(runs) => runs,
        Err(outcome) => return Ok(outcome),
    };
    if global.output == Output::Json {
        print_json(&runs)?;
        return Ok(Outcome::Success);
    }
    if runs.is_empty() {
        println!("no runs");
    }
    for run in &runs {
        let who = match &run.approved_by {
            Some(approver) => format!("{} (approved by {approver})", run.requested_by),
            None => run.requested_by.clone(),
        };
        let why = run.reason.as_deref().map(|r| format!(" \"{r}\"")).unwrap_or_default();
        println!(
            "{:<8} {}  {}/{}  {:<17} by {who}{why}\n         {}",
            run.id, run.requested_at, run.system, run.action, run.state, run.summary
        );
    }
    Ok(Outcome::Success)
}

fn print_run(global: &Global, run: &endstate_api::RunView) -> anyhow::Result<Outcome> {
    if global.output == Output::Json {
        print_json(run)?;
        return Ok(run_outcome(run));
    }
    let params: Vec<String> = run.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{} {}/{} {}  asked by {} at {}{}",
        run.id,
        run.system,
        run.action,
        params.join(" "),
        run.requested_by,
        run.requested_at,
        run.approved_by
            .as_deref()
            .map(|a| format!(", approved by {a}"))
            .unwrap_or_default()
    );
    if let Some(reason) = &run.reason {
        println!("  why: {reason}");
    }
    println!("  {}: {}", run.state, run.summary);
    for host in &run.hosts {
        println!(
            "  {:<16} {:<10}{}{}",
            host.host,
            host.state,
            host.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default(),
            if host.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", host.detail)
            }
        );
        for line in host.output.lines() {
            println!("    | {line}");
        }
    }
    Ok(run_outcome(run))
}

fn run_outcome(run: &endstate_api::RunView) -> Outcome {
    match run.state.as_str() {
        "succeeded" => Outcome::Success,
        "awaiting_approval" | "running" => Outcome::StillOpen,
        _ => Outcome::Failed,
    }
}

/// Prints each host's output as it comes (`host | line`) and each host's end, until the run ends.
async fn follow_run(
    global: &Global,
    client: &endstate_client::Client,
    mut run: endstate_api::RunView,
) -> anyhow::Result<Outcome> {
    let json = global.output == Output::Json;
    if !json {
        println!(
            "{} of {}/{} on {} host(s)",
            run.id,
            run.system,
            run.action,
            run.hosts.len()
        );
    }
    let mut printed: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut partial: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut ended: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    loop {
        for host in &run.hosts {
            let seen = printed.entry(host.host.clone()).or_default();
            if host.output_bytes > *seen && !json {
                let new = usize::try_from(host.output_bytes - *seen).unwrap_or(usize::MAX);
                let text = &host.output;
                let mut start = text.len().saturating_sub(new);
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                let pending = partial.entry(host.host.clone()).or_default();
                pending.push_str(&text[start..]);
                while let Some(newline) = pending.find('\n') {
                    println!("{:<16} | {}", host.host, &pending[..newline]);
                    pending.drain(..=newline);
                }
            }
            *seen = host.output_bytes.max(*seen);
            let done = !matches!(host.state.as_str(), "pending" | "running");
            if done && ended.insert(host.host.clone()) && !json {
                if let Some(rest) = partial.remove(&host.host).filter(|p| !p.is_empty()) {
                    println!("{:<16} | {rest}", host.host);
                }
                println!(
                    "{:<16} = {}{}{}",
                    host.host,
                    host.state,
                    host.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default(),
                    if host.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", host.detail)
                    }
                );
            }
        }
        if !matches!(run.state.as_str(), "running" | "awaiting_approval") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        run = client.run(&run.id).await?;
    }
    if json {
        print_json(&run)?;
    } else {
        println!("{} {}: {}", run.id, run.state, run.summary);
    }
    Ok(run_outcome(&run))
}

/// `endstate source add|list|show|sync|remove`
pub(crate) async fn source(global: &Global, command: crate::cli::SourceCommand) -> anyhow::Result<Outcome> {
    use crate::cli::SourceCommand;
    let client = client(global)?;
    let views = match command {
        SourceCommand::Add {
            name,
            repo,
            branch,
            paths,
            interval,
            credentials_file,
            webhook_secret_file,
        } => {
            let request = endstate_api::AddSource {
                name,
                repository: repo,
                branch: Some(branch),
                paths,
                interval,
                credentials_file,
                webhook_secret_file,
            };
            match refused_or(client.add_source(&request)).await? {
                Ok(view) => vec![view],
                Err(outcome) => return Ok(outcome),
            }
        }
        SourceCommand::List => match refused_or(client.sources()).await? {
            Ok(views) => views,
            Err(outcome) => return Ok(outcome),
        },
        SourceCommand::Show { name } => match refused_or(client.source(&name)).await? {
            Ok(view) => vec![view],
            Err(outcome) => return Ok(outcome),
        },
        SourceCommand::Sync { name } => match refused_or(client.sync_source(&name)).await? {
            Ok(view) => vec![view],
            Err(outcome) => return Ok(outcome),
        },
        SourceCommand::Remove { name } => match refused_or(client.remove_source(&name)).await? {
            Ok(view) => {
                if global.output != Output::Json {
                    println!(
                        "source {} removed; its systems stay, owned by the API: {}",
                        view.name,
                        if view.systems.is_empty() {
                            "none".to_owned()
                        } else {
                            view.systems.join(", ")
                        }
                    );
                    return Ok(Outcome::Success);
                }
                vec![view]
            }
            Err(outcome) => return Ok(outcome),
        },
    };
    if global.output == Output::Json {
        for view in &views {
            println!("{}", serde_json::to_string(view)?);
        }
        return Ok(Outcome::Success);
    }
    if views.is_empty() {
        println!("No sources.");
    }
    for view in &views {
        let paths = if view.paths.iter().all(String::is_empty) {
            "the whole repository".to_owned()
        } else {
            view.paths.join(", ")
        };
        println!("{}: {} branch {} ({paths})", view.name, view.repository, view.branch);
        println!("  {}", view.summary);
        let short = |c: &Option<String>| c.as_deref().map_or("-".to_owned(), |c| c.chars().take(12).collect());
        println!(
            "  head {}  latest revision {}  in force {}  fetched {} ({} fetches, every {} s)",
            short(&view.head),
            short(&view.latest),
            short(&view.in_force),
            view.fetched_at.as_deref().unwrap_or("never"),
            view.fetches,
            view.interval_ms / 1000
        );
        if !view.systems.is_empty() {
            println!("  owns {}", view.systems.join(", "));
        }
        for problem in &view.problems {
            println!("  problem: {problem}");
        }
    }
    Ok(Outcome::Success)
}
