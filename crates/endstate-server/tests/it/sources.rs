//! Git sources: real repositories (Debian's `git`, over `file://` and HTTPS), a real server fetching them
//! with gix. A commit becomes a revision owned by its source; the API may not write what a
//! source owns; a bad commit is refused with located problems and the fix applies after it.

use endstate_api::{AddSource, SourcePlanRequest, SourceView};
use endstate_client::{Client, TimelineQuery};
use endstate_testkit::TestCa;
use endstate_testkit::fixtures::GIT_CHECKOUT;
use endstate_testkit::git::{AUTHOR, GitHttp, GitRepo};

use crate::{SYSTEMS, TestServer, submit_request};

fn add(name: &str, repo: &GitRepo, paths: &[&str]) -> AddSource {
    AddSource {
        name: name.into(),
        repository: repo.url(),
        branch: Some("main".into()),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        // The tests sync by hand; the poller must not race them.
        interval: Some("1h".into()),
        credentials_file: None,
        webhook_secret_file: None,
    }
}

/// The `source.commit` events, newest first.
async fn commits(client: &Client) -> Vec<serde_json::Value> {
    let page = client
        .timeline(&TimelineQuery {
            kind: Some("source.commit".into()),
            ..TimelineQuery::default()
        })
        .await
        .unwrap();
    page.items.into_iter().map(|e| e.data).collect()
}

async fn sync(client: &Client, name: &str) -> SourceView {
    client.sync_source(name).await.unwrap()
}

#[tokio::test]
async fn a_commit_becomes_a_revision_its_source_owns_and_the_api_may_not_write_it() {
    let server = TestServer::start().await;
    let client = server.client();
    // The API's systems first, then checkout in Git (with a file outside the source's paths
    // that is not even a valid spec).
    client
        .submit(&submit_request(&[("systems.yaml", SYSTEMS)], "m"))
        .await
        .unwrap();
    let repo = GitRepo::new();
    repo.write("systems/checkout/checkout.yaml", GIT_CHECKOUT);
    repo.write("other/broken.yaml", "kind: [not a spec");
    let first = repo.commit_and_push("checkout: first version");

    let view = client
        .add_source(&add("checkout-git", &repo, &["systems/checkout"]))
        .await
        .unwrap();
    assert_eq!(view.paths, ["systems/checkout"]);
    let view = sync(&client, "checkout-git").await;
    assert_eq!(view.head.as_deref(), Some(first.as_str()), "{view:?}");
    assert_eq!(view.latest.as_deref(), Some(first.as_str()), "{view:?}");
    assert_eq!(view.systems, ["checkout"]);
    assert!(view.error.is_none() && view.problems.is_empty(), "{view:?}");

    let seen = commits(&client).await;
    assert_eq!(seen[0]["outcome"], "applied", "{seen:?}");
    assert_eq!(seen[0]["author"], AUTHOR);
    assert_eq!(seen[0]["message"], "checkout: first version\n");
    let revision = client
        .revision(&seen[0]["revision"].as_u64().unwrap().to_string())
        .await
        .unwrap();
    assert_eq!(revision.source.kind, "git");
    assert_eq!(
        revision.source.reference.as_deref(),
        Some(format!("checkout-git@{first}").as_str())
    );
    assert!(
        revision.message.starts_with("checkout: first version"),
        "{}",
        revision.message
    );
    let desired = revision.desired.unwrap();
    // The API's systems stay; checkout is the source's.
    assert!(desired["systems"]["shop"].is_object(), "{desired}");
    assert_eq!(desired["owners"]["System/checkout"], "checkout-git", "{desired}");
    assert_eq!(desired["components"]["checkout/web"]["artifact"]["version"], "1.0.0");

    // The API may not declare what the source owns: refused where it is, naming the source.
    let refused = client
        .submit(&submit_request(
            &[("systems.yaml", SYSTEMS), ("checkout.yaml", GIT_CHECKOUT)],
            "by hand",
        ))
        .await
        .unwrap_err();
    let problem = refused.problem().unwrap();
    assert_eq!(problem.status, 422, "{problem:?}");
    let text = serde_json::to_string(problem).unwrap();
    assert!(text.contains("owned-by-source"), "{text}");
    assert!(
        text.contains("system checkout is owned by the Git source checkout-git"),
        "{text}"
    );
    // Nor scale it.
    let scaled = client.scale("checkout/web", 3, None).await.unwrap_err();
    assert_eq!(scaled.problem().map(|p| p.status), Some(409));
    assert!(
        scaled
            .problem()
            .unwrap()
            .detail
            .contains("the Git source checkout-git owns"),
        "{scaled:?}"
    );
    // What the API owns it may replace: the source's system stays.
    let applied = client
        .submit(&submit_request(&[("systems.yaml", SYSTEMS)], "again"))
        .await
        .unwrap();
    let desired = client
        .revision(&applied.revision.id.to_string())
        .await
        .unwrap()
        .desired
        .unwrap();
    assert_eq!(
        desired["components"]["checkout/web"]["artifact"]["version"], "1.0.0",
        "{desired}"
    );
    assert_eq!(desired["sources"]["checkout-git"]["commit"], first.as_str());

    // A commit outside the paths changes nothing; the source remembers across a restart.
    repo.write("other/readme.yaml", "# not ours\n");
    let outside = repo.commit_and_push("docs");
    let view = sync(&client, "checkout-git").await;
    assert_eq!(view.head.as_deref(), Some(outside.as_str()));
    assert_eq!(
        view.latest.as_deref(),
        Some(first.as_str()),
        "no new revision: {view:?}"
    );
    assert_eq!(commits(&client).await[0]["outcome"], "untouched");
    let server = server.restart().await;
    let client = server.client();
    let view = client.source("checkout-git").await.unwrap();
    assert_eq!(view.handled.as_deref(), Some(outside.as_str()), "{view:?}");

    // Removed, its system stays, and is the API's from then on.
    client.remove_source("checkout-git").await.unwrap();
    assert!(client.sources().await.unwrap().is_empty());
    client
        .submit(&submit_request(
            &[("systems.yaml", SYSTEMS), ("checkout.yaml", GIT_CHECKOUT)],
            "taken back",
        ))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_bad_commit_is_refused_located_and_the_fix_pushed_after_it_applies() {
    let server = TestServer::start().await;
    let client = server.client();
    let repo = GitRepo::new();
    repo.write("checkout.yaml", GIT_CHECKOUT);
    let first = repo.commit_and_push("checkout 1.0.0");
    client.add_source(&add("checkout-git", &repo, &[])).await.unwrap();
    assert_eq!(
        sync(&client, "checkout-git").await.latest.as_deref(),
        Some(first.as_str())
    );

    // A typo: refused with where it is; the latest revision stays.
    repo.write(
        "checkout.yaml",
        &GIT_CHECKOUT.replace("version: \"1.0.0\"", "verison: \"1.1.0\""),
    );
    let bad = repo.commit_and_push("checkout 1.1.0, with a typo");
    let view = sync(&client, "checkout-git").await;
    assert_eq!(view.head.as_deref(), Some(bad.as_str()));
    assert_eq!(view.latest.as_deref(), Some(first.as_str()), "{view:?}");
    assert!(
        view.problems.iter().any(|p| p.starts_with("checkout.yaml:12:")),
        "located in the file: {:?}",
        view.problems
    );
    assert!(view.summary.contains("refused"), "{}", view.summary);
    let seen = commits(&client).await;
    assert_eq!(seen[0]["outcome"], "refused");
    assert_eq!(seen[0]["commit"], bad.as_str());

    // Two commits pushed at once: the head applies, the one between is superseded by it.
    repo.write("checkout.yaml", &GIT_CHECKOUT.replace("1.0.0", "1.1.0"));
    let between = repo.commit("checkout 1.1.0");
    repo.write("checkout.yaml", &GIT_CHECKOUT.replace("1.0.0", "1.2.0"));
    let fix = repo.commit_and_push("checkout 1.2.0");
    let view = sync(&client, "checkout-git").await;
    assert_eq!(view.latest.as_deref(), Some(fix.as_str()), "{view:?}");
    assert!(view.problems.is_empty(), "{view:?}");
    let seen = commits(&client).await;
    assert_eq!(seen[0]["outcome"], "applied");
    let superseded: Vec<&str> = seen[0]["superseded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(superseded, [format!("{between} checkout 1.1.0")], "{seen:?}");

    // History rewritten: the new head applies, and the timeline says so.
    repo.reset_hard(&first);
    repo.write("checkout.yaml", &GIT_CHECKOUT.replace("1.0.0", "1.3.0"));
    let rewritten = repo.commit("checkout 1.3.0, rewritten");
    repo.push(true);
    let view = sync(&client, "checkout-git").await;
    assert_eq!(view.latest.as_deref(), Some(rewritten.as_str()), "{view:?}");
    let seen = commits(&client).await;
    assert_eq!(seen[0]["rewritten_from"], fix.as_str(), "{seen:?}");
    server.stop().await;
}

/// A branch is previewed before it is merged: the plan of its head from the revision in force,
/// and nothing of it applied; a branch whose commit would be refused says why, located; an
/// unknown branch is refused naming the branches there are.
#[tokio::test]
async fn a_branch_is_previewed_against_the_revision_in_force_and_nothing_of_it_applies() {
    let server = TestServer::start().await;
    let client = server.client();
    let repo = GitRepo::new();
    // The system alone: this server has no hosts, and a change with instances to place would wait.
    let system = GIT_CHECKOUT.split("\n---\n").next().unwrap();
    repo.write("ops/checkout.yaml", system);
    let main = repo.commit_and_push("checkout");
    client.add_source(&add("ops", &repo, &["ops"])).await.unwrap();
    sync(&client, "ops").await;
    let revision = commits(&client).await[0]["revision"].as_u64().unwrap();
    for _ in 0..200 {
        if client.source("ops").await.unwrap().in_force.as_deref() == Some(main.as_str()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let view = client.source("ops").await.unwrap();
    assert_eq!(view.in_force.as_deref(), Some(main.as_str()), "{view:?}");

    // Two branches under review; main does not move.
    repo.write(
        "ops/checkout.yaml",
        &system.replace("Checkout, declared in Git.", "Checkout, reviewed."),
    );
    let feature = repo.commit("checkout: a better description");
    repo.push_branch("feature");
    repo.write(
        "ops/broken.yaml",
        "apiVersion: endstate/v1\nkind: System\nname: [oops\n",
    );
    repo.commit("broken");
    repo.push_branch("broken");
    repo.reset_hard(&main);
    let big = "x: \"".to_owned() + &"a".repeat(usize::try_from(endstate_git::MAX_FILE_BYTES).unwrap()) + "\"\n";
    repo.write("ops/big.yaml", &big);
    repo.commit("big");
    repo.push_branch("big");
    repo.reset_hard(&main);
    let on = |branch: &str| SourcePlanRequest {
        branch: Some(branch.into()),
        ..SourcePlanRequest::default()
    };

    let previewed = client.plan_source("ops", &on("feature")).await.unwrap();
    assert_eq!(
        (
            previewed.branch.as_str(),
            previewed.commit.as_str(),
            previewed.author.as_str()
        ),
        ("feature", feature.as_str(), AUTHOR)
    );
    assert_eq!(previewed.subject, "checkout: a better description");
    assert!(previewed.problems.is_empty(), "{previewed:?}");
    let preview = previewed.preview.unwrap();
    assert_eq!(preview.base_revision, Some(revision));
    let changed: Vec<(&str, &str)> = preview
        .plan
        .objects
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(changed, [("system", "checkout")], "only what the branch changes");
    let fields = serde_json::to_string(&preview.plan.objects[0].fields).unwrap();
    assert!(fields.contains("Checkout, reviewed."), "{fields}");

    // Nothing of it applied: no commit handled, no revision, the source where it was.
    assert_eq!(commits(&client).await.len(), 1);
    let view = client.source("ops").await.unwrap();
    assert_eq!(view.latest.as_deref(), Some(main.as_str()), "{view:?}");
    assert_eq!(view.head.as_deref(), Some(main.as_str()), "{view:?}");

    // The branch the source follows, by default: nothing to do.
    let same = client.plan_source("ops", &SourcePlanRequest::default()).await.unwrap();
    assert_eq!(same.branch, "main");
    assert!(same.preview.unwrap().plan.objects.is_empty());

    // A branch that would be refused: each problem located, no plan.
    let bad = client.plan_source("ops", &on("broken")).await.unwrap();
    assert!(bad.preview.is_none(), "{bad:?}");
    assert!(
        bad.problems.iter().any(|p| p.starts_with("ops/broken.yaml:3:")),
        "{:?}",
        bad.problems
    );

    // A file over the limits is the commit's problem too, not the server's.
    let big = client.plan_source("ops", &on("big")).await.unwrap();
    assert!(big.preview.is_none(), "{big:?}");
    assert!(
        big.problems
            .iter()
            .any(|p| p.contains("ops/big.yaml is") && p.contains("over the limit")),
        "{:?}",
        big.problems
    );

    // No such branch, no such source.
    let missing = client.plan_source("ops", &on("nope")).await.unwrap_err();
    let problem = missing.problem().unwrap();
    assert_eq!(problem.status, 422, "{problem:?}");
    assert!(
        problem.detail.contains("has no branch nope") && problem.detail.contains("feature"),
        "{problem:?}"
    );
    let unknown = client.plan_source("nobody", &on("main")).await.unwrap_err();
    assert_eq!(unknown.problem().map(|p| p.status), Some(404));
    server.stop().await;
}

/// Three sources of one repository, served over HTTPS (a forge behind a private CA the server
/// trusts) behind basic authentication: the Git server itself counts one fetch per round, and
/// the credentials come from a file.
#[tokio::test]
async fn one_fetch_serves_every_source_of_a_repository() {
    let ca = TestCa::new("forge CA");
    let trusted = ca.der.clone();
    let server = TestServer::start_with(|config| config.trusted_cas = vec![trusted]).await;
    let client = server.client();
    let repo = GitRepo::new();
    repo.write("a/checkout.yaml", GIT_CHECKOUT);
    // The same system under other names: other sources'.
    repo.write("b/cart.yaml", &GIT_CHECKOUT.replace("checkout", "cart"));
    repo.write("c/till.yaml", &GIT_CHECKOUT.replace("checkout", "till"));
    repo.commit_and_push("three systems");
    let http = GitHttp::serve_tls(repo.forge_dir(), Some(("bot", "fetch-s3cret")), ca.current());
    let secrets = tempfile::tempdir().unwrap();
    let credentials = secrets.path().join("git-credentials");
    std::fs::write(&credentials, "bot:fetch-s3cret\n").unwrap();
    for name in ["a", "b", "c"] {
        let mut request = add(name, &repo, &[name]);
        request.repository = http.url_of(&repo);
        request.credentials_file = Some(credentials.to_str().unwrap().to_owned());
        client.add_source(&request).await.unwrap();
    }
    let before = (sync(&client, "a").await.fetches, http.fetches());
    let a = sync(&client, "a").await;
    let b = client.source("b").await.unwrap();
    let c = client.source("c").await.unwrap();
    assert_eq!(a.fetches, before.0 + 1, "one fetch for the round");
    assert_eq!(
        http.fetches(),
        before.1 + 1,
        "the Git server saw one: {:?}",
        http.requests()
    );
    assert_eq!(b.fetches, a.fetches, "per repository");
    assert_eq!(c.fetches, a.fetches, "per repository");
    assert_eq!(a.fetched_at, b.fetched_at, "b was handled by a's fetch: {a:?} {b:?}");
    assert_eq!(a.fetched_at, c.fetched_at, "c was handled by a's fetch: {a:?} {c:?}");
    assert_eq!(a.systems, ["checkout"]);
    assert_eq!(b.systems, ["cart"]);
    assert_eq!(c.systems, ["till"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_definitions_are_refused_by_field() {
    let server = TestServer::start().await;
    let client = server.client();
    let repo = GitRepo::new();
    let cases = [
        (
            AddSource {
                name: "Bad Name".into(),
                ..add("x", &repo, &[])
            },
            "name",
        ),
        (
            AddSource {
                repository: "ftp://example.org/x".into(),
                ..add("x", &repo, &[])
            },
            "repository",
        ),
        (
            AddSource {
                repository: "https://bot:s3cret@forge.example/x.git".into(),
                ..add("x", &repo, &[])
            },
            "repository",
        ),
        (
            AddSource {
                branch: Some("a..b".into()),
                ..add("x", &repo, &[])
            },
            "branch",
        ),
        (add("x", &repo, &["../etc"]), "paths[0]"),
        (
            AddSource {
                interval: Some("10ms".into()),
                ..add("x", &repo, &[])
            },
            "interval",
        ),
        (
            AddSource {
                credentials_file: Some("/nonexistent/creds".into()),
                ..add("x", &repo, &[])
            },
            "credentials_file",
        ),
    ];
    for (request, field) in cases {
        let error = client.add_source(&request).await.unwrap_err();
        let problem = error.problem().unwrap();
        assert_eq!(problem.status, 422, "{field}: {problem:?}");
        assert_eq!(problem.errors[0].field, field, "{problem:?}");
        assert!(
            !serde_json::to_string(problem).unwrap().contains("s3cret"),
            "{problem:?}"
        );
    }
    client.add_source(&add("x", &repo, &[])).await.unwrap();
    let taken = client.add_source(&add("x", &repo, &[])).await.unwrap_err();
    assert_eq!(taken.problem().map(|p| p.status), Some(409));
    // An empty repository: the branch does not exist yet, said by the source.
    let view = sync(&client, "x").await;
    assert!(
        view.error.as_deref().unwrap_or_default().contains("has no branch main"),
        "{view:?}"
    );
    server.stop().await;
}

fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn a_signed_webhook_fetches_at_once_and_a_bad_or_replayed_one_fetches_nothing() {
    let server = TestServer::start().await;
    let client = server.client();
    let repo = GitRepo::new();
    repo.write("checkout.yaml", GIT_CHECKOUT);
    let first = repo.commit_and_push("checkout 1.0.0");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("hook-secret");
    std::fs::write(&secret_file, "hook-s3cret\n").unwrap();
    let request = AddSource {
        webhook_secret_file: Some(secret_file.display().to_string()),
        ..add("checkout-git", &repo, &[])
    };
    client.add_source(&request).await.unwrap();
    assert_eq!(
        sync(&client, "checkout-git").await.latest.as_deref(),
        Some(first.as_str())
    );
    repo.write("checkout.yaml", &GIT_CHECKOUT.replace("1.0.0", "1.1.0"));
    let second = repo.commit_and_push("checkout 1.1.0");

    let http = crate::http(server.ca_pem.as_deref());
    let url = format!("{}/v1/sources/checkout-git/hook", server.url);
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let call = |headers: Vec<(&'static str, String)>| {
        let mut request = http
            .post(&url)
            .body(body.clone())
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let fetches = client.source("checkout-git").await.unwrap().fetches;
    // Refused: unsigned, signed with another secret, GitLab's token wrong. Nothing fetched.
    for (headers, outcome) in [
        (vec![], "unsigned"),
        (
            vec![("x-hub-signature-256", github_signature(b"other", &body))],
            "bad_signature",
        ),
        (vec![("x-gitea-signature", "zz".to_owned())], "bad_signature"),
        (vec![("x-gitlab-token", "hook-s3cre".to_owned())], "bad_signature"),
    ] {
        let answer = call(headers).await.unwrap();
        assert_eq!(answer.status(), 401, "{outcome}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let view = client.source("checkout-git").await.unwrap();
    assert_eq!(view.fetches, fetches, "a refused call fetches nothing");
    assert_eq!(view.latest.as_deref(), Some(first.as_str()));

    // GitHub's signature: accepted, fetched and applied at once (the interval is an hour).
    let delivery = ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned());
    let signed = ("x-hub-signature-256", github_signature(b"hook-s3cret", &body));
    let answer = call(vec![signed.clone(), delivery.clone()]).await.unwrap();
    assert_eq!(answer.status(), 202);
    let mut view = client.source("checkout-git").await.unwrap();
    for _ in 0..100 {
        if view.latest.as_deref() == Some(second.as_str()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        view = client.source("checkout-git").await.unwrap();
    }
    assert_eq!(view.latest.as_deref(), Some(second.as_str()), "{view:?}");
    // The same delivery again: a replay, refused.
    let replay = call(vec![signed, delivery]).await.unwrap();
    assert_eq!(replay.status(), 409);
    // GitLab's token and Gitea's signature are accepted too.
    let gitlab = call(vec![("x-gitlab-token", "hook-s3cret".to_owned())]).await.unwrap();
    assert_eq!(gitlab.status(), 202);
    let gitea = github_signature(b"hook-s3cret", &body)
        .trim_start_matches("sha256=")
        .to_owned();
    assert_eq!(call(vec![("x-gitea-signature", gitea)]).await.unwrap().status(), 202);

    let metrics = server.get("/metrics").await.text().await.unwrap();
    for (outcome, n) in [("unsigned", 1), ("bad_signature", 3), ("replayed", 1), ("accepted", 3)] {
        let line = format!("endstate_source_hooks_total{{source=\"checkout-git\",outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // A source without a secret refuses its webhook.
    client.add_source(&add("open", &repo, &[])).await.unwrap();
    let url = format!("{}/v1/sources/open/hook", server.url);
    let answer = http.post(&url).body("{}").send().await.unwrap();
    assert_eq!(answer.status(), 401);
    server.stop().await;
}
