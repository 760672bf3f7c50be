//! `endstate server` and `endstate dev`: the binary's server side.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use endstate_api::{Document, RevisionSource, SubmitRevision};
use endstate_server::{RateLimitConfig, Server, ServerConfig};
use tokio::net::TcpListener;

use crate::cli::{AgentArgs, DevArgs, Global, ServerArgs, ServerTlsFlags};
use crate::{Outcome, config};

/// How many connections may wait to be accepted.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:7700"))?;
    // A backlog of 4,096 (capped by the kernel's `somaxconn`) rather than the default 128: a
    // fleet of thousands of agents reconnecting at once after a restart would overflow 128, and
    // every dropped connection attempt waits for its TCP retransmission (1 s, 3 s, ...).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(|| format!("cannot open a socket for {addr}"))?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Where alerts go, from the flags: every URL must parse, every handler must be a file.
fn monitor_config(
    webhooks: &[String],
    commands: &[PathBuf],
    ticket: Option<&String>,
) -> anyhow::Result<endstate_server::MonitorConfig> {
    for (flag, url) in webhooks
        .iter()
        .map(|u| ("--alert-webhook", u))
        .chain(ticket.map(|u| ("--ticket-webhook", u)))
    {
        let parsed = reqwest::Url::parse(url).map_err(|error| anyhow::anyhow!("{flag} {url:?}: {error}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "{flag} {url:?}: expected an http or https URL"
        );
    }
    for program in commands {
        anyhow::ensure!(
            program.is_file(),
            "--alert-command {}: not a file (give the path of a program; it gets the alert as JSON on stdin)",
            program.display()
        );
    }
    Ok(endstate_server::MonitorConfig {
        webhooks: webhooks.to_vec(),
        commands: commands.to_vec(),
        ticket_webhook: ticket.cloned(),
        webhook_secret: None,
    })
}

/// The API's TLS, the CAs trusted when calling out and Prometheus's credentials, from the flags.
fn apply_tls_flags(flags: &ServerTlsFlags, config: &mut ServerConfig) -> anyhow::Result<()> {
    config.api_tls = match (&flags.tls_cert, &flags.tls_key) {
        _ if flags.insecure_http => endstate_server::ApiTls::Plain,
        (Some(cert), Some(key)) => endstate_server::ApiTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => endstate_server::ApiTls::BuiltIn {
            names: flags.tls_names.clone(),
        },
    };
    config.trusted_cas =
        endstate_agent::https::read_trusted_cas(&flags.trust_ca).map_err(|e| anyhow::anyhow!("--trust-ca: {e}"))?;
    config.rollout.prometheus_auth = match (&flags.prometheus_bearer_token_file, &flags.prometheus_basic_auth_file) {
        (Some(path), _) => Some(
            endstate_server::PrometheusAuth::bearer_from_file(path)
                .map_err(|e| anyhow::anyhow!("--prometheus-bearer-token-file: {e}"))?,
        ),
        (None, Some(path)) => Some(
            endstate_server::PrometheusAuth::basic_from_file(path)
                .map_err(|e| anyhow::anyhow!("--prometheus-basic-auth-file: {e}"))?,
        ),
        (None, None) => None,
    };
    if let Some(path) = &flags.webhook_secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--webhook-secret-file: cannot read {}", path.display()))?;
        let secret = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(!secret.is_empty(), "--webhook-secret-file: {} is empty", path.display());
        config.monitor.webhook_secret = Some(secret.as_bytes().to_vec());
    }
    Ok(())
}

/// The API's URL for a listener address.
fn api_url(config: &ServerConfig, addr: SocketAddr) -> String {
    let scheme = if config.api_tls == endstate_server::ApiTls::Plain {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{addr}")
}

/// `endstate server`
pub(crate) async fn server(args: ServerArgs) -> anyhow::Result<Outcome> {
    endstate_agent::cli::init_logs(args.log_format);
    let mut server_config = ServerConfig::new(&args.data_dir);
    server_config.rate_limit = RateLimitConfig {
        per_second: args.rate_limit,
        burst: args.rate_burst,
    };
    server_config.agents.advertise_url = args.agent_url.clone();
    server_config.rollout.prometheus_url = args.prometheus_url.clone();
    server_config.monitor = monitor_config(&args.alert_webhooks, &args.alert_commands, args.ticket_webhook.as_ref())?;
    server_config.retention = args.retain.clone();
    apply_tls_flags(&args.tls, &mut server_config)?;
    server_config.agents.one_machine = args.agents_on_one_machine;
    server_config.agents.dynamic_ports = args.dynamic_ports.clone();
    server_config.rollout.evacuate_after = match args.evacuate_after.as_str() {
        "off" => None,
        text => Some(
            endstate_spec::Duration::parse(text)
                .map_err(|error| anyhow::anyhow!("--evacuate-after {text:?}: {error} (or `off`)"))?
                .as_std(),
        ),
    };
    if let Some(text) = &args.keepalive_interval {
        let interval = endstate_spec::Duration::parse(text)
            .map_err(|error| anyhow::anyhow!("--keepalive-interval {text:?}: {error}"))?
            .as_std();
        anyhow::ensure!(
            !interval.is_zero(),
            "--keepalive-interval {text:?}: expected more than 0s"
        );
        server_config.agents.keepalive_interval = interval;
    }
    let mut server = Server::open(&server_config).await?;
    let (listener, addr) = bind(&args.listen).await?;
    if args.agent_listen != "none" {
        let (agent_listener, agent_addr) = bind(&args.agent_listen).await?;
        server = server.with_agent_listener(agent_listener)?;
        println!(
            "agents connect to wss://{agent_addr}/v1/agent (CA sha256 {})",
            server.agent_ca_sha256().unwrap_or_default()
        );
    }
    if let Some(secret) = server.admin_secret() {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!("admin token (shown once, stored hashed): {secret}");
        } else {
            // Not a terminal: stdout may be a journal that keeps it. A private file instead.
            let path = std::path::absolute(args.data_dir.join("initial-admin-token"))?;
            config::write_private(&path, secret)?;
            println!(
                "admin token written to {} (mode 0600): read it, then delete the file",
                path.display()
            );
        }
    }
    let url = api_url(&server_config, addr);
    println!("endstate server listening on {url}");
    if let Some((_, sha256)) = server.api_ca()? {
        println!("API certificate from the server's CA, sha256 {sha256}");
        println!("  clients: endstate login {url} --ca-sha256 {sha256} --token TOKEN");
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "Server started.");
    server.serve(listener, endstate_agent::cli::shutdown_signal()).await?;
    Ok(Outcome::Success)
}

/// `endstate dev`
pub(crate) async fn dev(global: &Global, args: DevArgs) -> anyhow::Result<Outcome> {
    endstate_agent::cli::init_logs(args.log_format);
    let mut server_config = ServerConfig::new(&args.data_dir);
    // Quicker liveness for a laptop: an agent is unreachable after 3 missed 2-second keepalives.
    server_config.agents.keepalive_interval = std::time::Duration::from_secs(2);
    // Its agents all run here: a port is unique on the machine, not only on its host.
    server_config.agents.one_machine = true;
    server_config.agents.dynamic_ports = args.dynamic_ports.clone();
    server_config.rollout.prometheus_url = args.prometheus_url.clone();
    server_config.monitor = monitor_config(&args.alert_webhooks, &args.alert_commands, args.ticket_webhook.as_ref())?;
    apply_tls_flags(&args.tls, &mut server_config)?;
    let mut server = Server::open(&server_config).await?;
    let token_file = args.data_dir.join("dev-admin-token");
    // The development setup keeps its admin token in its data directory (mode 0600), so every
    // start can print it; a production server shows it once and keeps only the hash.
    let token = match server.admin_secret() {
        Some(secret) => {
            config::write_private(&token_file, secret)?;
            secret.to_string()
        }
        None => std::fs::read_to_string(&token_file)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("{} was initialised by `endstate server`, not `endstate dev`: its admin token is not kept; use another --data-dir", args.data_dir.display()))?,
    };
    let (listener, addr) = bind(&args.listen).await?;
    let (agent_listener, agent_addr) = bind(&args.agent_listen).await?;
    server = server.with_agent_listener(agent_listener)?;
    let url = api_url(&server_config, addr);
    let ca = server.api_ca()?;
    let client_config = config::ClientConfig {
        server: Some(url.clone()),
        token: Some(token.clone()),
        ca_pem: ca.as_ref().map(|(pem, _)| pem.clone()),
    };
    let config_path = dev_client_config(global, &args.data_dir, &client_config)?;
    let serving = tokio::spawn(server.serve(listener, endstate_agent::cli::shutdown_signal()));

    let files = endstate_client::spec_dir::read_spec_dir(&args.examples).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("cannot read the examples:\n{}", lines.join("\n"))
    })?;
    let client = match &ca {
        Some((pem, _)) => endstate_client::Client::with_ca(&url, &token, pem)?,
        None => endstate_client::Client::new(&url, &token)?,
    };
    let request = SubmitRevision {
        documents: files
            .into_iter()
            .map(|f| Document {
                path: f.path,
                content: f.text,
            })
            .collect(),
        message: "endstate dev: the example systems".into(),
        source: RevisionSource {
            kind: "cli".into(),
            reference: Some(args.examples.display().to_string()),
        },
        parent: None,
        options: Default::default(),
        basis: None,
    };
    let ca_sha256 = ca.as_ref().map(|(_, sha256)| sha256.as_str());
    let mut agents = match start_agents(&args, &url, ca_sha256, &client).await {
        Ok(agents) => agents,
        Err(error) => {
            println!("  agents:       not started: {error:#}");
            Vec::new()
        }
    };
    // The examples are planned on the hosts known when they are applied: wait for the agents,
    // so the plan places instances on all of them.
    wait_for_agents(&client, agents.len()).await;
    // The examples are applied once, into an empty server: a restart must not overwrite what
    // was applied since. With --git, a source follows them in Git instead (added once).
    let latest = client.revision("latest").await.ok();
    let in_git = if args.git {
        Some(follow_examples_in_git(&client, &args, &request.documents).await)
    } else {
        None
    };
    let submitted = match (&latest, &in_git) {
        (None, None) => Some(client.submit(&request).await),
        _ => None,
    };
    println!("endstate dev is running.");
    println!("  API:          {url}");
    println!("  admin token:  {token}");
    println!("  client config written to {}", config_path.display());
    println!("  data:         {}", args.data_dir.display());
    println!(
        "  agents:       {} local agents on wss://{agent_addr}/v1/agent (logs in {}/agents/*/agent.log)",
        agents.len(),
        args.data_dir.display()
    );
    match in_git {
        Some(Ok(url)) => {
            println!("  examples:     in Git at {url}, followed by the source `examples` (every 5 s)");
            println!("                git clone {url} && cd examples && edit, commit, git push: each push rolls out");
        }
        Some(Err(error)) => println!("  examples:     not in Git: {error:#}"),
        None => {}
    }
    match (submitted, latest) {
        (Some(Ok(submitted)), _) => println!(
            "  examples:     {} applied as revision {} (change {})",
            args.examples.display(),
            submitted.revision.id,
            submitted.change.id
        ),
        (Some(Err(error)), _) => println!("  examples:     not applied: {error}"),
        (None, Some(latest)) => println!(
            "  examples:     not re-applied: revision {} is in force (`endstate apply {}` applies them again)",
            latest.id,
            args.examples.display()
        ),
        (None, None) => {}
    }
    println!("Try: endstate status | endstate timeline | endstate hosts   (Ctrl-C stops)");
    let served = serving.await.context("the server task failed");
    stop_agents(&mut agents).await;
    served??;
    Ok(Outcome::Success)
}

/// `endstate dev --git`: the examples in a bare repository of the data directory (seeded once,
/// with Debian's `git`: the same tool the developer pushes with), followed by the source
/// `examples` (added once). Its `file://` URL.
async fn follow_examples_in_git(
    client: &endstate_client::Client,
    args: &DevArgs,
    documents: &[Document],
) -> anyhow::Result<String> {
    let bare = std::path::absolute(args.data_dir.join("examples.git"))?;
    let url = format!("file://{}", bare.display());
    // Seeded unless it has a branch already (a seeding cut short is done again: `git init` of an
    // existing repository only reinitialises it).
    if !bare.join("refs/heads/main").is_file() && !bare.join("packed-refs").is_file() {
        seed_repository(&bare, &args.examples, documents)?;
    }
    if client.source("examples").await.is_ok() {
        return Ok(url);
    }
    let request = endstate_api::AddSource {
        name: "examples".into(),
        repository: url.clone(),
        branch: Some("main".into()),
        paths: Vec::new(),
        interval: Some("5s".into()),
        credentials_file: None,
        webhook_secret_file: None,
    };
    client
        .add_source(&request)
        .await
        .context("adding the source `examples`")?;
    Ok(url)
}

/// Creates `bare` (branch `main`) with one commit holding the example files.
fn seed_repository(bare: &std::path::Path, examples: &std::path::Path, documents: &[Document]) -> anyhow::Result<()> {
    let seed = bare.with_extension("seed");
    let _ = std::fs::remove_dir_all(&seed);
    let git = |dir: Option<&std::path::Path>, words: &[&str]| -> anyhow::Result<()> {
        let mut command = std::process::Command::new("git");
        command
            .args(words)
            .env("GIT_AUTHOR_NAME", "endstate dev")
            .env("GIT_AUTHOR_EMAIL", "dev@localhost")
            .env("GIT_COMMITTER_NAME", "endstate dev")
            .env("GIT_COMMITTER_EMAIL", "dev@localhost");
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let output = command
            .output()
            .context("--git runs Debian's `git` (apt install git)")?;
        anyhow::ensure!(
            output.status.success(),
            "git {}: {}",
            words.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    };
    let bare_text = bare.to_str().context("the data directory's path is not UTF-8")?;
    let seed_text = seed.to_str().context("the data directory's path is not UTF-8")?;
    git(None, &["init", "--quiet", "--bare", "--initial-branch=main", bare_text])?;
    git(None, &["init", "--quiet", "--initial-branch=main", seed_text])?;
    for document in documents {
        let path = std::path::Path::new(&document.path);
        let relative = path.strip_prefix(examples).unwrap_or(path);
        let file = seed.join(relative);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, &document.content).with_context(|| format!("writing {}", file.display()))?;
    }
    git(Some(&seed), &["add", "--all"])?;
    let message = "endstate dev: the example systems";
    git(
        Some(&seed),
        &["-c", "commit.gpgsign=false", "commit", "--quiet", "-m", message],
    )?;
    git(Some(&seed), &["push", "--quiet", bare_text, "HEAD:refs/heads/main"])?;
    std::fs::remove_dir_all(&seed)?;
    Ok(())
}

/// Writes the development server's client config where the other commands look, unless a
/// config there points at another server than a local one: that one is kept, and the
/// development config goes into the data directory (printed, with how to use it).
fn dev_client_config(
    global: &Global,
    data_dir: &std::path::Path,
    dev: &config::ClientConfig,
) -> anyhow::Result<PathBuf> {
    let path = config::config_path(global).context("no config location: set ENDSTATE_CONFIG or HOME")?;
    let existing = config::read(&path).ok().flatten();
    let elsewhere = existing
        .as_ref()
        .and_then(|c| c.server.as_deref())
        .filter(|server| !endstate_agent::https::is_loopback_url(server));
    if let Some(other) = elsewhere {
        let own = std::path::absolute(data_dir.join("client-config.json"))?;
        config::write(&own, dev)?;
        println!(
            "  note:         {} points at {other}; kept. This server's config is in {} (ENDSTATE_CONFIG={} endstate status)",
            path.display(),
            own.display(),
            own.display()
        );
        return Ok(own);
    }
    config::write(&path, dev)?;
    Ok(path)
}

/// `endstate login`
pub(crate) async fn login(
    global: &Global,
    server: &str,
    ca_sha256: Option<&str>,
    yes: bool,
) -> anyhow::Result<Outcome> {
    let server = server.trim_end_matches('/').to_owned();
    let path = config::config_path(global).context("no config location: set ENDSTATE_CONFIG or HOME")?;
    let existing = config::read(&path)?.unwrap_or_default();
    let same_server = existing.server.as_deref().map(|s| s.trim_end_matches('/')) == Some(server.as_str());
    let token = global
        .token
        .clone()
        .or(if same_server { existing.token } else { None })
        .context("give the token: --token or ENDSTATE_TOKEN")?;
    let given_ca = match &global.ca_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("cannot read the CA file {}", path.display()))?)
        }
        None => None,
    };
    // A certificate the system's roots (or --ca-file) vouch for needs no pin: an operator's
    // certificate from a public or company CA, renewed as it will.
    let vouched = if server.starts_with("https://") && ca_sha256.is_none() {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(pem) = &given_ca {
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes())?]);
        }
        builder.build()?.get(format!("{server}/healthz")).send().await.is_ok()
    } else {
        false
    };
    let ca_pem = if vouched {
        println!(
            "The server's certificate is trusted by {}; no CA pinned.",
            if given_ca.is_some() {
                "--ca-file"
            } else {
                "this system's roots"
            }
        );
        given_ca
    } else if server.starts_with("https://") {
        let (tls, pin) = endstate_pki::pin::PinnedCa::client_config(ca_sha256)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        http.get(format!("{server}/healthz"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {server}: {}", endstate_agent::error_chain(&e)))?;
        let ca = pin
            .seen()
            .context("the server presented no CA to pin; give --ca-file with the CA that issued its certificate")?;
        // (A --ca-file that did not verify the server is not used.)
        let sha256 = endstate_pki::pin::sha256_hex(ca.as_ref());
        if ca_sha256.is_none() && !yes {
            println!("The server's CA has SHA-256 {sha256}.");
            println!("Compare it with what `endstate server` printed when it started.");
            anyhow::ensure!(
                std::io::IsTerminal::is_terminal(&std::io::stdin()),
                "not trusted: stdin is not a terminal; give --ca-sha256 {sha256} once you have checked it"
            );
            print!("Trust it? [y/N] ");
            std::io::Write::flush(&mut std::io::stdout())?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            anyhow::ensure!(answer.trim().eq_ignore_ascii_case("y"), "not trusted; nothing written");
        }
        println!("CA pinned: sha256 {sha256}");
        Some(endstate_pki::pin::der_to_pem(ca.as_ref()))
    } else {
        anyhow::ensure!(
            endstate_agent::https::is_loopback_url(&server),
            "{server} is plain HTTP on another host: a token would cross the network in clear; use its https:// address"
        );
        None
    };
    let client = match &ca_pem {
        Some(pem) => endstate_client::Client::with_ca(&server, &token, pem)?,
        None => endstate_client::Client::new(&server, &token)?,
    };
    // Any valid token may list the systems it can see: a refusal here is the token's.
    client.systems(false).await.context("the server refused the token")?;
    config::write(
        &path,
        &config::ClientConfig {
            server: Some(server.clone()),
            token: Some(token),
            ca_pem,
        },
    )?;
    println!("Signed in to {server}; the client config is {}", path.display());
    Ok(Outcome::Success)
}

/// Waits (at most 20 s) until `count` hosts are reachable; says so when they are not.
async fn wait_for_agents(client: &endstate_client::Client, count: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reachable = client
            .hosts()
            .await
            .map(|hosts| hosts.iter().filter(|h| h.liveness == "reachable").count())
            .unwrap_or(0);
        if reachable >= count {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            println!("  warning:      {reachable} of {count} agents reachable after 20 s; applying anyway");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Starts one agent process per zone (a, b, c, …), each with its own data directory; enrols
/// those that have no identity yet with a join token of their zone.
async fn start_agents(
    args: &DevArgs,
    url: &str,
    ca_sha256: Option<&str>,
    client: &endstate_client::Client,
) -> anyhow::Result<Vec<tokio::process::Child>> {
    let exe = std::env::current_exe().context("cannot find the endstate binary")?;
    let artifacts = std::path::absolute(args.data_dir.join("artifacts"))?;
    let bin = artifacts.join("bin");
    std::fs::create_dir_all(&bin)?;
    let example = exe.with_file_name("example-service");
    if example.exists() {
        // A copy, so rebuilding the workspace does not change what an enrolled version runs.
        let target = bin.join("example-service");
        let _ = std::fs::remove_file(&target);
        std::fs::copy(&example, &target).with_context(|| format!("cannot copy {}", example.display()))?;
    } else {
        println!(
            "  warning:      {} is missing: build it (`cargo build --bin example-service`, or start with `cargo dev`); the example instances fail to start until then",
            example.display()
        );
    }
    let mut children = Vec::new();
    for zone in (b'a'..).take(usize::from(args.agents)).map(char::from) {
        let name = format!("dev-{zone}");
        let dir = std::path::absolute(args.data_dir.join("agents").join(zone.to_string()))?;
        std::fs::create_dir_all(&dir)?;
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("agent")
            .arg("--server")
            .arg(url)
            .arg("--name")
            .arg(&name)
            .arg("--labels")
            .arg(format!("zone={zone}"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--artifact-root")
            .arg(&artifacts)
            .arg("--keepalive")
            .arg("2s")
            .arg("--exit-with-parent")
            .args(ca_sha256.map(|sha256| format!("--ca-sha256={sha256}")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .kill_on_drop(true);
        if !dir.join("identity").join("identity.json").exists() {
            let token = client
                .create_join_token(&endstate_api::CreateJoinToken {
                    ttl: Some("10m".into()),
                    labels: [("zone".to_owned(), zone.to_string())].into_iter().collect(),
                    host: Some(name.clone()),
                })
                .await?;
            command.env("ENDSTATE_JOIN_TOKEN", token.secret);
        }
        children.push(command.spawn().with_context(|| format!("cannot start agent {name}"))?);
    }
    Ok(children)
}

/// SIGTERM to every agent (they stop their instances gracefully), then wait for them.
async fn stop_agents(children: &mut [tokio::process::Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
        }
    }
}

/// `endstate agent`
pub(crate) async fn agent(global: &Global, args: AgentArgs) -> anyhow::Result<Outcome> {
    let server = match &global.server {
        Some(server) => server.clone(),
        None => config::resolve(global)
            .map(|resolved| resolved.server)
            .context("give --server (the API server, like https://endstate.example:7700)")?,
    };
    endstate_agent::cli::run(server, args).await?;
    Ok(Outcome::Success)
}
