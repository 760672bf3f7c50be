//! What HTTPS costs the API: the same request to two `endstate server` processes side by side,
//! one serving plain HTTP (`--insecure-http`), one HTTPS with its built-in certificate, each
//! called over one kept-alive connection, alternately so both see the same machine. Also a
//! request on a new connection each time (TCP and TLS handshakes included).

use std::time::{Duration, Instant};

use crate::agents::server::{ServerProc, ServerSpec, endstate_exe};
use crate::agents::{millis, percentile};
use crate::figure::{Figure, Goal};

/// The bound: HTTPS within 10% of plain HTTP at p50 on loopback with keep-alive.
const OVERHEAD_TARGET_PERCENT: f64 = 10.0;

pub(crate) fn run(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match measure(smoke).await {
            Ok(figures) => Ok(figures),
            Err(error) => {
                let reason = format!("{error:#}");
                Ok(vec![
                    Figure::not_measured(
                        "api: HTTPS overhead at p50 (keep-alive)".into(),
                        "%",
                        OVERHEAD_TARGET_PERCENT,
                        Goal::AtMost,
                        reason.clone(),
                    ),
                    Figure::not_measured(
                        "api: request p50 on a new HTTPS connection".into(),
                        "ms",
                        20.0,
                        Goal::AtMost,
                        reason,
                    ),
                ])
            }
        }
    })
}

async fn measure(smoke: bool) -> anyhow::Result<Vec<Figure>> {
    let exe = endstate_exe()?;
    let dir = tempfile::Builder::new().prefix("es-bench-tls-").tempdir()?;
    let plain_spec = ServerSpec::local(&exe, dir.path().join("plain"));
    let tls_spec = ServerSpec {
        https: true,
        ..ServerSpec::local(&exe, dir.path().join("tls"))
    };
    let mut plain = ServerProc::start(&plain_spec).await?;
    let mut tls = ServerProc::start(&tls_spec).await?;
    let ca = std::fs::read(dir.path().join("tls").join("pki").join("ca.pem"))?;
    let plain_client = reqwest::Client::builder().build()?;
    let tls_client = || -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
            .build()?)
    };
    let kept = tls_client()?;
    let (plain_token, tls_token) = (plain.admin()?, tls.admin()?);
    let get = |client: &reqwest::Client, base: &str, token: &str| {
        let request = client.get(format!("{base}/v1/version")).bearer_auth(token);
        async move {
            let started = Instant::now();
            let response = request.send().await?;
            anyhow::ensure!(response.status() == 200, "GET /v1/version: {}", response.status());
            response.bytes().await?;
            Ok::<Duration, anyhow::Error>(started.elapsed())
        }
    };
    let rounds = if smoke { 50 } else { 3_000 };
    // Warm both connections and both servers.
    for _ in 0..20 {
        get(&plain_client, &plain.http, &plain_token).await?;
        get(&kept, &tls.http, &tls_token).await?;
    }
    let (mut over_http, mut over_https) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        over_http.push(get(&plain_client, &plain.http, &plain_token).await?);
        over_https.push(get(&kept, &tls.http, &tls_token).await?);
    }
    let fresh_rounds = if smoke { 10 } else { 300 };
    let mut fresh = Vec::with_capacity(fresh_rounds);
    for _ in 0..fresh_rounds {
        // A client of its own each time: no pooled connection, a full handshake.
        let client = tls_client()?;
        fresh.push(get(&client, &tls.http, &tls_token).await?);
    }
    plain.stop(Duration::from_secs(5)).await;
    tls.stop(Duration::from_secs(5)).await;
    let (http_p50, https_p50) = (percentile(&mut over_http, 0.5), percentile(&mut over_https, 0.5));
    let (http_p99, https_p99) = (percentile(&mut over_http, 0.99), percentile(&mut over_https, 0.99));
    let overhead = (millis(https_p50) / millis(http_p50) - 1.0) * 100.0;
    Ok(vec![
        Figure {
            name: "api: HTTPS overhead at p50 (keep-alive)".into(),
            value: overhead,
            unit: "%",
            target: OVERHEAD_TARGET_PERCENT,
            goal: Goal::AtMost,
            detail: format!(
                "GET /v1/version, {rounds} requests alternately to two servers on loopback, one connection each: HTTP p50 {:.3} ms p99 {:.3} ms, HTTPS p50 {:.3} ms p99 {:.3} ms",
                millis(http_p50),
                millis(http_p99),
                millis(https_p50),
                millis(https_p99)
            ),
        },
        Figure {
            name: "api: request p50 on a new HTTPS connection".into(),
            value: millis(percentile(&mut fresh, 0.5)),
            unit: "ms",
            target: 20.0,
            goal: Goal::AtMost,
            detail: format!(
                "{fresh_rounds} times: a new client (TCP and TLS 1.3 handshakes, the built-in certificate checked against the pinned CA) and GET /v1/version; p99 {:.3} ms",
                millis(percentile(&mut fresh, 0.99))
            ),
        },
    ])
}
