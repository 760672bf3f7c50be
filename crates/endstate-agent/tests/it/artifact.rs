//! The artifact cache against local files and real HTTP servers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use endstate_agent::{ArtifactCache, ArtifactError, ArtifactRef, FetchLimits, VersionDir};
use sha2::{Digest, Sha256};

use crate::servers;

const BODY: &[u8] = b"#!/bin/sh\necho hello from the artifact\n";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn url(url: String, sha256: &str) -> ArtifactRef {
    ArtifactRef::Url {
        url,
        sha256: sha256.to_owned(),
    }
}

/// Names of the entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A server with `/blob` (counting its downloads, answering after `delay`) and `/missing` (404).
async fn blob_server(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let router = Router::new()
        .route(
            "/dl/example-service",
            get(move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                BODY
            }),
        )
        .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "no") }));
    let addr = servers::serve(router).await;
    (format!("http://{addr}"), hits)
}

fn limits(max_size: u64) -> FetchLimits {
    FetchLimits {
        total_timeout: Duration::from_millis(300),
        max_size,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_is_copied_once_by_content() {
    let data = tempfile::tempdir().unwrap();
    let source_dir = tempfile::tempdir().unwrap();
    let source = source_dir.path().join("example-service");
    std::fs::write(&source, BODY).unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();

    let blob = cache.fetch(&ArtifactRef::Path(source.clone())).await.unwrap();
    assert_eq!(blob, data.path().join("cache/sha256").join(sha256(BODY)));
    assert_eq!(std::fs::read(&blob).unwrap(), BODY);
    assert_eq!(blob.metadata().unwrap().permissions().mode() & 0o777, 0o444);
    // A copy, not a link: writing the source later does not touch the cache.
    assert_ne!(blob.metadata().unwrap().ino(), source.metadata().unwrap().ino());
    let inode = blob.metadata().unwrap().ino();

    let again = cache.fetch(&ArtifactRef::Path(source.clone())).await.unwrap();
    assert_eq!(again, blob);
    assert_eq!(
        again.metadata().unwrap().ino(),
        inode,
        "a cache hit is not copied again"
    );
    assert_eq!(entries(&data.path().join("cache/tmp")), Vec::<String>::new());

    std::fs::write(&source, b"changed").unwrap();
    let changed = cache.fetch(&ArtifactRef::Path(source)).await.unwrap();
    assert_eq!(changed, data.path().join("cache/sha256").join(sha256(b"changed")));
    assert_eq!(std::fs::read(&blob).unwrap(), BODY, "the old blob is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_local_path_names_it() {
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let missing = data.path().join("no-such-artifact");
    let error = cache.fetch(&ArtifactRef::Path(missing.clone())).await.unwrap_err();
    match &error {
        ArtifactError::Io { path, source, .. } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(error.to_string(), format!("could not read {}", missing.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_is_downloaded_once() {
    let (base, hits) = blob_server(Duration::from_millis(100)).await;
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let artifact = url(format!("{base}/dl/example-service"), &sha256(BODY));

    // Two at once: one downloads, the other waits for it and finds it cached.
    let (first, second) = tokio::join!(cache.fetch(&artifact), cache.fetch(&artifact));
    let blob = first.unwrap();
    assert_eq!(second.unwrap(), blob);
    assert_eq!(blob, data.path().join("cache/sha256").join(sha256(BODY)));
    assert_eq!(std::fs::read(&blob).unwrap(), BODY);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    assert_eq!(cache.fetch(&artifact).await.unwrap(), blob);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a second fetch is a cache hit");
    assert_eq!(entries(&data.path().join("cache/tmp")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha_mismatch_keeps_nothing() {
    let (base, _) = blob_server(Duration::ZERO).await;
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let wrong = sha256(b"something else");
    let error = cache
        .fetch(&url(format!("{base}/dl/example-service"), &wrong))
        .await
        .unwrap_err();
    match error {
        ArtifactError::ShaMismatch { expected, found, .. } => {
            assert_eq!(expected, wrong);
            assert_eq!(found, sha256(BODY));
        }
        other => panic!("expected ShaMismatch, got {other:?}"),
    }
    assert_eq!(entries(&data.path().join("cache/tmp")), Vec::<String>::new());
    assert_eq!(entries(&data.path().join("cache/sha256")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_times_out() {
    let addr = servers::hanging().await;
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::with_limits(data.path(), limits(1 << 20)).unwrap();
    let error = cache
        .fetch(&url(format!("http://{addr}/dl/x"), &sha256(BODY)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ArtifactError::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{error:?}"
    );
    assert_eq!(entries(&data.path().join("cache/sha256")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_halfway_times_out_and_leaves_no_temp_file() {
    // Announces 1000 bytes, sends 10, then keeps the connection open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0_u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                .await;
            held.push(stream);
        }
    });
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::with_limits(data.path(), limits(1 << 20)).unwrap();
    let error = cache
        .fetch(&url(format!("http://{addr}/dl/x"), &sha256(BODY)))
        .await
        .unwrap_err();
    assert!(matches!(error, ArtifactError::Timeout { .. }), "{error:?}");
    assert_eq!(entries(&data.path().join("cache/tmp")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_refused_announced_or_not() {
    let big = vec![b'x'; 4096];
    let announced = servers::serve(Router::new().route("/big", get(move || async move { big }))).await;
    // No Content-Length: the body ends when the connection closes.
    let mut unannounced = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    unannounced.extend(vec![b'y'; 4096]);
    let unannounced = servers::raw(unannounced).await;

    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::with_limits(
        data.path(),
        FetchLimits {
            total_timeout: Duration::from_secs(10),
            max_size: 1000,
        },
    )
    .unwrap();
    for (target, body) in [
        (format!("http://{announced}/big"), vec![b'x'; 4096]),
        (format!("http://{unannounced}/any"), vec![b'y'; 4096]),
    ] {
        let error = cache.fetch(&url(target.clone(), &sha256(&body))).await.unwrap_err();
        assert!(
            matches!(error, ArtifactError::TooLarge { limit: 1000, .. }),
            "{target}: {error:?}"
        );
    }
    assert_eq!(entries(&data.path().join("cache/tmp")), Vec::<String>::new());
    assert_eq!(entries(&data.path().join("cache/sha256")), Vec::<String>::new());

    // The same response within the limit is accepted: the limit, not the framing, refused it.
    let roomy = ArtifactCache::new(data.path()).unwrap();
    let body = vec![b'y'; 4096];
    roomy
        .fetch(&url(format!("http://{unannounced}/any"), &sha256(&body)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_are_refused_before_any_request() {
    let (base, hits) = blob_server(Duration::ZERO).await;
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let good = sha256(BODY);

    let error = cache.fetch(&url("ftp://h/a".to_owned(), &good)).await.unwrap_err();
    assert!(
        matches!(&error, ArtifactError::UnsupportedScheme { scheme, .. } if scheme == "ftp"),
        "{error:?}"
    );
    let error = cache.fetch(&url("not a url".to_owned(), &good)).await.unwrap_err();
    assert!(matches!(error, ArtifactError::InvalidUrl { .. }), "{error:?}");
    for bad in ["", "../../etc/passwd", &good.to_uppercase(), &good[..63]] {
        let error = cache
            .fetch(&url(format!("{base}/dl/example-service"), bad))
            .await
            .unwrap_err();
        assert!(matches!(error, ArtifactError::InvalidSha256 { .. }), "{bad}: {error:?}");
    }
    let error = cache.fetch(&url(format!("{base}/missing"), &good)).await.unwrap_err();
    assert!(matches!(error, ArtifactError::Status { status: 404, .. }), "{error:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_makes_an_immutable_version_directory() {
    let (base, hits) = blob_server(Duration::ZERO).await;
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let artifact = url(format!("{base}/dl/example-service"), &sha256(BODY));
    let version = VersionDir {
        component: "shop/api".to_owned(),
        version: "2.4.1".to_owned(),
    };

    let installed = cache.install(&artifact, &version).await.unwrap();
    let expected_dir = data
        .path()
        .join("versions/shop/api")
        .join(format!("2.4.1-{}", &sha256(BODY)[..12]));
    assert_eq!(installed.dir, expected_dir);
    assert_eq!(installed.artifact, expected_dir.join("example-service"));
    assert_eq!(installed.sha256, sha256(BODY));
    assert_eq!(std::fs::read(&installed.artifact).unwrap(), BODY);
    let meta = installed.artifact.metadata().unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o555);
    assert_eq!(
        entries(&data.path().join("versions/shop/api")),
        vec![format!("2.4.1-{}", &sha256(BODY)[..12])]
    );

    // Installing again returns the same directory, untouched, without downloading.
    let again = cache.install(&artifact, &version).await.unwrap();
    assert_eq!(again, installed);
    assert_eq!(again.artifact.metadata().unwrap().ino(), meta.ino());
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Other content under the same version string gets its own directory; the first stays.
    let source_dir = tempfile::tempdir().unwrap();
    let other = source_dir.path().join("example-service");
    std::fs::write(&other, b"#!/bin/sh\necho other\n").unwrap();
    let second = cache.install(&ArtifactRef::Path(other), &version).await.unwrap();
    assert_ne!(second.dir, installed.dir);
    assert_eq!(std::fs::read(&installed.artifact).unwrap(), BODY);
    assert_eq!(entries(&data.path().join("versions/shop/api")).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_names_that_escape_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::new(data.path()).unwrap();
    let source = data.path().join("a");
    std::fs::write(&source, BODY).unwrap();
    for (component, version) in [("shop/api", "../x"), ("../shop", "1"), ("shop//api", "1"), ("shop", "")] {
        let version = VersionDir {
            component: component.to_owned(),
            version: version.to_owned(),
        };
        let error = cache
            .install(&ArtifactRef::Path(source.clone()), &version)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ArtifactError::InvalidName { .. }),
            "{version:?}: {error:?}"
        );
    }
    assert_eq!(entries(data.path()), vec!["a".to_owned()], "nothing was written");
}

/// An `https` artifact from a server whose CA the agent was told to trust is downloaded and
/// checked like any other; without that CA, or with an expired certificate, it is refused and
/// the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_artifact_needs_a_trusted_current_certificate() {
    use endstate_testkit::{HttpsServer, TestCa};
    let ca = TestCa::new("artifact CA");
    let server = HttpsServer::start(ca.current(), 200, BODY).await;
    let artifact = url(format!("{}/dl/example-service", server.url), &sha256(BODY));

    let data = tempfile::tempdir().unwrap();
    let untrusting = ArtifactCache::new(data.path()).unwrap();
    let error = untrusting.fetch(&artifact).await.unwrap_err();
    let chain = endstate_agent::error_chain(&error);
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    let trusting =
        ArtifactCache::with_trust(data.path(), FetchLimits::default(), std::slice::from_ref(&ca.der)).unwrap();
    let blob = trusting.fetch(&artifact).await.unwrap();
    assert_eq!(std::fs::read(&blob).unwrap(), BODY);
    assert_eq!(server.requests().len(), 1);
    assert!(server.requests()[0].line.starts_with("GET /dl/example-service "));

    let expired = HttpsServer::start(ca.expired(), 200, BODY).await;
    let other = tempfile::tempdir().unwrap();
    let cache = ArtifactCache::with_trust(other.path(), FetchLimits::default(), std::slice::from_ref(&ca.der)).unwrap();
    let error = cache
        .fetch(&url(format!("{}/dl/example-service", expired.url), &sha256(BODY)))
        .await
        .unwrap_err();
    let chain = endstate_agent::error_chain(&error);
    assert!(chain.contains("certificate expired"), "{chain}");
}
