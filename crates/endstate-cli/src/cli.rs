//! The command line: every subcommand, flag and its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// endstate: declare the end state of your systems; endstate plans the way there, gates every
/// step on health, executes through agents and records everything on a timeline per system.
///
/// Start here: `endstate dev` runs a server with the example systems; in another terminal
/// `endstate status` shows them. Commands that talk to a server find it through --server and
/// --token, the ENDSTATE_SERVER and ENDSTATE_TOKEN environment variables, or the config file
/// `endstate dev` writes.
#[derive(Debug, Parser)]
#[command(name = "endstate", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command understands.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The server's address, e.g. http://127.0.0.1:7700.
    #[arg(long, global = true, env = "ENDSTATE_SERVER")]
    pub(crate) server: Option<String>,
    /// The bearer token to call the server with.
    #[arg(long, global = true, env = "ENDSTATE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The client config file (default: $XDG_CONFIG_HOME/endstate/config.json).
    #[arg(long, global = true, env = "ENDSTATE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// How read commands print: text for people, json for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the API server on a data directory (SQLite inside). Prints the admin token at the first start.
    Server(ServerArgs),
    /// Run the host agent (arrives with the agents work; not available yet).
    Agent,
    /// Run everything on this machine: a server on SQLite in a data directory, with the example
    /// systems applied. Prints the API address and the admin token, and writes the client config.
    Dev(DevArgs),
    /// Check a spec directory: every problem at once, with file:line:column. Exit 1 on any error.
    Validate {
        /// The spec directory (YAML files, searched recursively).
        dir: PathBuf,
    },
    /// Show what applying a spec directory would change, field by field, without changing anything.
    ///
    /// With a server, the plan is made against its latest revision and its hosts; with --offline
    /// (or no server configured), against nothing.
    Plan {
        /// The spec directory.
        dir: PathBuf,
        /// Plan locally against an empty state, without a server.
        #[arg(long)]
        offline: bool,
    },
    /// Show the plan, submit the spec directory as a new revision, and follow the change until it
    /// converges or fails. Exit 0 converged, 1 failed or stopped, 2 refused, 3 still open at --timeout.
    Apply(ApplyArgs),
    /// Systems as a tree with their rolled-up status and the reason for anything not healthy.
    Status {
        /// One system (with its subsystems and components); all top-level systems if absent.
        system: Option<String>,
    },
    /// What happened: changes, decisions, state transitions, newest last.
    Timeline(TimelineArgs),
    /// The hosts of the inventory with liveness, labels and what is placed on them.
    Hosts,
    /// Print the JSON Schema of a spec document, for editors.
    Schema,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:7700", env = "ENDSTATE_LISTEN")]
    pub(crate) listen: String,
    /// Where the server keeps its state.
    #[arg(long, default_value = "/var/lib/endstate", env = "ENDSTATE_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Requests per second each client may send.
    #[arg(long, default_value_t = 200)]
    pub(crate) rate_limit: u32,
    /// Requests a client may send in a burst.
    #[arg(long, default_value_t = 400)]
    pub(crate) rate_burst: u32,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Where the development server keeps its state.
    #[arg(long, default_value = ".endstate")]
    pub(crate) data_dir: PathBuf,
    /// Where to listen (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub(crate) listen: String,
    /// The spec directory to apply at start.
    #[arg(long, default_value = "examples")]
    pub(crate) examples: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The spec directory.
    pub(crate) dir: PathBuf,
    /// Do not ask for confirmation (for scripts and CI).
    #[arg(long, short)]
    pub(crate) yes: bool,
    /// Why this change is made.
    #[arg(long, short, default_value = "")]
    pub(crate) message: String,
    /// Submit and return without following the change.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Stop following after this long (e.g. 90s, 10m); the change goes on.
    #[arg(long, default_value = "10m")]
    pub(crate) timeout: String,
}

#[derive(Debug, Args)]
pub(crate) struct TimelineArgs {
    /// A system: its events and those of all its subsystems.
    pub(crate) system: Option<String>,
    /// From this time on: RFC 3339 or a duration back from now (90s, 15m, 1h, 7d).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Before this time.
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Only these kinds, comma-separated; `change.` matches every change event.
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Only events about this host.
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// At most this many events (the newest).
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub(crate) follow: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a named token; its secret is printed once.
    Create {
        /// The token's name, shown on the timeline for everything it does.
        #[arg(long)]
        name: String,
        /// viewer (read only) or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}
