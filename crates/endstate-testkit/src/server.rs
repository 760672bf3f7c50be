//! [`TestServer`]: a real server for one test, on free loopback ports, over SQLite in a temporary
//! directory, checked to have started; its admin token, its client, its store. And the waits
//! tests of the API share.

use std::sync::Arc;
use std::time::Duration;

use endstate_api::{Document, RevisionSource, SubmitRevision};
use endstate_client::Client;
use endstate_server::{RateLimitConfig, Server, ServerConfig};

/// A server running for one test.
pub struct TestServer {
    pub url: String,
    pub admin: String,
    /// The agent listener's `wss://` URL, when the server has one.
    pub agent_url: Option<String>,
    /// The CA the API's certificate comes from, when it serves HTTPS with the built-in one.
    pub ca_pem: Option<String>,
    /// The server's store, for tests that put history in it directly.
    pub store: Arc<endstate_store::SqliteStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    config: ServerConfig,
    agents: bool,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::start_inner(adjust, false).await
    }

    /// A server with an agent listener (mutual TLS) on another free loopback port.
    pub async fn start_with_agents(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::start_inner(adjust, true).await
    }

    async fn start_inner(adjust: impl FnOnce(&mut ServerConfig), agents: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path().join("data"));
        // Most tests speak plain HTTP on loopback; `api::https_*` tests the default, HTTPS.
        config.api_tls = endstate_server::ApiTls::Plain;
        config.runner_interval = Duration::from_millis(200);
        config.rate_limit = RateLimitConfig {
            per_second: 10_000,
            burst: 10_000,
        };
        adjust(&mut config);
        std::fs::create_dir_all(&config.data_dir).unwrap();
        TestServer::open(config, agents, dir, None).await
    }

    /// The same server stopped and started again on its data directory (its store, its CA),
    /// on new ports; the admin token stays valid.
    pub async fn restart(mut self) -> TestServer {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        let TestServer {
            config,
            agents,
            _dir: dir,
            admin,
            store,
            ..
        } = self;
        drop(store);
        TestServer::open(config, agents, dir, Some(admin)).await
    }

    async fn open(config: ServerConfig, agents: bool, dir: tempfile::TempDir, admin: Option<String>) -> TestServer {
        let store = Arc::new(endstate_store::SqliteStore::open(config.data_dir.join("endstate.db")).unwrap());
        let mut server = Server::with_store(store.clone(), &config).await.unwrap();
        let mut agent_url = None;
        if agents {
            let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            agent_url = Some(format!("wss://{}/v1/agent", agent_listener.local_addr().unwrap()));
            server = server.with_agent_listener(agent_listener).unwrap();
        }
        let admin = admin.unwrap_or_else(|| {
            server
                .admin_secret()
                .expect("a new store creates an admin token")
                .to_string()
        });
        let ca_pem = server.api_ca().unwrap().map(|(pem, _)| pem);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if config.api_tls == endstate_server::ApiTls::Plain {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        // Check that it really started.
        // (With the operator's certificate the test holds the CA: here any certificate will do.)
        let probe = match &config.api_tls {
            endstate_server::ApiTls::Files { .. } => reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
            _ => http(ca_pem.as_deref()),
        };
        let health = probe.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        TestServer {
            url,
            admin,
            ca_pem,
            agent_url,
            store,
            stop: Some(stop),
            task: Some(task),
            config,
            agents,
            _dir: dir,
        }
    }

    /// An authenticated GET as the admin.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        http(self.ca_pem.as_deref())
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
    }

    /// An authenticated GET as the admin, read as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.get(path).await.json().await.unwrap()
    }

    /// The API client, as the admin.
    #[must_use]
    pub fn client(&self) -> Client {
        match &self.ca_pem {
            Some(ca) => Client::with_ca(&self.url, &self.admin, ca).unwrap(),
            None => Client::new(&self.url, &self.admin).unwrap(),
        }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// A raw HTTP client trusting only `ca` (PEM) when given.
pub fn http(ca: Option<&str>) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    match ca {
        Some(pem) => builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]),
        None => builder,
    }
    .build()
    .unwrap()
}

/// Documents of a submission from (path, content) pairs.
#[must_use]
pub fn docs(files: &[(&str, &str)]) -> Vec<Document> {
    files
        .iter()
        .map(|(path, content)| Document {
            path: path.to_string(),
            content: content.to_string(),
        })
        .collect()
}

/// A submission of these documents by the CLI, with `message`.
#[must_use]
pub fn submit_request(files: &[(&str, &str)], message: &str) -> SubmitRevision {
    SubmitRevision {
        documents: docs(files),
        message: message.to_string(),
        source: RevisionSource {
            kind: "cli".into(),
            reference: Some("tests".into()),
        },
        parent: None,
        options: Default::default(),
        basis: None,
    }
}

/// Waits (bounded) until the change is in one of `states`, and returns it.
pub async fn wait_for_change(client: &Client, id: u64, states: &[&str]) -> endstate_api::ChangeView {
    for _ in 0..200 {
        let change = client.change(id).await.unwrap();
        if states.contains(&change.state.as_str()) {
            return change;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "change {id} never reached {states:?}: {:?}",
        client.change(id).await.unwrap()
    );
}

/// Waits (bounded) until the change waits in `planning` with its reason written.
pub async fn wait_until_waiting(client: &Client, id: u64) -> endstate_api::ChangeView {
    for _ in 0..200 {
        let change = client.change(id).await.unwrap();
        if change.state == "planning" && change.reason.as_deref().is_some_and(|r| r.starts_with("waiting")) {
            return change;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("change {id} never waited: {:?}", client.change(id).await.unwrap());
}
