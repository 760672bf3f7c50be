//! Authentication, errors as problem details, limits, revisions and changes, OpenAPI and metrics.

use endstate_client::Client;

use crate::{CACHE_COMPONENT, SYSTEMS, TestServer, submit_request, wait_for_change, wait_until_waiting};

#[tokio::test]
async fn every_call_needs_a_known_token() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    for path in ["/v1/systems", "/v1/timeline", "/openapi.json", "/metrics"] {
        let response = http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path} without a token");
        assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"endstate\"");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: endstate_api::Problem = response.json().await.unwrap();
        assert!(problem.detail.contains("needs a bearer token"), "{problem:?}");
    }
    let wrong = Client::new(&server.url, "es_not-a-real-token").unwrap();
    let error = wrong.systems(false).await.unwrap_err();
    assert_eq!(error.problem().map(|p| p.status), Some(401));
    assert!(error.to_string().contains("not known to this server"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn a_viewer_reads_but_may_not_change() {
    let server = TestServer::start().await;
    let created = server.client().create_token("dashboards", "viewer", &[]).await.unwrap();
    assert!(created.secret.starts_with("es_"));
    let viewer = Client::new(&server.url, &created.secret).unwrap();
    assert!(viewer.systems(false).await.is_ok());
    let error = viewer
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "x"))
        .await
        .unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 403);
    assert!(
        problem.detail.contains("role viewer which may not make changes"),
        "{problem:?}"
    );
    let error = viewer.create_token("another", "admin", &[]).await.unwrap_err();
    assert_eq!(error.problem().map(|p| p.status), Some(403));
    let error = server.client().create_token("bad", "root", &[]).await.unwrap_err();
    assert_eq!(error.problem().unwrap().errors[0].field, "role");
    server.stop().await;
}

/// The last admin token is not revoked (nobody could administer the server until an offline
/// reset); once another admin token exists, it is.
#[tokio::test]
async fn the_last_admin_token_is_not_revoked() {
    let server = TestServer::start().await;
    let client = server.client();
    let error = client.revoke_token("admin").await.unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 409, "{problem:?}");
    assert!(problem.detail.contains("the last admin token"), "{problem:?}");
    assert!(client.systems(false).await.is_ok(), "still valid");
    let second = client.create_token("ops-admin", "admin", &[]).await.unwrap();
    let revoked = client.revoke_token("admin").await.unwrap();
    assert!(revoked.revoked);
    let other = Client::new(&server.url, &second.secret).unwrap();
    let error = other.revoke_token("ops-admin").await.unwrap_err();
    assert_eq!(error.problem().map(|p| p.status), Some(409), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn a_systems_only_revision_converges_and_is_on_the_timeline() {
    let server = TestServer::start().await;
    let client = server.client();
    let submitted = client
        .submit(&submit_request(&[("systems.yaml", SYSTEMS)], "first"))
        .await
        .unwrap();
    assert_eq!(submitted.revision.id, 1);
    assert_eq!(submitted.revision.author, "admin");
    assert_eq!(submitted.revision.source.kind, "cli");
    assert!(submitted.revision.digest.starts_with("sha256:"));
    assert_eq!(submitted.change.state, "pending");
    let change = wait_for_change(&client, submitted.change.id, &["converged"]).await;
    assert!(change.terminal);
    assert!(change.reason.unwrap().contains("5 declared objects in force"));
    let revision = client.revision("latest").await.unwrap();
    assert_eq!(revision.id, 1);
    assert_eq!(revision.counts["systems"], 5);
    assert!(revision.desired.unwrap()["systems"]["cache"].is_object());
    let kinds: Vec<String> = client
        .timeline(&endstate_client::TimelineQuery::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["change.converged", "change.planning", "revision.submitted"]);
    server.stop().await;
}

#[tokio::test]
async fn a_change_that_cannot_be_placed_waits_with_its_reason_and_a_newer_one_supersedes_it() {
    let server = TestServer::start().await;
    let client = server.client();
    let first = client
        .submit(&submit_request(
            &[("s.yaml", SYSTEMS), ("c.yaml", CACHE_COMPONENT)],
            "memo",
        ))
        .await
        .unwrap();
    let waiting = wait_until_waiting(&client, first.change.id).await;
    assert!(!waiting.terminal);
    let reason = waiting.reason.unwrap();
    assert!(
        reason.contains("cache/memo cannot be placed (0 of 2 instances): no known host matches the selector zone=a"),
        "{reason}"
    );
    let plan = waiting.plan.unwrap();
    assert_eq!(plan["unplaced"][0]["component"], "cache/memo");
    let second = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "without memo"))
        .await
        .unwrap();
    let superseded = wait_for_change(&client, first.change.id, &["superseded"]).await;
    assert_eq!(
        superseded.reason.unwrap(),
        format!("superseded by change {} for revision 2", second.change.id)
    );
    wait_for_change(&client, second.change.id, &["converged"]).await;
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_spec_is_refused_with_every_problem_located() {
    let server = TestServer::start().await;
    let client = server.client();
    let bad_component = CACHE_COMPONENT
        .replace("system: cache", "system: nowhere")
        .replace("command: memo", "command: memo\nreplicas: 3");
    let error = client
        .submit(&submit_request(
            &[
                ("s.yaml", SYSTEMS),
                ("broken.yaml", "kind: [unclosed"),
                ("c.yaml", &bad_component),
            ],
            "bad",
        ))
        .await
        .unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 422);
    let located: Vec<String> = problem
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}:{} {}", d.file, d.line, d.column, d.code))
        .collect();
    assert!(located.iter().any(|l| l.starts_with("broken.yaml:1:")), "{located:?}");
    assert!(
        located
            .iter()
            .any(|l| l.starts_with("c.yaml:") && l.ends_with("unknown-field")),
        "{located:?}"
    );
    // Nothing was stored.
    assert!(
        client
            .revision("latest")
            .await
            .unwrap_err()
            .problem()
            .is_some_and(|p| p.status == 404)
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_name_the_field() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(format!("{}/v1/revisions", server.url))
            .bearer_auth(&server.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = post(r#"{"documents":[{"path":"a.yaml","content":7}]}"#.into())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: endstate_api::Problem = response.json().await.unwrap();
    assert_eq!(problem.errors[0].field, "documents[0].content", "{problem:?}");
    let response = post(r#"{"documents":[{"path":"a.yaml","content":"x"}],"extra":1}"#.into())
        .await
        .unwrap();
    let problem: endstate_api::Problem = response.json().await.unwrap();
    assert!(
        problem.errors[0].message.contains("unknown field `extra`"),
        "{problem:?}"
    );
    let response = post(r#"{"documents":[]}"#.into()).await.unwrap();
    let problem: endstate_api::Problem = response.json().await.unwrap();
    assert_eq!((problem.status, problem.errors[0].field.as_str()), (422, "documents"));
    let response = post("\u{0}\u{1}garbage".into()).await.unwrap();
    assert_eq!(response.status(), 400);
    let huge = format!(
        r#"{{"documents":[{{"path":"a.yaml","content":"{}"}}]}}"#,
        "a".repeat(endstate_api::MAX_BODY_BYTES + 10)
    );
    let response = post(huge).await.unwrap();
    assert_eq!(response.status(), 413);
    let problem: endstate_api::Problem = response.json().await.unwrap();
    assert!(problem.detail.contains("larger than"), "{problem:?}");
    let response = server.get("/v1/timeline?since=yesterday").await;
    let problem: endstate_api::Problem = response.json().await.unwrap();
    assert_eq!((problem.status, problem.errors[0].field.as_str()), (422, "since"));
    let response = server.get("/v1/nope").await;
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn each_client_is_rate_limited() {
    let server = TestServer::start_with(|config| {
        config.rate_limit = endstate_server::RateLimitConfig {
            per_second: 1,
            burst: 5,
        }
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = server.get("/v1/systems").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(&statuses[..5], &[200; 5]);
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    // The bucket refills at one request per second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = server.get("/v1/systems").await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let server = TestServer::start().await;
    let doc: serde_json::Value = server.get_json("/openapi.json").await;
    for path in [
        "/v1/revisions",
        "/v1/timeline",
        "/v1/systems/{name}",
        "/v1/stream",
        "/v1/systems/{name}/describe",
        "/v1/systems/{name}/notes",
        "/v1/history",
        "/v1/why",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    for schema in [
        "Problem",
        "SystemDescription",
        "CreateNote",
        "HistoryView",
        "UnhealthyShare",
        "ActionRule",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing from the OpenAPI schemas"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // The refusals as the server answers them (ARCHITECTURE.md, "Errors"): 400 unreadable, 409
    // on writes whose basis moved, 422 refused for its meaning.
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .map(|all| all.keys().cloned().collect())
            .unwrap_or_default()
    };
    for status in ["400", "409", "422"] {
        assert!(
            statuses("/v1/revisions", "post").iter().any(|s| s == status),
            "POST /v1/revisions: {status}"
        );
    }
    let timeline = statuses("/v1/timeline", "get");
    assert!(timeline.iter().any(|s| s == "422"), "{timeline:?}");
    assert!(
        !timeline.iter().any(|s| s == "409"),
        "a read answers no 409: {timeline:?}"
    );
    server
        .client()
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "m"))
        .await
        .unwrap();
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("endstate_revisions_submitted_total 1"), "{metrics}");
    assert!(
        metrics.contains(r#"endstate_api_requests_total{method="POST",route="/v1/revisions",status="201"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = endstate_server::ServerConfig::new(dir.path());
    let server = endstate_server::Server::open(&config).await.unwrap();
    let secret = server.admin_secret().unwrap().to_string();
    drop(server);
    let again = endstate_server::Server::open(&config).await.unwrap();
    assert_eq!(
        again.admin_secret(),
        None,
        "the admin token is created once and shown once"
    );
    let _ = secret;
}

#[tokio::test]
async fn hostile_documents_get_located_errors_and_nothing_is_lost() {
    let server = TestServer::start().await;
    let client = server.client();
    let first = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS)], "good"))
        .await
        .unwrap();
    wait_for_change(&client, first.change.id, &["converged"]).await;

    // Binary garbage and deep nesting inside the documents: 422 with located diagnostics.
    let garbage = String::from_utf8_lossy(&[0xff, 0x00, 0x13, 0x37, b'\n', 0x00]).into_owned();
    let nested = format!(
        "apiVersion: endstate/v1\nkind: System\nname: deep\nlabels: {}",
        "[".repeat(100_000)
    );
    let error = client
        .submit(&submit_request(
            &[("garbage.yaml", &garbage), ("nested.yaml", &nested)],
            "hostile",
        ))
        .await
        .unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 422);
    let files: Vec<&str> = problem.diagnostics.iter().map(|d| d.file.as_str()).collect();
    assert!(
        files.contains(&"garbage.yaml") && files.contains(&"nested.yaml"),
        "{problem:?}"
    );

    // A document over the per-file limit is refused by field, before parsing.
    let big = "#".repeat(endstate_spec::MAX_FILE_BYTES + 1);
    let error = client
        .submit(&submit_request(&[("s.yaml", SYSTEMS), ("big.yaml", &big)], "big"))
        .await
        .unwrap_err();
    assert_eq!(error.problem().unwrap().errors[0].field, "documents[1].content");

    // Thousands of documents are fine.
    let many: Vec<(String, String)> = (0..2_000)
        .map(|n| {
            (
                format!("many/{n:04}.yaml"),
                format!("apiVersion: endstate/v1\nkind: System\nname: s{n}\nowners: [t]\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let submitted = client.submit(&submit_request(&refs, "many")).await.unwrap();
    assert_eq!(submitted.revision.counts["systems"], 2_000);

    // What was accepted before is still there.
    for id in [1u64, 2] {
        assert_eq!(client.revision(&id.to_string()).await.unwrap().id, id);
    }
    server.stop().await;
}

#[tokio::test]
async fn every_route_of_the_openapi_document_refuses_an_anonymous_call() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let doc: serde_json::Value = server.get_json("/openapi.json").await;
    let mut n_calls = 0;
    let mut anonymous = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "shop")
            .replace("{host}", "h1");
        for (method, operation) in methods.as_object().unwrap() {
            // The document says which routes take no bearer token; they are exactly these.
            if operation["security"] == serde_json::json!([{}]) {
                anonymous.push(format!("{} {path}", method.to_uppercase()));
                continue;
            }
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = http
                .request(method.clone(), format!("{}{concrete}", server.url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {path} without a token");
            n_calls += 1;
        }
    }
    assert!(n_calls >= 16, "only {n_calls} routes in the OpenAPI document");
    anonymous.sort();
    assert_eq!(
        anonymous,
        [
            "GET /healthz",
            "POST /v1/agents/endpoint",
            "POST /v1/agents/enrol",
            "POST /v1/sources/{name}/hook"
        ],
        "routes without a bearer token: liveness, the two whose credential is in the body, and a Git \
         source's webhook (signed by the forge: `sources` tests refuse it unsigned)"
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_methods_paths_and_parameters_are_problem_details_naming_the_parameter() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(&server.admin)
            .send()
    };
    // An empty number or flag is refused, naming it ("is empty").
    for (path, field, message) in [
        ("/v1/timeline?limit=many", "limit", ""),
        ("/v1/changes?open=maybe", "open", ""),
        ("/v1/timeline?colour=red", "colour", ""),
        ("/v1/components?limit=", "limit", "is empty"),
        ("/v1/changes?cursor=&open=", "open", "is empty"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let problem: endstate_api::Problem = response.json().await.unwrap();
        assert_eq!(problem.errors[0].field, field, "{path}: {problem:?}");
        assert!(problem.errors[0].message.starts_with(message), "{path}: {problem:?}");
    }
    // A text parameter given empty, as a form sends a blank field, is no filter at all.
    for path in [
        "/v1/timeline?system=&kind=&cursor=",
        "/v1/changes?cursor=",
        "/v1/hosts?kind=",
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}: {}", response.text().await.unwrap());
    }
    let response = get("/v1/revisions/rr1").await.unwrap();
    assert_eq!(response.status(), 422);
    let response = get("/v1/systems/%ff").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let response = http
        .delete(format!("{}/v1/systems", server.url))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    server.stop().await;
}

#[tokio::test]
async fn a_submission_after_someone_else_s_is_refused_when_it_names_its_parent() {
    let server = TestServer::start().await;
    let client = server.client();
    let preview = client.plan(crate::docs(&[("s.yaml", SYSTEMS)])).await.unwrap();
    assert_eq!((preview.base_revision, preview.latest_revision), (None, None));
    assert_eq!(preview.plan.summary.add, 5);
    let mut mine = submit_request(&[("s.yaml", SYSTEMS)], "mine");
    mine.parent = Some(preview.latest_revision.unwrap_or(0));
    let theirs = client
        .submit(&submit_request(
            &[("s.yaml", SYSTEMS), ("c.yaml", CACHE_COMPONENT)],
            "theirs",
        ))
        .await
        .unwrap();
    let error = client.submit(&mine).await.unwrap_err();
    let problem = error.problem().unwrap();
    assert_eq!(problem.status, 409);
    assert!(
        problem
            .detail
            .contains("revision 1 was submitted after the plan you previewed"),
        "{problem:?}"
    );
    mine.parent = Some(theirs.revision.id);
    let accepted = client.submit(&mine).await.unwrap();
    wait_for_change(&client, accepted.change.id, &["converged"]).await;
    // Plans start from the last revision that converged, like the change itself.
    let preview = client.plan(crate::docs(&[("s.yaml", SYSTEMS)])).await.unwrap();
    assert_eq!((preview.base_revision, preview.latest_revision), (Some(2), Some(2)));
    assert!(preview.plan.objects.is_empty(), "{:?}", preview.plan.objects);
    server.stop().await;
}

/// HTTPS is the default: the built-in certificate comes from the server's CA, a client that
/// pins that CA gets in, one that trusts only the system's roots or speaks plain HTTP does not.
#[tokio::test]
async fn https_is_the_default_and_clients_pin_the_servers_ca() {
    let server = TestServer::start_with(|config| {
        config.api_tls = endstate_server::ApiTls::BuiltIn {
            names: vec!["endstate.test".into()],
        };
    })
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let ca = server.ca_pem.clone().expect("the built-in certificate's CA");
    assert!(server.client().systems(false).await.is_ok());

    let system_roots = Client::new(&server.url, &server.admin).unwrap();
    let refused = system_roots.systems(false).await.unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&refused));
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    let plain = server.url.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());

    // The fingerprint a client pins is the CA's, the one `endstate server` prints.
    let pinned = |expected: Option<&str>| {
        let (tls, pin) = endstate_pki::pin::PinnedCa::client_config(expected).unwrap();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        (client, pin)
    };
    let (first_contact, pin) = pinned(None);
    let health = first_contact
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let seen = pin.seen().unwrap();
    assert_eq!(endstate_pki::pin::der_to_pem(seen.as_ref()).trim(), ca.trim());
    let (wrong_pin, _) = pinned(Some(&"0".repeat(64)));
    let error = wrong_pin
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&error));
    assert!(chain.contains("not the one pinned"), "{chain}");
    server.stop().await;
}

/// Plain HTTP is served on loopback only.
#[tokio::test]
async fn plain_http_is_refused_on_an_address_other_hosts_reach() {
    let dir = tempfile::tempdir().unwrap();
    let config = endstate_server::ServerConfig {
        api_tls: endstate_server::ApiTls::Plain,
        ..endstate_server::ServerConfig::new(dir.path())
    };
    let server = endstate_server::Server::open(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = server.serve(listener, async {}).await.unwrap_err();
    assert!(
        error.to_string().contains("only served on a loopback address"),
        "{error}"
    );
}

/// The operator's certificate and key are read again when they change: no restart.
#[tokio::test]
async fn the_operators_certificate_is_replaced_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let pair = |name: &str| {
        let ca = endstate_pki::CertificateAuthority::generate(name, now, std::time::Duration::from_secs(86_400 * 30))
            .unwrap();
        let (cert, key) = ca
            .issue_server(
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                now,
                std::time::Duration::from_secs(86_400),
            )
            .unwrap();
        (ca.cert_pem().to_owned(), cert, key)
    };
    let (first_ca, cert, key) = pair("first CA");
    let (cert_path, key_path) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let server = TestServer::start_with(|config| {
        config.api_tls = endstate_server::ApiTls::Files {
            cert: cert_path.clone(),
            key: key_path.clone(),
        };
    })
    .await;
    let health = |ca: String| {
        let url = format!("{}/healthz", server.url);
        async move {
            crate::http(Some(&ca))
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(health(first_ca.clone()).await.unwrap(), 200);

    let (second_ca, cert, key) = pair("second CA");
    // The key first, then the certificate: in between, the pair does not match and the old one stays.
    std::fs::write(&key_path, &key).unwrap();
    std::fs::write(&cert_path, &cert).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while health(second_ca.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(health(first_ca).await.is_err(), "the old certificate is still served");
    server.stop().await;
}
