//! The agent's command line (feature `cli`): its flags, shared by `endstate agent` and the
//! smaller `endstate-agent` binary, and [`run`], which starts the agent from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Log format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people; colour only on a terminal.
    Text,
    /// JSON lines.
    Json,
}

/// The flags of `endstate agent` (and of `endstate-agent`, with `--server`).
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The one-time join token (`endstate token create --join`); needed only until the agent is enrolled.
    #[arg(long, env = "ENDSTATE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The SHA-256 of the server's CA, as `token create --join` prints it: checked at enrolment.
    #[arg(long, env = "ENDSTATE_CA_SHA256")]
    pub ca_sha256: Option<String>,
    /// The host name to enrol as (default: this machine's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Labels to ask for, `key=value,key=value` (a join token's labels win).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Identity, observation buffer, artifacts and instance directories.
    #[arg(long, default_value = "/var/lib/endstate-agent", env = "ENDSTATE_AGENT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where relative artifact paths of the spec are found (default: the data directory).
    #[arg(long)]
    pub artifact_root: Option<PathBuf>,
    /// A PEM file of CAs to trust besides the system's, for `https` artifacts and HTTP checks (repeatable).
    #[arg(long = "trust-ca", value_name = "FILE")]
    pub trust_ca: Vec<PathBuf>,
    /// Between two keepalives, like `5s` or `500ms`.
    #[arg(long, default_value = "5s")]
    pub keepalive: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Stop (gracefully) when the parent process goes away: how `endstate dev` ties its agents to itself.
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// Logs to stderr, filtered by `ENDSTATE_LOG` (default `info`), colour only on a terminal.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENDSTATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the agent for the server's API at `server` until SIGINT or SIGTERM (or, with
/// `--exit-with-parent`, until its parent is gone); its instances are stopped first.
///
/// # Errors
/// Bad flags, or why the agent stopped (see [`crate::link::AgentError`]).
pub async fn run(server: String, args: AgentArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let host = match args.name {
        Some(name) => name,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_lowercase())
            .context("no --name and /etc/hostname is unreadable")?,
    };
    let keepalive = parse_duration(&args.keepalive)
        .map_err(|error| anyhow::anyhow!("--keepalive {:?}: {error}", args.keepalive))?;
    let options = crate::link::AgentOptions {
        server,
        join_token: args.join_token,
        ca_sha256: args.ca_sha256,
        host,
        labels: parse_labels(&args.labels)?,
        artifact_root: args.artifact_root.unwrap_or_else(|| args.data_dir.clone()),
        data_dir: args.data_dir,
        keepalive,
        trusted_ca_files: args.trust_ca,
    };
    let exit_with_parent = args.exit_with_parent;
    let stop = async move {
        if exit_with_parent {
            tokio::select! {
                () = shutdown_signal() => {}
                () = parent_gone() => tracing::warn!("The parent process is gone; stopping."),
            }
        } else {
            shutdown_signal().await;
        }
    };
    crate::link::run(options, stop).await?;
    Ok(())
}

/// `key=value,key=value`.
///
/// # Errors
/// A pair without `=`.
pub fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--labels: {pair:?} is not key=value");
        };
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// `500ms`, `5s`, `2m`: more than zero.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a number and a unit, like 5s".to_owned())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        other => return Err(format!("unknown unit {other:?}: expected ms, s or m")),
    };
    if duration.is_zero() {
        return Err("expected more than 0".to_owned());
    }
    Ok(duration)
}

/// Resolves at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("Shutting down.");
}

/// Resolves when this process is re-parented (its parent died, even by SIGKILL).
async fn parent_gone() {
    let parent = nix::unistd::getppid();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if nix::unistd::getppid() != parent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse_or_say_why() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").unwrap_err().contains("more than 0"));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").unwrap_err().contains("a number"));
        assert_eq!(
            parse_labels("zone=a, role = web").unwrap(),
            BTreeMap::from([
                ("role".to_owned(), "web".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ])
        );
        assert!(parse_labels("zone").is_err());
    }
}
