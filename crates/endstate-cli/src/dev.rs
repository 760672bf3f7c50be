//! `endstate server` and `endstate dev`: the binary's server side.

use std::net::SocketAddr;

use anyhow::Context;
use endstate_api::{Document, RevisionSource, SubmitRevision};
use endstate_server::{RateLimitConfig, Server, ServerConfig};
use tokio::net::TcpListener;

use crate::cli::{DevArgs, Global, LogFormat, ServerArgs};
use crate::{Outcome, config};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENDSTATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("Shutting down.");
}

async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:7700"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// `endstate server`
pub(crate) async fn server(args: ServerArgs) -> anyhow::Result<Outcome> {
    init_logs(args.log_format);
    let mut server_config = ServerConfig::new(&args.data_dir);
    server_config.rate_limit = RateLimitConfig {
        per_second: args.rate_limit,
        burst: args.rate_burst,
    };
    let server = Server::open(&server_config).await?;
    let (listener, addr) = bind(&args.listen).await?;
    if let Some(secret) = server.admin_secret() {
        println!("admin token (shown once, stored hashed): {secret}");
    }
    println!("endstate server listening on http://{addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "Server started.");
    server.serve(listener, shutdown_signal()).await?;
    Ok(Outcome::Success)
}

/// `endstate dev`
pub(crate) async fn dev(global: &Global, args: DevArgs) -> anyhow::Result<Outcome> {
    init_logs(args.log_format);
    let server = Server::open(&ServerConfig::new(&args.data_dir)).await?;
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
    let url = format!("http://{addr}");
    let config_path = config::config_path(global).context("no config location: set ENDSTATE_CONFIG or HOME")?;
    config::write(
        &config_path,
        &config::ClientConfig {
            server: Some(url.clone()),
            token: Some(token.clone()),
        },
    )?;
    let serving = tokio::spawn(server.serve(listener, shutdown_signal()));

    let files = endstate_client::spec_dir::read_spec_dir(&args.examples).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("cannot read the examples:\n{}", lines.join("\n"))
    })?;
    let client = endstate_client::Client::new(&url, &token)?;
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
    };
    // The examples are applied once, into an empty server: a restart must not overwrite what
    // was applied since.
    let latest = client.revision("latest").await.ok();
    let submitted = match &latest {
        None => Some(client.submit(&request).await),
        Some(_) => None,
    };
    println!("endstate dev is running.");
    println!("  API:          {url}");
    println!("  admin token:  {token}");
    println!("  client config written to {}", config_path.display());
    println!("  data:         {}", args.data_dir.display());
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
    serving.await.context("the server task failed")??;
    Ok(Outcome::Success)
}
