//! The `endstate` binary: the server, the development setup and the CLI in one.
//!
//! Exit codes: 0 success; 1 a check or a change failed (invalid spec, change not converged);
//! 2 bad usage or a refused request; 3 a followed change was still open at the timeout;
//! 4 the server could not be reached (connection or TLS failure: nothing was asked of it).

mod cli;
mod commands;
mod config;
mod dev;
mod render;
mod server_config;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

/// How a command ended, beyond success.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Everything went as asked.
    Success,
    /// What was checked or followed failed (the command already said why).
    Failed,
    /// The request was refused (the command already said why).
    Refused,
    /// A followed change was still open when we stopped following.
    StillOpen,
}

fn main() -> ExitCode {
    let known: Vec<String> = <Cli as clap::CommandFactory>::command()
        .find_subcommand("server")
        .map(|server| {
            server
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let args = match server_config::expand(std::env::args_os().collect(), &known) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Refused) => ExitCode::from(2),
        Ok(Outcome::StillOpen) => ExitCode::from(3),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(match error.downcast_ref::<endstate_client::ClientError>() {
                Some(endstate_client::ClientError::Connect { .. }) => 4,
                Some(_) => 2,
                None => 1,
            })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let global = &cli.global;
    match cli.command {
        Command::Server {
            action: Some(cli::ServerCommand::AdminToken { data_dir }),
            ..
        } => {
            let secret = endstate_server::reset_admin_token(&data_dir).await?;
            println!("new admin token (shown once, stored hashed; the previous one is revoked): {secret}");
            Ok(Outcome::Success)
        }
        Command::Server { action: None, args } => dev::server(args).await,
        Command::Dev(args) => dev::dev(global, args).await,
        Command::Version => commands::version(global).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "endstate", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)?;
            println!("man pages written to {}", dir.display());
            Ok(Outcome::Success)
        }
        Command::Login { server, ca_sha256, yes } => dev::login(global, &server, ca_sha256.as_deref(), yes).await,
        Command::Agent(args) => dev::agent(global, args).await,
        Command::Validate { dir } => commands::validate(global, &dir),
        Command::Plan {
            dir,
            offline,
            source,
            branch,
            rollout,
        } => match (source, dir) {
            (Some(source), _) => commands::plan_source(global, &source, branch, &rollout.options()).await,
            (None, Some(dir)) => commands::plan(global, &dir, offline, &rollout.options()).await,
            (None, None) => anyhow::bail!("name a spec directory, or a Git source with --source"),
        },
        Command::Apply(args) => commands::apply(global, args).await,
        Command::Status { system } => commands::status(global, system.as_deref()).await,
        Command::Timeline(args) => commands::timeline(global, args).await,
        Command::Describe { system } => commands::describe(global, &system).await,
        Command::Note { system, text } => commands::note(global, &system, &text).await,
        Command::Change { action } => commands::change(global, action).await,
        Command::Rollback {
            system,
            to,
            reason,
            yes,
        } => commands::rollback(global, &system, to, reason.as_deref(), yes).await,
        Command::Alerts => commands::alerts(global).await,
        Command::Silence {
            system,
            check,
            host,
            labels,
            until,
            starts,
            reason,
        } => commands::silence(global, system, check, host, &labels, (starts, until), reason).await,
        Command::Silences => commands::silences(global).await,
        Command::Review { since, system } => commands::review(global, since.as_deref(), system.as_deref()).await,
        Command::Unsilence { id } => commands::unsilence(global, id).await,
        Command::Ack {
            check,
            target,
            filter,
            message,
        } => commands::ack(global, check, target, filter, &message, true).await,
        Command::Annotate {
            check,
            target,
            filter,
            message,
        } => commands::ack(global, check, target, filter, &message, false).await,
        Command::Run {
            action,
            system,
            params,
            hosts,
            reason,
            no_follow,
        } => commands::run_action(global, &system, &action, &params, hosts, reason, !no_follow).await,
        Command::Approve { run, reason } => commands::approve_run(global, &run, reason).await,
        Command::Cancel { run, reason } => commands::cancel_run(global, &run, reason).await,
        Command::Runs { system, action, show } => {
            commands::runs(global, system.as_deref(), action.as_deref(), show.as_deref()).await
        }
        Command::Scale {
            component,
            count,
            reason,
        } => commands::scale(global, &component, count, reason.as_deref()).await,
        Command::History { target } => commands::history(global, &target).await,
        Command::Why { target, at, window } => commands::why(global, &target, at.as_deref(), window.as_deref()).await,
        Command::Inventory {
            host,
            selector,
            system,
            kind,
            csv,
        } => {
            let filter = endstate_client::HostsFilter { selector, system, kind };
            commands::inventory(global, host.as_deref(), &filter, csv).await
        }
        Command::Hosts { action: None } => commands::hosts(global).await,
        Command::Hosts {
            action: Some(cli::HostsCommand::Revoke { host, yes }),
        } => commands::hosts_revoke(global, &host, yes).await,
        Command::Logs(args) => commands::logs(global, args).await,
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&endstate_spec::json_schema())?);
            Ok(Outcome::Success)
        }
        Command::Source(command) => commands::source(global, command).await,
        Command::Token(cli::TokenCommand::List) => commands::token_list(global).await,
        Command::Token(cli::TokenCommand::Revoke { name }) => commands::token_revoke(global, &name).await,
        Command::Token(cli::TokenCommand::Create {
            name,
            role,
            systems,
            join,
            ttl,
            labels,
            host,
        }) => {
            if join {
                commands::join_token_create(global, ttl, labels.as_deref(), host).await
            } else {
                commands::token_create(global, name.as_deref().unwrap_or_default(), &role, &systems).await
            }
        }
    }
}
