//! Prometheus at the edges: instant queries for the controller's metric gates, and HTTP service
//! discovery (`http_sd_configs`) of every instance agents run, so a Prometheus scrapes what
//! endstate runs without a list kept by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Actor, Verb, authorize};
use crate::error::ApiError;

/// How long a gate query may take: a slow Prometheus delays a decision, it does not stall it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Credentials for Prometheus (or a proxy in front of it). `Debug` never shows the secret.
#[derive(Clone)]
pub enum PrometheusAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// HTTP basic authentication.
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for PrometheusAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrometheusAuth::Bearer(_) => f.write_str("Bearer(…)"),
            PrometheusAuth::Basic { user, .. } => write!(f, "Basic({user}:…)"),
        }
    }
}

impl PrometheusAuth {
    /// A bearer token from the first line of a file.
    ///
    /// # Errors
    /// Names the file when it cannot be read or is empty.
    pub fn bearer_from_file(path: &std::path::Path) -> Result<PrometheusAuth, String> {
        let token = first_line(path)?;
        Ok(PrometheusAuth::Bearer(token))
    }

    /// `user:password` from the first line of a file.
    ///
    /// # Errors
    /// Names the file when it cannot be read, is empty or has no `:`.
    pub fn basic_from_file(path: &std::path::Path) -> Result<PrometheusAuth, String> {
        let line = first_line(path)?;
        let (user, password) = line
            .split_once(':')
            .ok_or_else(|| format!("{}: expected `user:password` on its first line", path.display()))?;
        Ok(PrometheusAuth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

fn first_line(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().trim().to_owned();
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line)
}

/// Runs an instant query and returns its one number, or why there is none (in words for the
/// timeline: unreachable, an error from Prometheus, no series, several series, not a number).
pub(crate) async fn query(
    client: &reqwest::Client,
    base: &str,
    auth: Option<&PrometheusAuth>,
    promql: &str,
) -> Result<f64, String> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let request = client.get(&url).query(&[("query", promql)]).timeout(QUERY_TIMEOUT);
    let request = match auth {
        Some(PrometheusAuth::Bearer(token)) => request.bearer_auth(token),
        Some(PrometheusAuth::Basic { user, password }) => request.basic_auth(user, Some(password)),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|error| format!("Prometheus at {base} did not answer: {}", crate::chain(&error)))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|error| format!("Prometheus answered {status} without JSON: {error}"))?;
    if body["status"] != "success" {
        return Err(format!(
            "Prometheus refused the query ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) | None => return Err("the query returned no series".to_owned()),
            Some(many) => return Err(format!("the query returned {} series; a gate needs one", many.len())),
        },
        other => {
            return Err(format!(
                "the query returned a {}, not a number",
                other.unwrap_or("nothing")
            ));
        }
    };
    let text = sample[1].as_str().unwrap_or_default();
    match text.parse::<f64>() {
        Ok(value) if value.is_nan() => Err("the query returned NaN (no traffic?)".to_owned()),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("the query returned {text:?}, not a number")),
    }
}

/// A target group of Prometheus HTTP service discovery.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TargetGroup {
    /// `address:port`.
    targets: Vec<String>,
    /// `endstate_host`, `endstate_instance`, `endstate_component`, `endstate_system`, `endstate_version`.
    labels: BTreeMap<String, String>,
}

/// Every instance assigned to a connected agent, as Prometheus HTTP service discovery wants it
/// (`http_sd_configs` with `authorization: { credentials: <token> }`): one group per instance,
/// its port `metrics`, else `http`, else its first, labelled with its host, instance, component,
/// system and version.
#[utoipa::path(get, path = "/v1/prometheus/targets", responses((status = 200, body = Vec<TargetGroup>)), security(("bearer" = [])))]
pub(crate) async fn targets(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    authorize(&actor, Verb::Read, None)?;
    let Some(hub) = state.hub() else {
        return Ok(Json(Vec::new()));
    };
    let groups = hub
        .scrape_targets()
        .await
        .into_iter()
        .map(|(host, ip, instance, component, version, port)| {
            let system = component.split_once('/').map_or("", |(s, _)| s).to_owned();
            let address = match ip {
                std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
                std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            };
            TargetGroup {
                targets: vec![address],
                labels: BTreeMap::from([
                    ("endstate_host".to_owned(), host),
                    ("endstate_instance".to_owned(), instance),
                    ("endstate_component".to_owned(), component),
                    ("endstate_system".to_owned(), system),
                    ("endstate_version".to_owned(), version),
                ]),
            }
        })
        .collect();
    Ok(Json(groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Prometheus (Debian's package) serving HTTPS with basic authentication: the gate's
    /// query reaches it with the CA trusted and the credentials right, and says why otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used)]
    async fn a_gate_queries_prometheus_over_https_with_basic_auth() {
        let prometheus = std::path::Path::new("/usr/bin/prometheus");
        assert!(
            prometheus.exists(),
            "Prometheus is missing: install Debian's `prometheus` package (`cargo xtask test` does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = endstate_testkit::TestCa::new("prometheus CA");
        let (cert, key) = ca.write_server_pair(dir.path(), "prometheus");
        // The bcrypt hash (cost 4) of the fixture password below, as Prometheus's web config wants it.
        let web = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  endstate: $2b$04$36JDtQaBQNkWS3V236TwF.1DlmnDsETq4xbofgA4xJqSJPnRa.Yw.\n",
            cert.display(),
            key.display()
        );
        std::fs::write(dir.path().join("web.yml"), web).unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), "global:\n  scrape_interval: 15s\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(prometheus)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--web.config.file={}", dir.path().join("web.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("https://127.0.0.1:{port}");
        let right = PrometheusAuth::Basic {
            user: "endstate".into(),
            password: "endstate-test-password".into(),
        };
        let trusting = crate::http_client(std::slice::from_ref(&ca.der)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let value = loop {
            match query(&trusting, &base, Some(&right), "vector(42)").await {
                Ok(value) => break value,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "Prometheus never answered: {error}; {}",
                        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!((value - 42.0).abs() < f64::EPSILON, "{value}");

        let wrong = PrometheusAuth::Basic {
            user: "endstate".into(),
            password: "not-it".into(),
        };
        let refused = query(&trusting, &base, Some(&wrong), "vector(42)").await.unwrap_err();
        assert!(refused.contains("401"), "{refused}");
        let untrusting = crate::http_client(&[]).unwrap();
        let refused = query(&untrusting, &base, Some(&right), "vector(42)").await.unwrap_err();
        assert!(refused.contains("UnknownIssuer"), "{refused}");
        let _ = child.kill().await;
    }
}
