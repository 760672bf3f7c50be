//! Against real repositories made with Debian's `git` (the test kit's `GitRepo`), over `file://`,
//! over smart HTTP and HTTPS (`git http-backend`, behind basic authentication) and over `git://`
//! (`git daemon`).

#![allow(clippy::unwrap_used)]

use endstate_git::{Credentials, GitError, Mirrors};
use endstate_testkit::TestCa;
use endstate_testkit::git::{AUTHOR, GitDaemon, GitHttp, GitRepo};

fn mirrors() -> (tempfile::TempDir, Mirrors) {
    let dir = tempfile::tempdir().unwrap();
    let mirrors = Mirrors::new(dir.path().join("git"));
    (dir, mirrors)
}

#[test]
fn fetches_branches_and_reads_the_spec_files_under_paths_at_a_commit() {
    let repo = GitRepo::new();
    repo.write("apps/shop/web.yaml", "a: 1\n");
    repo.write("apps/shop/deep/db.yml", "b: 2\n");
    repo.write("apps/shop/README.md", "not a spec\n");
    repo.write("apps/other/x.yaml", "c: 3\n");
    let first = repo.commit_and_push("first\n\nbody");
    let (_dir, mirrors) = mirrors();

    let branches = mirrors.fetch(&repo.url(), None).unwrap();
    assert_eq!(branches.get("main"), Some(&first));
    assert_eq!(mirrors.branch(&repo.url(), "main").unwrap(), first);

    let files = mirrors.files(&repo.url(), &first, &["apps/shop".into()]).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["apps/shop/deep/db.yml", "apps/shop/web.yaml"]);
    assert_eq!(files[1].content, "a: 1\n");
    // The whole repository, and a path that is absent.
    assert_eq!(mirrors.files(&repo.url(), &first, &[String::new()]).unwrap().len(), 3);
    assert!(mirrors.files(&repo.url(), &first, &["nope".into()]).unwrap().is_empty());

    let commit = mirrors.commit(&repo.url(), &first).unwrap();
    assert_eq!(commit.author, AUTHOR);
    assert_eq!(commit.subject(), "first");
    assert!(commit.committed_ms > 1_700_000_000_000, "{commit:?}");
}

#[test]
fn says_what_changed_between_two_commits_and_when_history_was_rewritten() {
    let repo = GitRepo::new();
    repo.write("apps/shop/web.yaml", "v: 1\n");
    let first = repo.commit_and_push("one");
    repo.write("docs/x.yaml", "d: 1\n");
    let second = repo.commit("two: outside apps/shop");
    repo.write("apps/shop/web.yaml", "v: 2\n");
    let third = repo.commit_and_push("three");
    let (_dir, mirrors) = mirrors();
    mirrors.fetch(&repo.url(), None).unwrap();
    let paths = vec!["apps/shop".to_owned()];

    let (between, ancestor) = mirrors.between(&repo.url(), &first, &third, 10).unwrap();
    let ids: Vec<&str> = between.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [third.as_str(), second.as_str()],
        "newest first, the old head excluded"
    );
    assert!(ancestor);
    // The second commit changes nothing under the paths; the third does.
    let ids_of = |c: &str| mirrors.path_ids(&repo.url(), c, &paths).unwrap();
    assert_eq!(ids_of(&first), ids_of(&second));
    assert_ne!(ids_of(&second), ids_of(&third));

    // A force-push replaces the last two commits.
    repo.reset_hard(&first);
    repo.write("apps/shop/web.yaml", "v: 3\n");
    let rewritten = repo.commit("rewritten");
    repo.push(true);
    let branches = mirrors.fetch(&repo.url(), None).unwrap();
    assert_eq!(branches["main"], rewritten);
    let (_, ancestor) = mirrors.between(&repo.url(), &third, &rewritten, 10).unwrap();
    assert!(!ancestor, "the old head is not an ancestor of the new one");
}

#[test]
fn refuses_files_over_the_limit() {
    let repo = GitRepo::new();
    let big = "x: \"".to_owned() + &"a".repeat(endstate_git::MAX_FILE_BYTES as usize) + "\"\n";
    repo.write("big.yaml", &big);
    let head = repo.commit_and_push("big");
    let (_dir, mirrors) = mirrors();
    mirrors.fetch(&repo.url(), None).unwrap();
    let error = mirrors.files(&repo.url(), &head, &[String::new()]).unwrap_err();
    assert!(matches!(error, GitError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains("big.yaml is"), "{error}");
}

#[test]
fn an_unreachable_repository_is_an_error_without_its_credentials() {
    let (_dir, mirrors) = mirrors();
    // Nothing listens on port 1 of loopback.
    let url = "http://bot:s3cret-in-url@127.0.0.1:1/repo.git";
    let credentials = Credentials::parse("bot:s3cret-in-file").unwrap();
    let error = mirrors.fetch(url, Some(&credentials)).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("127.0.0.1:1"), "names the repository: {text}");
    assert!(!text.contains("s3cret"), "{text}");
    let missing = mirrors.fetch("file:///nonexistent/repo.git", None).unwrap_err();
    assert!(
        matches!(missing, GitError::Fetch { .. } | GitError::BadUrl { .. }),
        "{missing}"
    );
}

#[test]
fn fetches_over_https_only_with_the_right_credentials_and_never_says_them() {
    let repo = GitRepo::new();
    repo.write("apps/web.yaml", "a: 1\n");
    let first = repo.commit_and_push("first");
    let ca = TestCa::new("forge CA");
    let http = GitHttp::serve_tls(repo.forge_dir(), Some(("bot", "s3cret-http-password")), ca.current());
    let url = http.url_of(&repo);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let right = Credentials::parse("bot:s3cret-http-password").unwrap();

    // The forge's CA not trusted: refused before anything is asked.
    let untrusting = Mirrors::new(dir.path().join("untrusting"));
    let error = untrusting.fetch(&url, Some(&right)).unwrap_err();
    assert!(matches!(error, GitError::Fetch { .. }), "{error}");
    assert!(http.requests().is_empty(), "{:?}", http.requests());

    let mirrors = Mirrors::new(dir.path().join("git")).trusting(vec![ca.der.to_vec()]);
    // Without credentials, and with a wrong password: the forge refuses, nothing is fetched.
    let error = mirrors.fetch(&url, None).unwrap_err();
    assert!(matches!(error, GitError::Fetch { .. }), "{error}");
    let wrong = Credentials::parse("bot:wrong-s3cret").unwrap();
    let error = mirrors.fetch(&url, Some(&wrong)).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains(&http.base), "names the repository: {text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(http.refused() >= 2, "{:?}", http.requests());
    assert_eq!(http.fetches(), 0, "{:?}", http.requests());

    let branches = mirrors
        .fetch(&url, Some(&right))
        .unwrap_or_else(|e| panic!("{e:?}: {:?}", http.requests()));
    assert_eq!(branches.get("main"), Some(&first));
    assert_eq!(
        http.fetches(),
        1,
        "one fetch, one reference advertisement: {:?}",
        http.requests()
    );
    let files = mirrors.files(&url, &first, &["apps".into()]).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].content, "a: 1\n");

    // The next commit comes with the next fetch, on top of what the mirror holds.
    repo.write("apps/web.yaml", "a: 2\n");
    let second = repo.commit_and_push("second");
    let branches = mirrors.fetch(&url, Some(&right)).unwrap();
    assert_eq!(branches.get("main"), Some(&second));
    assert_eq!(http.fetches(), 2);
    let (between, ancestor) = mirrors.between(&url, &first, &second, 10).unwrap();
    assert_eq!(between.len(), 1);
    assert!(ancestor);
}

#[test]
fn fetches_over_plain_http_but_never_sends_credentials_in_clear() {
    let repo = GitRepo::new();
    repo.write("apps/web.yaml", "a: 1\n");
    let first = repo.commit_and_push("first");
    // Without authentication: smart HTTP fetches.
    let open = GitHttp::serve(repo.forge_dir(), None);
    let (_dir, mirrors) = mirrors();
    let branches = mirrors.fetch(&open.url_of(&repo), None).unwrap();
    assert_eq!(branches.get("main"), Some(&first));
    assert_eq!(open.fetches(), 1, "{:?}", open.requests());
    // Behind basic authentication: the password is not sent over plain HTTP, and the error says why.
    let guarded = GitHttp::serve(repo.forge_dir(), Some(("bot", "s3cret")));
    let right = Credentials::parse("bot:s3cret").unwrap();
    let error = mirrors.fetch(&guarded.url_of(&repo), Some(&right)).unwrap_err();
    assert!(error.to_string().contains("clear text"), "{error}");
    assert_eq!(guarded.fetches(), 0);
    assert!(
        guarded.requests().iter().all(|r| r.status == 401),
        "{:?}",
        guarded.requests()
    );
}

#[test]
fn fetches_over_the_git_protocol_from_git_daemon() {
    let repo = GitRepo::new();
    repo.write("apps/web.yaml", "a: 1\n");
    let first = repo.commit_and_push("first");
    let daemon = GitDaemon::serve(repo.forge_dir());
    let url = daemon.url_of(&repo);
    let (_dir, mirrors) = mirrors();
    let branches = mirrors.fetch(&url, None).unwrap();
    assert_eq!(branches.get("main"), Some(&first));
    assert_eq!(mirrors.files(&url, &first, &[String::new()]).unwrap().len(), 1);
    // A repository the daemon does not have: an error naming it.
    let missing = format!("{}nope.git", daemon.base);
    let error = mirrors.fetch(&missing, None).unwrap_err();
    assert!(error.to_string().contains("nope.git"), "{error}");
}
