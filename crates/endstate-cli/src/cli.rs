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
    /// The CA (PEM) the server's certificate must come from (default: the one `endstate login`
    /// pinned in the client config, else the system's roots).
    #[arg(long, global = true, env = "ENDSTATE_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// How read commands print: text for people, json for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

pub(crate) use endstate_agent::cli::{AgentArgs, LogFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the API server on a data directory (SQLite inside). Prints the admin token at the first start.
    #[command(args_conflicts_with_subcommands = true, args_override_self = true)]
    Server {
        #[command(subcommand)]
        action: Option<ServerCommand>,
        #[command(flatten)]
        args: ServerArgs,
    },
    /// Run the host agent: enrol with a join token (first start), then run what the server assigns.
    Agent(AgentArgs),
    /// Run everything on this machine: a server on SQLite in a data directory, with the example
    /// systems applied. Prints the API address and the admin token, and writes the client config.
    Dev(DevArgs),
    /// The client's version and, when a server is configured, the server's.
    Version,
    /// Print a shell completion script: `endstate completions bash > /etc/bash_completion.d/endstate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (`endstate.1` and one per command) into a directory: `endstate man /usr/local/share/man/man1`.
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
    /// Sign in to a server: check its certificate, pin its CA (fingerprint shown, as ssh does) and
    /// write the server, the token and the CA to the client config.
    Login {
        /// The server's address, like https://endstate.example:7700.
        server: String,
        /// The SHA-256 of the server's CA, as `endstate server` prints it: checked instead of asked.
        #[arg(long)]
        ca_sha256: Option<String>,
        /// Trust the CA presented without asking (scripts; prefer --ca-sha256).
        #[arg(long, short)]
        yes: bool,
    },
    /// Check a spec directory: every problem at once, with file:line:column. Exit 1 on any error.
    Validate {
        /// The spec directory (YAML files, searched recursively).
        dir: PathBuf,
    },
    /// Show what applying a spec directory would change, field by field, without changing anything.
    ///
    /// With a server, the plan is made against its latest revision and its hosts; with --offline
    /// (or no server configured), against nothing. With --source (and --ref), the server previews
    /// a branch of a Git source before it is merged: exit 0 when it would apply, 1 when its
    /// commit would be refused (each problem located).
    Plan {
        /// The spec directory.
        #[arg(required_unless_present = "source")]
        dir: Option<PathBuf>,
        /// Plan locally against an empty state, without a server.
        #[arg(long, conflicts_with = "source")]
        offline: bool,
        /// Preview a Git source's branch (its head under the source's paths) instead of a directory.
        #[arg(long, conflicts_with = "dir")]
        source: Option<String>,
        /// The branch previewed with --source. Default: the branch the source follows.
        #[arg(long = "ref", requires = "source")]
        branch: Option<String>,
        #[command(flatten)]
        rollout: RolloutFlags,
    },
    /// Show the plan, submit the spec directory as a new revision, and follow the change until it
    /// converges or fails. Exit 0 converged, 1 failed or stopped, 2 refused, 3 still open at --timeout.
    Apply(ApplyArgs),
    /// Systems as a tree with their rolled-up status and the reason for anything not healthy.
    Status {
        /// One system (with its subsystems and components); all top-level systems if absent.
        system: Option<String>,
    },
    /// Everything about one system on one screen: what it is, owners, whom to escalate to, links,
    /// what operators may do (actions and their engagement), subsystems and the aggregates it
    /// belongs to, its status with the leaf that decided it, its instances and its last events.
    Describe {
        /// The system.
        system: String,
    },
    /// Add a note to a system's timeline (`note.added`, signed with your token's name), e.g.
    /// `endstate note shop "failing over the DB, see INC-42"`. At most 4 KiB.
    Note {
        /// The system.
        system: String,
        /// What to note.
        text: String,
    },
    /// What happened: changes, decisions, state transitions, notes, newest last.
    ///
    /// With `-o json` every event is printed as one JSON object per line (JSON lines), ready
    /// for export: `endstate timeline shop --since 7d --limit 1000 -o json > shop.jsonl`.
    Timeline(TimelineArgs),
    /// Always broken, or did it just happen? The history of a host, an instance or a check over
    /// the last 30 days, from its transitions on the timeline.
    ///
    /// TARGET is `host:NAME`, an instance `system/component#slot@host` (e.g.
    /// `storefront/web#0@dev-a`) or a check `check:system/check@host` (its results on that host). Shows the current state, since when it fails, when it first
    /// failed, the number of transitions, the share of time failing over 24 h, 7 d and 30 d
    /// (time before the first event and unknown time are not counted), whether it flaps (5 or
    /// more changes between healthy and failing in the last hour), and a label: `chronic`
    /// (failing more than half of the last 7 days and more than 24 h of them, or failing now
    /// for more than 24 h), `new`
    /// (failing, not chronic) or `ok`.
    History {
        /// `host:NAME`, `system/component#slot@host` or `check:system/check@host`.
        target: String,
    },
    /// What changed right before? The changes, actions, host events, configuration revisions
    /// and notes of the target's system, its subsystems and its hosts in the window before its
    /// state changed, ranked by closeness in time and in topology, each with why it is listed.
    ///
    /// TARGET is a system (`storefront` or `system:storefront`), `host:NAME`, an instance
    /// `system/component#slot@host` or a check `check:system/check@host`. The moment is when it
    /// started failing (or last changed state; for a system, when something in it last turned
    /// bad), unless `--at` gives one.
    Why {
        /// A system, `host:NAME`, `system/component#slot@host` or `check:system/check@host`.
        target: String,
        /// The moment to explain: an RFC 3339 time or a duration ago (`90m`).
        #[arg(long)]
        at: Option<String>,
        /// How far back before that moment to look (default 1h, at most 30d).
        #[arg(long)]
        window: Option<String>,
    },
    /// The inventory (the CMDB): hosts with agents and the static entries of the spec, with
    /// labels, facts, systems and liveness; with HOST, that host's changes and what ran on it when.
    ///
    /// `--csv` exports the list as CSV (one column per fact), `-o json` as JSON:
    /// `endstate inventory --selector zone=a --csv > zone-a.csv`.
    Inventory {
        /// One host: its facts, the history of its changes, and what ran on it when.
        host: Option<String>,
        /// Only hosts whose labels match: `zone=a,role=web`, `zone=a|b`.
        #[arg(long)]
        selector: Option<String>,
        /// Only hosts serving this system or one of its subsystems.
        #[arg(long)]
        system: Option<String>,
        /// Only `agent` hosts or only `static` entries.
        #[arg(long)]
        kind: Option<String>,
        /// Print CSV: name, kind, liveness, systems, labels, description, last seen, instances,
        /// then one `fact:KEY` column per scalar fact.
        #[arg(long, conflicts_with = "host")]
        csv: bool,
    },
    /// The hosts of the inventory with liveness, labels and instances; `hosts revoke HOST`.
    Hosts {
        #[command(subcommand)]
        action: Option<HostsCommand>,
    },
    /// The recent stdout and stderr of an instance, asked of its agent.
    Logs(LogsArgs),
    /// Act on a change: pause it (no further wave starts), resume it (also a halted one), or
    /// abort it (it goes back to the last converged revision, wave by wave, gated).
    Change {
        #[command(subcommand)]
        action: ChangeAction,
    },
    /// Go back to an earlier revision. While a change rolls out (or is halted), it is aborted and
    /// goes back to the last converged revision, gated; otherwise REVISION (by default the one
    /// converged before the last) is submitted again and rolls out like any change. A revision
    /// holds every system: all of them go back.
    Rollback {
        /// The system you act on (checked against your token's systems; on the timeline).
        system: String,
        /// The revision to go back to.
        #[arg(long)]
        to: Option<u64>,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
        /// Do not ask for confirmation (for scripts).
        #[arg(long, short)]
        yes: bool,
    },
    /// Run another number of instances of one component: the latest revision with that count is
    /// submitted as a new revision whose change rolls out like any other (only that component
    /// moves). The count keeps its kind, per host or in total. A spec taken from Git is not
    /// changed: its next commit declares its own count.
    Scale {
        /// The component, `system/name`.
        component: String,
        /// The new count (1 to 10000).
        count: u32,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run an action a system declares, on its hosts (or some of them), and follow each host's
    /// output live until every host has ended. An action needing approval waits for a second
    /// person's `endstate approve RUN`; an escalate-only one names whom to call instead.
    Run {
        /// The action's name.
        action: String,
        /// The system whose action it is.
        #[arg(long)]
        system: String,
        /// A parameter, `name=value` (repeat for more).
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Only these of the action's hosts, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Why, for the timeline and the approver.
        #[arg(long)]
        reason: Option<String>,
        /// Print the run and return at once, without following it.
        #[arg(long)]
        no_follow: bool,
    },
    /// Approve a run someone else asked for; it starts at once and is followed.
    Approve {
        /// The run, `run-N`.
        run: String,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a run: one awaiting approval never runs, a running one is killed on its hosts.
    Cancel {
        /// The run, `run-N`.
        run: String,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Recent runs of actions, newest first: did someone just do that already?
    Runs {
        /// Only this system's runs.
        #[arg(long)]
        system: Option<String>,
        /// Only runs of this action.
        #[arg(long)]
        action: Option<String>,
        /// Show this run in full (each host's state and output tail).
        #[arg(long)]
        show: Option<String>,
    },
    /// The open alerts: status, check, target, host, since when, flags (acknowledged, silenced,
    /// flapping, consequence of a down host) and the check's message.
    Alerts,
    /// Acknowledge open alerts: one (CHECK TARGET), or every one matching --system, --host,
    /// --check or --all. An alert stays open until its check is OK and says who is on it.
    Ack {
        /// The check, `system/check`; without it (and TARGET), every open alert matching the
        /// filters is acknowledged at once.
        check: Option<String>,
        /// What it watches: a host name or an instance id (`storefront/web#0`).
        target: Option<String>,
        #[command(flatten)]
        filter: AlertFilter,
        /// What you are doing about it.
        #[arg(long, short)]
        message: String,
    },
    /// Add a note to open alerts (what you found, a link), leaving their acknowledgement as it
    /// is: one alert (CHECK TARGET) or every one matching the filters.
    Annotate {
        /// The check, `system/check`.
        check: Option<String>,
        /// What it watches: a host name or an instance id.
        target: Option<String>,
        #[command(flatten)]
        filter: AlertFilter,
        /// The note.
        #[arg(long, short)]
        message: String,
    },
    /// Keep matching alerts from notifying until a time (they still open, marked silenced, and
    /// the timeline says what was held back). At least one of --system, --check, --host, --label.
    Silence {
        /// Only this system's checks.
        #[arg(long)]
        system: Option<String>,
        /// Only this check, `system/check`.
        #[arg(long)]
        check: Option<String>,
        /// Only checks running on this host.
        #[arg(long)]
        host: Option<String>,
        /// Only checks on hosts with this label, `key=value` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// How long from now (`2h`) or until when (RFC 3339).
        #[arg(long = "for", value_name = "DURATION")]
        until: String,
        /// From when, for maintenance planned ahead: a duration from now (`1h`) or RFC 3339.
        /// Default now.
        #[arg(long = "from", value_name = "TIME")]
        starts: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// The active silences.
    Silences,
    /// What needs a person (unacknowledged, flapping, silenced alerts, silences ending within the
    /// hour) and what fired in a period: for how long, time to acknowledge and to resolve.
    Review {
        /// The period: from this time (RFC 3339 or a duration back, e.g. 24h; default 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this system.
        #[arg(long)]
        system: Option<String>,
    },
    /// End a silence now.
    Unsilence {
        /// The silence's number.
        id: u64,
    },
    /// Print the JSON Schema of a spec document, for editors.
    Schema,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Git sources: branches of repositories followed as desired state.
    #[command(subcommand)]
    Source(SourceCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// A YAML file of settings, each a flag's long name and its value (`listen: 0.0.0.0:7700`,
    /// `alert-webhook: [URL]`, `insecure-http: false`); flags given here win over it.
    #[arg(long, value_name = "FILE", env = "ENDSTATE_SERVER_CONFIG")]
    pub(crate) config_file: Option<PathBuf>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:7700", env = "ENDSTATE_LISTEN")]
    pub(crate) listen: String,
    /// Where the server keeps its state.
    #[arg(long, default_value = "/var/lib/endstate", env = "ENDSTATE_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Where agents connect (mutual TLS); `none` for no agent listener.
    #[arg(long, default_value = "127.0.0.1:7701", env = "ENDSTATE_AGENT_LISTEN")]
    pub(crate) agent_listen: String,
    /// The URL agents are told to connect to, when it differs from the listener (`wss://host:port/v1/agent`).
    #[arg(long)]
    pub(crate) agent_url: Option<String>,
    /// The Prometheus server that metric gates (`gates:` of a component) query, like
    /// `http://127.0.0.1:9090`. Point its `http_sd_configs` at `/v1/prometheus/targets` to
    /// scrape every instance.
    #[arg(long, env = "ENDSTATE_PROMETHEUS_URL")]
    pub(crate) prometheus_url: Option<String>,
    /// A URL every alert notification is POSTed to as JSON (`{"kind": "endstate.alert",
    /// "reason", "alert"}`), retried with backoff; repeatable.
    #[arg(long = "alert-webhook", value_name = "URL")]
    pub(crate) alert_webhooks: Vec<String>,
    /// A program run for every alert notification (a command handler): the notification's JSON
    /// on its stdin, `ENDSTATE_ALERT_{REASON,CHECK,TARGET,HOST,SYSTEM,STATUS}` in its
    /// environment, its process group killed after 30 s; repeatable. No shell, no arguments.
    #[arg(long = "alert-command", value_name = "PROGRAM")]
    pub(crate) alert_commands: Vec<PathBuf>,
    /// A URL POSTed the notification of every alert that opens, to open a ticket: the link in its
    /// JSON answer (`url`, `link` or `ticket_url`) is stored on the alert and shown with it.
    #[arg(long = "ticket-webhook", value_name = "URL")]
    pub(crate) ticket_webhook: Option<String>,
    /// Keep timeline events of a kind for this long, like `check.status=7d` or `instance.=30d`
    /// (a prefix ends in `.`); older ones are deleted every 10 minutes, except the newest of each
    /// subject (its latest state). Repeatable; kinds without a rule are kept forever.
    #[arg(long = "retain", value_name = "KIND=DURATION", value_parser = parse_retention)]
    pub(crate) retain: Vec<endstate_server::RetentionRule>,
    #[command(flatten)]
    pub(crate) tls: ServerTlsFlags,
    /// Requests per second each client may send.
    #[arg(long, default_value_t = 200)]
    pub(crate) rate_limit: u32,
    /// Requests a client may send in a burst.
    #[arg(long, default_value_t = 400)]
    pub(crate) rate_burst: u32,
    /// Every agent of this server runs on this one machine (a lab, a demo): ports the server
    /// allocates are then unique across hosts, not only on each host.
    #[arg(long)]
    pub(crate) agents_on_one_machine: bool,
    /// The ports the server gives components that fix none, as FIRST-LAST (for firewall rules,
    /// or labs sharing a machine).
    #[arg(long, value_name = "FIRST-LAST", default_value = "20000-29999", value_parser = parse_port_range)]
    pub(crate) dynamic_ports: std::ops::RangeInclusive<u16>,
    /// How long a host's agent may stay unreachable before its instances move to other hosts,
    /// like `10m` (the default), or `off`: the server then proposes a change that moves them,
    /// which starts by itself and rolls out in waves, gated like any other. Counted while this
    /// server runs, so a restart never moves instances for time it did not watch.
    #[arg(long, value_name = "DURATION|off", default_value = "10m")]
    pub(crate) evacuate_after: String,
    /// The keepalive interval agents are held to (3 missed: unreachable), like `5s` (the
    /// default); for benchmarks and tests, so liveness can be exercised quickly.
    #[arg(long, hide = true)]
    pub(crate) keepalive_interval: Option<String>,
}

/// `endstate server …` tasks run while the server is stopped.
#[derive(Debug, Subcommand)]
pub(crate) enum ServerCommand {
    /// Replace a lost admin token (the server must be stopped): revokes the old one, prints the
    /// new one once; the replacement is on the timeline when the server starts.
    AdminToken {
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/endstate", env = "ENDSTATE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// How the server speaks TLS and whom it trusts when it calls out.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct ServerTlsFlags {
    /// The API's certificate chain (PEM), with --tls-key; read again when it changes. Default:
    /// a certificate from the server's own CA (`pki/ca.pem` in the data directory), which
    /// clients pin with `endstate login`.
    #[arg(long, value_name = "FILE", requires = "tls_key", env = "ENDSTATE_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM), with --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "ENDSTATE_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Another DNS name or IP address clients reach the server by, for the built-in certificate (repeatable).
    #[arg(long = "tls-name", value_name = "NAME")]
    pub(crate) tls_names: Vec<String>,
    /// Serve the API over plain HTTP. Refused unless the listen address is a loopback one.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_names"])]
    pub(crate) insecure_http: bool,
    /// A PEM file of CAs to trust besides the system's when calling out: webhooks, tickets,
    /// Prometheus (repeatable).
    #[arg(long = "trust-ca", value_name = "FILE")]
    pub(crate) trust_ca: Vec<PathBuf>,
    /// A file whose first line is the bearer token for --prometheus-url.
    #[arg(long, value_name = "FILE", conflicts_with = "prometheus_basic_auth_file")]
    pub(crate) prometheus_bearer_token_file: Option<PathBuf>,
    /// A file whose first line is `user:password` for --prometheus-url (HTTP basic authentication).
    #[arg(long, value_name = "FILE")]
    pub(crate) prometheus_basic_auth_file: Option<PathBuf>,
    /// A file whose first line is the secret webhook and ticket calls are signed with
    /// (`endstate-signature: sha256=HMAC(DELIVERY.TIMESTAMP.BODY)`); default: `webhook-secret` in the data
    /// directory, made at the first start.
    #[arg(long, value_name = "FILE")]
    pub(crate) webhook_secret_file: Option<PathBuf>,
}

/// `endstate hosts …`
#[derive(Debug, Subcommand)]
pub(crate) enum HostsCommand {
    /// Revoke a host: its agent is disconnected and may not connect again until it enrols anew.
    Revoke {
        /// The host.
        host: String,
        /// Do not ask for confirmation (for scripts).
        #[arg(long, short)]
        yes: bool,
    },
}

/// `endstate logs`
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The instance, `system/component#slot` (or `system/component` when it has one instance).
    pub(crate) instance: String,
    /// The host it runs on (default: the only host that runs it).
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Keep printing new output.
    #[arg(long, short)]
    pub(crate) follow: bool,
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
    /// Where the agents connect (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub(crate) agent_listen: String,
    /// How many local agents to start (zones a, b, c, …), each a separate process and data directory.
    #[arg(long, default_value_t = 3)]
    pub(crate) agents: u8,
    /// The ports the server gives components that fix none, as FIRST-LAST (two labs on one
    /// machine each take their own).
    #[arg(long, value_name = "FIRST-LAST", default_value = "20000-29999", value_parser = parse_port_range)]
    pub(crate) dynamic_ports: std::ops::RangeInclusive<u16>,
    /// The Prometheus server that metric gates (`gates:` of a component) query, like
    /// `http://127.0.0.1:9090`. Point its `http_sd_configs` at `/v1/prometheus/targets` to
    /// scrape every instance.
    #[arg(long, env = "ENDSTATE_PROMETHEUS_URL")]
    pub(crate) prometheus_url: Option<String>,
    /// A URL every alert notification is POSTed to as JSON (`{"kind": "endstate.alert",
    /// "reason", "alert"}`), retried with backoff; repeatable.
    #[arg(long = "alert-webhook", value_name = "URL")]
    pub(crate) alert_webhooks: Vec<String>,
    /// A program run for every alert notification (a command handler): the notification's JSON
    /// on its stdin, `ENDSTATE_ALERT_{REASON,CHECK,TARGET,HOST,SYSTEM,STATUS}` in its
    /// environment, its process group killed after 30 s; repeatable. No shell, no arguments.
    #[arg(long = "alert-command", value_name = "PROGRAM")]
    pub(crate) alert_commands: Vec<PathBuf>,
    /// A URL POSTed the notification of every alert that opens, to open a ticket: the link in its
    /// JSON answer (`url`, `link` or `ticket_url`) is stored on the alert and shown with it.
    #[arg(long = "ticket-webhook", value_name = "URL")]
    pub(crate) ticket_webhook: Option<String>,
    /// Keep the examples in Git instead of applying them: a bare repository `examples.git` of the
    /// data directory is seeded with them once (with Debian's `git`), and a source `examples`
    /// follows its branch `main` every 5 s. Clone it, commit, push: each push rolls out.
    #[arg(long)]
    pub(crate) git: bool,
    #[command(flatten)]
    pub(crate) tls: ServerTlsFlags,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The spec directory.
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) rollout: RolloutFlags,
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

/// Operational parameters of a change: which hosts go first, which are drained for good.
/// A host is named by its name, a set of hosts by a `key=value` label selector.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct RolloutFlags {
    /// An ordered host group, one flag per group, the first first; comma-separated hosts or
    /// selectors: `--host-group zone=a --host-group zone=b --host-group web-9,web-10`.
    /// Hosts in no group come last.
    #[arg(long = "host-group", value_name = "HOSTS")]
    pub(crate) host_groups: Vec<String>,
    /// Retire a host (repeatable): its instances start elsewhere first, then stop on it; once the
    /// change converges nothing is placed on it until it enrols again.
    #[arg(long = "retire", value_name = "HOST")]
    pub(crate) retire: Vec<String>,
    /// Change these hosts first (repeatable, host or selector), then hold the change: `endstate
    /// change resume N` takes it to the other hosts, `endstate change abort N` takes it back.
    #[arg(long = "target", value_name = "HOST")]
    pub(crate) target: Vec<String>,
}

impl RolloutFlags {
    pub(crate) fn options(&self) -> endstate_api::ChangeOptions {
        let split = |text: &String| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        endstate_api::ChangeOptions {
            host_groups: self.host_groups.iter().map(split).collect(),
            retire_hosts: self.retire.iter().flat_map(split).collect(),
            target_hosts: self.target.iter().flat_map(split).collect(),
        }
    }
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
    /// Only events about this component (`system/component`).
    #[arg(long)]
    pub(crate) component: Option<String>,
    /// Only events done by this actor (a token's name, `server`, `agent:HOST`).
    #[arg(long)]
    pub(crate) actor: Option<String>,
    /// At most this many events (the newest), 1 to 1000; `--since` and `-o json` page further.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: u32,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub(crate) follow: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a named API token (its secret is printed once), or with `--join` a one-time join
    /// token for a new host.
    Create {
        /// The token's name, shown on the timeline for everything it does (API tokens).
        #[arg(long, required_unless_present = "join")]
        name: Option<String>,
        /// viewer (reads), operator (also makes changes and runs actions), approver (also approves
        /// other people's runs) or admin (also manages tokens and hosts).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// The systems the token may act on, comma-separated (it reads every system); default all.
        #[arg(long, value_delimiter = ',', conflicts_with = "join")]
        systems: Vec<String>,
        /// Make a one-time join token for `endstate agent --join-token`.
        #[arg(long)]
        join: bool,
        /// How long the join token is accepted (`1h`, at most `7d`).
        #[arg(long, requires = "join")]
        ttl: Option<String>,
        /// Labels the host gets, `key=value,key=value`; they win over the agent's.
        #[arg(long, requires = "join")]
        labels: Option<String>,
        /// The only host name the join token admits.
        #[arg(long, requires = "join")]
        host: Option<String>,
    },
    /// List the API tokens (names, roles, systems; never secrets).
    List,
    /// Revoke the API token of this name: it is refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SourceCommand {
    /// Follow a branch of a Git repository: each new commit touching the paths becomes a
    /// revision, and the source owns the systems its documents declare.
    Add {
        /// The source's name.
        name: String,
        /// The repository: file://, http(s)://, ssh://, git:// or user@host:path.
        #[arg(long)]
        repo: String,
        /// The branch followed.
        #[arg(long = "ref", default_value = "main")]
        branch: String,
        /// A directory (or file) of the repository holding spec files; repeat for several.
        /// Default: the whole repository.
        #[arg(long = "path")]
        paths: Vec<String>,
        /// How often the repository is fetched (`30s`, `5m`).
        #[arg(long)]
        interval: Option<String>,
        /// A file on the server holding `user:password` for HTTP(S).
        #[arg(long)]
        credentials_file: Option<String>,
        /// A file on the server holding the forge's webhook secret (the webhook is
        /// `POST /v1/sources/NAME/hook`).
        #[arg(long)]
        webhook_secret_file: Option<String>,
    },
    /// The sources and where each stands.
    List,
    /// One source: its head, the commit in the latest revision and in force, its systems, and
    /// the problems of a refused commit.
    Show {
        /// The source's name.
        name: String,
    },
    /// Fetch a source's repository now and apply its new head.
    Sync {
        /// The source's name.
        name: String,
    },
    /// Stop following a source; its systems stay as they are, owned by the API.
    Remove {
        /// The source's name.
        name: String,
    },
}

/// What to do to a change.
#[derive(Debug, Subcommand)]
pub(crate) enum ChangeAction {
    /// No further wave starts until resumed; a failing wave still halts or rolls back.
    Pause {
        /// The change number.
        change: u64,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Go on with a paused or halted change.
    Resume {
        /// The change number.
        change: u64,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Roll out a change the server proposed (a rebalance onto a host that joined), in waves.
    Accept {
        /// The change number.
        change: u64,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop and go back to the last converged revision, wave by wave.
    Abort {
        /// The change number.
        change: u64,
        /// Why, for the timeline.
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_retention(text: &str) -> Result<endstate_server::RetentionRule, String> {
    endstate_server::RetentionRule::parse(text)
}

/// Which open alerts `ack` and `annotate` take when no CHECK TARGET is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AlertFilter {
    /// Every open alert of this system.
    #[arg(long, conflicts_with = "target")]
    pub(crate) system: Option<String>,
    /// Every open alert of checks running on this host.
    #[arg(long, conflicts_with = "target")]
    pub(crate) host: Option<String>,
    /// Every open alert of this check (`system/check`).
    #[arg(id = "check_filter", long = "check", value_name = "CHECK", conflicts_with = "target")]
    pub(crate) check: Option<String>,
    /// Every open alert.
    #[arg(long, conflicts_with_all = ["system", "host", "check_filter", "target"])]
    pub(crate) all: bool,
}

/// `FIRST-LAST`: a range of at least 100 ports, both ends included, above the well-known ones.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("found {text:?}; expected FIRST-LAST, like 20000-29999"))?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("found {s:?} in {text:?}; expected a port number (1024-65535)"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first < 1024 {
        return Err(format!("{first} is a well-known port; start at 1024 or above"));
    }
    if last < first.saturating_add(99) {
        return Err(format!(
            "{first}-{last} holds {} ports; give at least 100",
            u32::from(last).saturating_sub(u32::from(first)) + 1
        ));
    }
    Ok(first..=last)
}
