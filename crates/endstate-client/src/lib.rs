//! Typed HTTP client for the endstate API (used by the CLI, the tests and, later, agents and
//! federated peers), and the reader of spec directories.

pub mod spec_dir;

use std::time::Duration;

use endstate_api::{
    ChangeOptions, ChangeView, CreateJoinToken, CreateNote, CreateToken, CreatedJoinToken, CreatedToken, Document,
    EventView, HistoryView, HostDetail, HostView, LogsView, Page, PlanRequest, PlanResponse, Problem, RevisionView,
    SubmitResponse, SubmitRevision, SystemDescription, SystemView, WhyView,
};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the endstate server at {server}")]
    Connect {
        /// The server's address.
        server: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with problem details.
    #[error("{} ({}): {}", .0.title, .0.status, .0.detail)]
    Problem(Box<Problem>),
    /// The server answered with an error that is not problem details.
    #[error("the server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer could not be read.
    #[error("cannot read the server's answer to {what}")]
    Decode {
        /// The call.
        what: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The client cannot be built (bad address).
    #[error("invalid server address {0:?}: expected http://host:port")]
    BadAddress(String),
}

impl ClientError {
    /// The problem details, when the server sent them.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(problem) => Some(problem),
            _ => None,
        }
    }
}

/// Which hosts of the inventory to list (`GET /v1/hosts`).
#[derive(Clone, Debug, Default)]
pub struct HostsFilter {
    /// A label selector: `zone=a,role=web`, `zone=a|b`.
    pub selector: Option<String>,
    /// Hosts serving this system or one of its subsystems.
    pub system: Option<String>,
    /// `agent` or `static`.
    pub kind: Option<String>,
}

/// Filters of the timeline and the live stream (see `GET /v1/timeline`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TimelineQuery {
    /// A system and all its subsystems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Kinds, comma-separated; `change.` is a prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only events about this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only events about this component (`system/component`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Only events done by this actor (a token's name, `server`, `agent:HOST`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// RFC 3339 or a duration back from now (`1h`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339 or a duration back from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The `next` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Oldest first after this sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A path segment, percent-encoded (a name with `/` or `?` must not become another route).
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A connection to one endstate server with one token.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for `server` (`http://127.0.0.1:7700`) calling with `token`.
    ///
    /// # Errors
    /// When the address is not an http URL or the HTTP client cannot be built.
    pub fn new(server: &str, token: &str) -> Result<Client, ClientError> {
        Client::build(server, token, None)
    }

    /// A client for an `https://` server whose certificate is issued by this CA (PEM) and no
    /// other: the server's built-in CA, pinned (see `endstate login`).
    ///
    /// # Errors
    /// When the address is not an http URL, the CA is not PEM, or the client cannot be built.
    pub fn with_ca(server: &str, token: &str, ca_pem: &str) -> Result<Client, ClientError> {
        Client::build(server, token, Some(ca_pem))
    }

    fn build(server: &str, token: &str, ca_pem: Option<&str>) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadAddress(server.to_string()));
        }
        let connect = |source| ClientError::Connect {
            server: base.clone(),
            source,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).map_err(connect)?]);
        }
        let http = builder.build().map_err(|source| ClientError::Connect {
            server: base.clone(),
            source,
        })?;
        Ok(Client {
            http,
            base,
            token: token.to_string(),
        })
    }

    /// The server's address.
    pub fn server(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(&self, what: &str, request: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                server: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|source| ClientError::Decode {
                what: what.to_string(),
                source,
            });
        }
        let is_problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(endstate_api::PROBLEM_CONTENT_TYPE));
        let body = response.text().await.unwrap_or_default();
        if is_problem && let Ok(problem) = serde_json::from_str::<Problem>(&body) {
            return Err(ClientError::Problem(Box::new(problem)));
        }
        Err(ClientError::Status {
            status: status.as_u16(),
            body: body.chars().take(500).collect(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(path, self.http.get(format!("{}{path}", self.base))).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(path, self.http.delete(format!("{}{path}", self.base))).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(path, self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Submits a desired state as a new revision.
    ///
    /// # Errors
    /// As the server says (an invalid spec comes back as problem details with diagnostics).
    pub async fn submit(&self, request: &SubmitRevision) -> Result<SubmitResponse, ClientError> {
        self.post("/v1/revisions", request).await
    }

    /// Plans documents against the server's latest revision and inventory, storing nothing.
    ///
    /// # Errors
    /// As the server says.
    pub async fn plan(&self, documents: Vec<Document>) -> Result<PlanResponse, ClientError> {
        self.plan_with(&PlanRequest {
            documents,
            options: ChangeOptions::default(),
        })
        .await
    }

    /// [`plan`](Self::plan) with operational parameters (host groups, retired and targeted hosts).
    ///
    /// # Errors
    /// As the server says (an unknown host comes back with its field path).
    pub async fn plan_with(&self, request: &PlanRequest) -> Result<PlanResponse, ClientError> {
        self.post("/v1/plan", request).await
    }

    /// A revision with its desired state; `latest` for the newest.
    ///
    /// # Errors
    /// As the server says (404 when there is none).
    pub async fn revision(&self, id: &str) -> Result<RevisionView, ClientError> {
        self.get(&format!("/v1/revisions/{id}")).await
    }

    /// A change with its plan.
    ///
    /// # Errors
    /// As the server says.
    pub async fn change(&self, id: u64) -> Result<ChangeView, ClientError> {
        self.get(&format!("/v1/changes/{id}")).await
    }

    /// The server's version.
    ///
    /// # Errors
    /// On a transport failure or a refusal.
    pub async fn version(&self) -> Result<endstate_api::VersionView, ClientError> {
        self.get("/v1/version").await
    }

    /// What is in force, and the newest change that did not get there.
    ///
    /// # Errors
    /// On a transport failure or a refusal.
    pub async fn in_force(&self) -> Result<endstate_api::InForceView, ClientError> {
        self.get("/v1/in-force").await
    }

    /// A person's command to a change: `pause`, `resume`, `abort` or `accept`.
    ///
    /// # Errors
    /// As the server says (409 when the change is not in a state for it, 404 when unknown).
    pub async fn change_command(
        &self,
        id: u64,
        command: &str,
        reason: Option<&str>,
    ) -> Result<ChangeView, ClientError> {
        let body = endstate_api::ChangeCommand {
            reason: reason.map(str::to_owned),
        };
        self.post(&format!("/v1/changes/{id}/{}", segment(command)), &body)
            .await
    }

    /// Go back to an earlier revision (`endstate rollback`): aborts the change rolling out, or
    /// submits the earlier revision again; returns the change that does it.
    ///
    /// # Errors
    /// As the server says.
    pub async fn rollback(
        &self,
        system: &str,
        to: Option<u64>,
        reason: Option<&str>,
    ) -> Result<ChangeView, ClientError> {
        let body = endstate_api::RollbackRequest {
            to,
            reason: reason.map(str::to_owned),
        };
        self.post(&format!("/v1/systems/{}/rollback", segment(system)), &body)
            .await
    }

    /// Scales one component (`system/name`) to `count` instances: a new revision whose change
    /// rolls out like any other.
    ///
    /// # Errors
    /// As the server says.
    pub async fn scale(&self, component: &str, count: u32, reason: Option<&str>) -> Result<ChangeView, ClientError> {
        let (system, name) = component.split_once('/').unwrap_or(("", component));
        let body = endstate_api::ScaleRequest {
            count,
            reason: reason.map(str::to_owned),
        };
        self.post(
            &format!("/v1/components/{}/{}/scale", segment(system), segment(name)),
            &body,
        )
        .await
    }

    /// The open alerts, each with the history of its check.
    ///
    /// # Errors
    /// As the server says.
    pub async fn alerts(&self) -> Result<Vec<endstate_api::AlertView>, ClientError> {
        self.get("/v1/alerts").await
    }

    /// The review queue and the report of a period (`since`: RFC 3339 or a duration back, default 7d).
    ///
    /// # Errors
    /// As the server says.
    pub async fn review(
        &self,
        since: Option<&str>,
        system: Option<&str>,
    ) -> Result<endstate_api::ReviewView, ClientError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since));
        }
        if let Some(system) = system {
            query.push(("system", system));
        }
        self.send(
            "/v1/review",
            self.http.get(format!("{}/v1/review", self.base)).query(&query),
        )
        .await
    }

    /// `POST /v1/runs`: asks to run an action.
    ///
    /// # Errors
    /// As the server says (bad parameters by field path, not allowed, not reentrant, rate limited).
    pub async fn run_action(&self, request: &endstate_api::RunRequest) -> Result<endstate_api::RunView, ClientError> {
        self.post("/v1/runs", request).await
    }

    /// `GET /v1/runs/{id}`: a run with its hosts' output so far.
    ///
    /// # Errors
    /// As the server says (404 for an unknown run).
    pub async fn run(&self, id: &str) -> Result<endstate_api::RunView, ClientError> {
        self.get(&format!("/v1/runs/{}", segment(id))).await
    }

    /// `GET /v1/runs`: recent runs, newest first.
    ///
    /// # Errors
    /// As the server says.
    pub async fn runs(
        &self,
        system: Option<&str>,
        action: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<endstate_api::RunView>, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(system) = system {
            query.push(("system", system.to_owned()));
        }
        if let Some(action) = action {
            query.push(("action", action.to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.send(
            "/v1/runs",
            self.http.get(format!("{}/v1/runs", self.base)).query(&query),
        )
        .await
    }

    /// `POST /v1/runs/{id}/approve`.
    ///
    /// # Errors
    /// As the server says (your own run, not an approver, not awaiting approval).
    pub async fn approve_run(&self, id: &str, reason: Option<String>) -> Result<endstate_api::RunView, ClientError> {
        self.post(
            &format!("/v1/runs/{}/approve", segment(id)),
            &endstate_api::RunDecision { reason },
        )
        .await
    }

    /// `POST /v1/runs/{id}/cancel`.
    ///
    /// # Errors
    /// As the server says (already ended).
    pub async fn cancel_run(&self, id: &str, reason: Option<String>) -> Result<endstate_api::RunView, ClientError> {
        self.post(
            &format!("/v1/runs/{}/cancel", segment(id)),
            &endstate_api::RunDecision { reason },
        )
        .await
    }

    /// Creates a silence.
    ///
    /// # Errors
    /// As the server says (a silence ending in the past, or matching everything, is refused).
    pub async fn silence(
        &self,
        request: &endstate_api::CreateSilence,
    ) -> Result<endstate_api::SilenceView, ClientError> {
        self.post("/v1/silences", request).await
    }

    /// The active silences.
    ///
    /// # Errors
    /// As the server says.
    pub async fn silences(&self) -> Result<Vec<endstate_api::SilenceView>, ClientError> {
        self.get("/v1/silences").await
    }

    /// Ends a silence now.
    ///
    /// # Errors
    /// As the server says (404 when it is not active).
    pub async fn unsilence(&self, id: u64) -> Result<endstate_api::SilenceView, ClientError> {
        self.delete(&format!("/v1/silences/{id}")).await
    }

    /// Follows a branch of a Git repository as desired state.
    ///
    /// # Errors
    /// As the server says (409 when the name is taken, 422 for a bad field).
    pub async fn add_source(&self, request: &endstate_api::AddSource) -> Result<endstate_api::SourceView, ClientError> {
        self.post("/v1/sources", request).await
    }

    /// The sources.
    ///
    /// # Errors
    /// As the server says.
    pub async fn sources(&self) -> Result<Vec<endstate_api::SourceView>, ClientError> {
        self.get("/v1/sources").await
    }

    /// One source.
    ///
    /// # Errors
    /// As the server says (404 when there is none of that name).
    pub async fn source(&self, name: &str) -> Result<endstate_api::SourceView, ClientError> {
        self.get(&format!("/v1/sources/{}", segment(name))).await
    }

    /// Fetches a source's repository now and handles its head.
    ///
    /// # Errors
    /// As the server says (404 when there is none of that name).
    pub async fn sync_source(&self, name: &str) -> Result<endstate_api::SourceView, ClientError> {
        self.post(&format!("/v1/sources/{}/sync", segment(name)), &serde_json::json!({}))
            .await
    }

    /// Previews a branch of a source against the revision in force (nothing applied).
    ///
    /// # Errors
    /// As the server says (404 for an unknown source, 422 for an unknown branch, 503 when the
    /// repository cannot be fetched).
    pub async fn plan_source(
        &self,
        name: &str,
        request: &endstate_api::SourcePlanRequest,
    ) -> Result<endstate_api::SourcePlan, ClientError> {
        self.post(&format!("/v1/sources/{}/plan", segment(name)), request).await
    }

    /// Stops following a source; its systems stay, owned by the API.
    ///
    /// # Errors
    /// As the server says (404 when there is none of that name).
    pub async fn remove_source(&self, name: &str) -> Result<endstate_api::SourceView, ClientError> {
        self.delete(&format!("/v1/sources/{}", segment(name))).await
    }

    /// Acknowledges the open alert of a check on a target, with a comment.
    ///
    /// # Errors
    /// As the server says (404 when no alert is open).
    pub async fn ack(&self, check: &str, target: &str, comment: &str) -> Result<endstate_api::AlertView, ClientError> {
        let body = endstate_api::AckRequest {
            check: check.to_owned(),
            target: target.to_owned(),
            comment: comment.to_owned(),
        };
        self.post("/v1/alerts/ack", &body).await
    }

    /// Acknowledges or annotates every open alert matching the request's filters at once.
    ///
    /// # Errors
    /// As the server says (422 without a filter).
    pub async fn bulk_alerts(
        &self,
        request: &endstate_api::BulkAlerts,
    ) -> Result<endstate_api::BulkAlertsView, ClientError> {
        self.post("/v1/alerts/bulk", request).await
    }

    /// Systems with their status; with `tree`, the top-level ones with their subtrees. Reads every page.
    ///
    /// # Errors
    /// As the server says.
    pub async fn systems(&self, tree: bool) -> Result<Vec<SystemView>, ClientError> {
        self.all_pages(&format!("/v1/systems?tree={tree}")).await
    }

    /// Every page of a list keyed by name, in order.
    async fn all_pages<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = self.http.get(format!("{}{path}", self.base));
            if let Some(cursor) = &cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            let page: Page<T> = self.send(path, request).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// One system with its whole tree.
    ///
    /// # Errors
    /// As the server says (404 for an unknown system).
    pub async fn system(&self, name: &str) -> Result<SystemView, ClientError> {
        self.get(&format!("/v1/systems/{name}")).await
    }

    /// Everything about one system on one screen (`endstate describe`).
    ///
    /// # Errors
    /// As the server says (404 for an unknown system).
    pub async fn describe(&self, name: &str) -> Result<SystemDescription, ClientError> {
        self.get(&format!("/v1/systems/{}/describe", segment(name))).await
    }

    /// Adds a note to a system's timeline; returns the stored event.
    ///
    /// # Errors
    /// As the server says (422 naming `text` when it is blank or too long, 404 for an unknown system).
    pub async fn add_note(&self, system: &str, text: &str) -> Result<EventView, ClientError> {
        let path = format!("/v1/systems/{}/notes", segment(system));
        self.post(&path, &CreateNote { text: text.to_string() }).await
    }

    /// The history of a host (`host:NAME`), an instance (`system/component#slot@host`) or a check
    /// (`check:system/check@host`).
    ///
    /// # Errors
    /// As the server says (422 for a bad target, 404 for an unknown one).
    pub async fn history(&self, target: &str) -> Result<HistoryView, ClientError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("target", target)
            .finish();
        self.get(&format!("/v1/history?{query}")).await
    }

    /// What changed right before `target`'s state changed (`at`: an RFC 3339 time or a duration
    /// ago; `window`: how far back, a duration).
    ///
    /// # Errors
    /// As the server says (422 for a bad target, time or window, 404 for an unknown one).
    pub async fn why(&self, target: &str, at: Option<&str>, window: Option<&str>) -> Result<WhyView, ClientError> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("target", target);
        if let Some(at) = at {
            query.append_pair("at", at);
        }
        if let Some(window) = window {
            query.append_pair("window", window);
        }
        self.get(&format!("/v1/why?{}", query.finish())).await
    }

    /// The hosts of the inventory.
    ///
    /// # Errors
    /// As the server says.
    pub async fn hosts(&self) -> Result<Vec<HostView>, ClientError> {
        self.all_pages("/v1/hosts").await
    }

    /// The hosts of the inventory that match `filter`.
    ///
    /// # Errors
    /// As the server says (422 for a bad selector or kind, 404 for an unknown system).
    pub async fn inventory(&self, filter: &HostsFilter) -> Result<Vec<HostView>, ClientError> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("selector", &filter.selector),
            ("system", &filter.system),
            ("kind", &filter.kind),
        ] {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        self.all_pages(&format!("/v1/hosts?{}", query.finish())).await
    }

    /// One host of the inventory with its changes and what ran on it.
    ///
    /// # Errors
    /// As the server says (404 for a host not in the inventory).
    pub async fn host(&self, name: &str) -> Result<HostDetail, ClientError> {
        self.get(&format!("/v1/hosts/{}", segment(name))).await
    }

    /// A page of the timeline.
    ///
    /// # Errors
    /// As the server says.
    pub async fn timeline(&self, query: &TimelineQuery) -> Result<Page<EventView>, ClientError> {
        self.send(
            "/v1/timeline",
            self.http.get(format!("{}/v1/timeline", self.base)).query(query),
        )
        .await
    }

    /// Creates a named token; the answer holds its secret, once.
    ///
    /// # Errors
    /// As the server says (403 unless the caller is an admin).
    pub async fn create_token(&self, name: &str, role: &str, systems: &[String]) -> Result<CreatedToken, ClientError> {
        self.post(
            "/v1/tokens",
            &CreateToken {
                name: name.to_string(),
                role: role.to_string(),
                systems: systems.to_vec(),
            },
        )
        .await
    }

    /// `GET /v1/tokens`: every token, revoked ones too.
    ///
    /// # Errors
    /// Transport failures and problem answers.
    pub async fn tokens(&self) -> Result<Vec<endstate_api::TokenView>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// `POST /v1/tokens/{name}/revoke`.
    ///
    /// # Errors
    /// Transport failures and problem answers (404 for no such token).
    pub async fn revoke_token(&self, name: &str) -> Result<endstate_api::TokenView, ClientError> {
        self.post(&format!("/v1/tokens/{}/revoke", segment(name)), &serde_json::json!({}))
            .await
    }

    /// Creates a one-time join token for a new host.
    ///
    /// # Errors
    /// As the server says (admin only; 503 without an agent listener).
    pub async fn create_join_token(&self, request: &CreateJoinToken) -> Result<CreatedJoinToken, ClientError> {
        self.post("/v1/join-tokens", request).await
    }

    /// Revokes a host: its agent may no longer connect.
    ///
    /// # Errors
    /// As the server says.
    pub async fn revoke_host(&self, host: &str) -> Result<HostView, ClientError> {
        let path = format!("/v1/hosts/{}/revoke", host);
        self.post(&path, &serde_json::json!({})).await
    }

    /// The recent output of one instance, asked of its agent.
    ///
    /// # Errors
    /// As the server says (404 unknown instance, 503 host not connected).
    pub async fn logs(&self, host: &str, instance: &str) -> Result<LogsView, ClientError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("instance", instance)
            .finish();
        self.get(&format!("/v1/hosts/{}/logs?{query}", host)).await
    }

    /// Follows the live timeline from the newest event on (or after `query.after`).
    ///
    /// # Errors
    /// When the stream cannot be opened; a broken stream ends the returned stream with an error.
    pub async fn stream(
        &self,
        query: &TimelineQuery,
    ) -> Result<impl Stream<Item = Result<EventView, ClientError>> + use<>, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/stream", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                server: self.base.clone(),
                source,
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(match serde_json::from_str::<Problem>(&body) {
                Ok(problem) => ClientError::Problem(Box::new(problem)),
                Err(_) => ClientError::Status { status, body },
            });
        }
        let base = self.base.clone();
        let bytes = response.bytes_stream();
        let events = futures_util::stream::unfold((bytes, String::new()), move |(mut bytes, mut buffer)| {
            let base = base.clone();
            async move {
                loop {
                    if let Some(end) = buffer.find("\n\n") {
                        let block: String = buffer.drain(..end + 2).collect();
                        let data: Vec<&str> = block
                            .lines()
                            .filter_map(|line| line.strip_prefix("data:"))
                            .map(str::trim_start)
                            .collect();
                        if data.is_empty() {
                            continue; // a keep-alive comment
                        }
                        let event =
                            serde_json::from_str::<EventView>(&data.join("\n")).map_err(|error| ClientError::Status {
                                status: 200,
                                body: format!("bad event: {error}"),
                            });
                        return Some((event, (bytes, buffer)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                        Some(Err(source)) => {
                            return Some((Err(ClientError::Connect { server: base, source }), (bytes, buffer)));
                        }
                        None => return None,
                    }
                }
            }
        });
        Ok(events)
    }
}
