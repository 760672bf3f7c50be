//! Reading desired state from Git, with [gix](https://docs.rs/gix): one bare mirror per
//! repository under a directory the caller owns, fetched with every branch
//! (`+refs/heads/*:refs/heads/*`, as `git clone --mirror` does); the commit a branch points at,
//! its metadata, the commits between two, and the spec files under given paths at a commit,
//! read from the object database without a worktree.
//!
//! Everything here blocks (network and disk): callers run it on a blocking thread. A URL's
//! credentials never appear in an error: errors name the repository by its
//! [redacted](redact) URL.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The largest spec file read from a repository, as for `endstate apply`.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The most spec files read from a source's paths at one commit.
pub const MAX_FILES: usize = 20_000;

/// Why a Git operation failed; every message names the repository without credentials.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL cannot be used.
    #[error("{url} is not a Git URL gix can fetch: {reason}")]
    BadUrl { url: String, reason: String },
    /// The mirror could not be created, opened or fetched into.
    #[error("fetching {url} failed: {reason}")]
    Fetch { url: String, reason: String },
    /// The branch does not exist in the repository.
    #[error("{url} has no branch {branch} (its branches: {known})")]
    NoSuchBranch { url: String, branch: String, known: String },
    /// An object could not be read.
    #[error("reading {what} of {url} failed: {reason}")]
    Read { url: String, what: String, reason: String },
    /// A file or the number of files is over the limits.
    #[error("{url} at {commit}: {reason}")]
    TooLarge {
        url: String,
        commit: String,
        reason: String,
    },
}

/// A commit, as a change records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The full hexadecimal id.
    pub id: String,
    /// `Name <email>`.
    pub author: String,
    /// `Name <email>`.
    pub committer: String,
    /// The whole message.
    pub message: String,
    /// When it was committed (Unix time, ms).
    pub committed_ms: i64,
}

impl CommitInfo {
    /// The first line of the message.
    pub fn subject(&self) -> &str {
        self.message.lines().next().unwrap_or_default()
    }
}

/// A spec file read at a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// The path in the repository (`/`-separated).
    pub path: String,
    /// Its text.
    pub content: String,
}

/// `user:password` for HTTP(S) basic authentication, read by the caller from a file.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Parses a credentials file: one line `user:password` (a trailing newline is ignored).
    pub fn parse(text: &str) -> Option<Credentials> {
        let line = text.lines().next()?.trim_end_matches('\r');
        let (username, password) = line.split_once(':')?;
        (!username.is_empty() && !password.is_empty()).then(|| Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// A URL without its user information: `https://user:secret@host/x` is `https://***@host/x`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The bare mirrors of the repositories a server reads, one directory each.
#[derive(Clone, Debug)]
pub struct Mirrors {
    root: PathBuf,
    /// CA certificates (DER) trusted for HTTPS besides the system's roots.
    trusted: Vec<Vec<u8>>,
}

impl Mirrors {
    /// Mirrors kept under `root` (created when first needed).
    pub fn new(root: impl Into<PathBuf>) -> Mirrors {
        Mirrors {
            root: root.into(),
            trusted: Vec::new(),
        }
    }

    /// The same, trusting these CA certificates (DER) for HTTPS besides the system's roots (a
    /// forge behind a private CA).
    #[must_use]
    pub fn trusting(mut self, trusted: Vec<Vec<u8>>) -> Mirrors {
        self.trusted = trusted;
        self
    }

    /// The directory of `url`'s mirror: named by a digest of the URL without credentials.
    pub fn dir_of(&self, url: &str) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(redact(url).as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.root.join(format!("{hex}.git"))
    }

    /// Fetches every branch of `url` into its mirror (created on first use) and returns each
    /// branch's commit. A branch that vanished upstream is removed from the mirror.
    pub fn fetch(&self, url: &str, credentials: Option<&Credentials>) -> Result<BTreeMap<String, String>, GitError> {
        let shown = redact(url);
        let dir = self.dir_of(url);
        let fetch_err = |reason: String| GitError::Fetch {
            url: shown.clone(),
            reason: scrub(&reason, credentials),
        };
        let repo = if dir.join("HEAD").is_file() {
            gix::open(&dir).map_err(|e| fetch_err(format!("opening the mirror: {e}")))?
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| fetch_err(format!("creating {}: {e}", dir.display())))?;
            gix::init_bare(&dir).map_err(|e| fetch_err(format!("creating the mirror: {e}")))?
        };
        let remote = repo
            .remote_at(url)
            .map_err(|e| GitError::BadUrl {
                url: shown.clone(),
                reason: scrub(&e.to_string(), credentials),
            })?
            .with_refspecs(["+refs/heads/*:refs/heads/*"], gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(e.to_string()))?;
        let connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(chain(&e)))?;
        // Only the credentials given: never the user's helpers or a prompt. gix sends them only
        // over HTTPS.
        let given = credentials.cloned();
        let mut connection = connection.with_credentials(move |action| answer(given.as_ref(), action));
        if url.starts_with("https://") && !self.trusted.is_empty() {
            let options = repo.transport_options(url, None).map_err(|e| fetch_err(chain(&e)))?;
            if let Some(mut options) = options {
                use gix::protocol::transport::client::blocking_io::http;
                if let Some(http_options) = options.downcast_mut::<http::Options>() {
                    let trusted = self.trusted.clone();
                    let configure: Box<http::reqwest::ConfigureClientFn> = Box::new(move |builder| {
                        Ok(builder.tls_certs_merge(
                            trusted
                                .iter()
                                .filter_map(|der| reqwest::Certificate::from_der(der).ok()),
                        ))
                    });
                    http_options.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(http::reqwest::Options {
                        configure_client: Some(configure),
                        configure_request: None,
                    })));
                }
                connection = connection.with_transport_options(options);
            }
        }
        let interrupt = AtomicBool::new(false);
        let outcome = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fetch_err(chain(&e)))?
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| fetch_err(chain(&e)))?;
        let mut branches = BTreeMap::new();
        for reference in &outcome.ref_map.remote_refs {
            let (name, target, _) = reference.unpack();
            if let Some(branch) = name.to_string().strip_prefix("refs/heads/")
                && let Some(target) = target
            {
                branches.insert(branch.to_owned(), target.to_string());
            }
        }
        // `+refs/heads/*` updates and creates branches; a branch deleted upstream is deleted here.
        let local = repo
            .references()
            .and_then(|r| {
                r.prefixed("refs/heads/")
                    .map(|i| i.filter_map(Result::ok).collect::<Vec<_>>())
            })
            .map_err(|e| fetch_err(format!("listing the mirror's branches: {e}")))?;
        for reference in local {
            let name = reference.name().as_bstr().to_string();
            if let Some(branch) = name.strip_prefix("refs/heads/")
                && !branches.contains_key(branch)
            {
                let _ = reference.delete();
            }
        }
        Ok(branches)
    }

    /// The commit `branch` points at in the mirror, as of the last fetch.
    pub fn branch(&self, url: &str, branch: &str) -> Result<String, GitError> {
        let repo = self.open(url)?;
        let name = format!("refs/heads/{branch}");
        match repo.try_find_reference(name.as_str()) {
            Ok(Some(mut reference)) => reference
                .peel_to_id()
                .map(|id| id.to_string())
                .map_err(|e| GitError::Read {
                    url: redact(url),
                    what: format!("branch {branch}"),
                    reason: e.to_string(),
                }),
            Ok(None) => Err(GitError::NoSuchBranch {
                url: redact(url),
                branch: branch.to_owned(),
                known: self.branches(url).unwrap_or_default().join(", "),
            }),
            Err(e) => Err(GitError::Read {
                url: redact(url),
                what: format!("branch {branch}"),
                reason: e.to_string(),
            }),
        }
    }

    fn branches(&self, url: &str) -> Result<Vec<String>, GitError> {
        let repo = self.open(url)?;
        let names = repo
            .references()
            .and_then(|r| {
                r.prefixed("refs/heads/").map(|i| {
                    i.filter_map(Result::ok)
                        .filter_map(|r| {
                            r.name()
                                .as_bstr()
                                .to_string()
                                .strip_prefix("refs/heads/")
                                .map(str::to_owned)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .map_err(read_err(url, "the branches"))?;
        Ok(names)
    }

    /// A commit's metadata.
    pub fn commit(&self, url: &str, id: &str) -> Result<CommitInfo, GitError> {
        let repo = self.open(url)?;
        commit_info(&repo, url, oid(url, id)?)
    }

    /// The commits reachable from `to` and not from `from`, newest first, at most `limit`;
    /// and whether `from` is an ancestor of `to` (false after a force-push rewrote history).
    pub fn between(&self, url: &str, from: &str, to: &str, limit: usize) -> Result<(Vec<CommitInfo>, bool), GitError> {
        let repo = self.open(url)?;
        let (from, to) = (oid(url, from)?, oid(url, to)?);
        let from_known = repo.find_commit(from).is_ok();
        let mut walk = repo.rev_walk([to]);
        if from_known {
            walk = walk.with_hidden([from]);
        }
        let mut commits = Vec::new();
        for info in walk.all().map_err(read_err(url, "the history"))? {
            let info = info.map_err(read_err(url, "the history"))?;
            if commits.len() >= limit {
                break;
            }
            commits.push(commit_info(&repo, url, info.id)?);
        }
        let ancestor = from_known
            && repo
                .merge_base(from, to)
                .map(|base| base.is_some_and(|base| base.detach() == from))
                .unwrap_or(false);
        Ok((commits, ancestor))
    }

    /// The tree ids of `paths` at `commit` (an absent path is `None`): two commits declare the
    /// same files under the paths exactly when their ids are equal.
    pub fn path_ids(&self, url: &str, commit: &str, paths: &[String]) -> Result<Vec<Option<String>>, GitError> {
        let repo = self.open(url)?;
        let tree = tree_of(&repo, url, commit)?;
        paths
            .iter()
            .map(|path| {
                let path = normalise(path);
                if path.is_empty() {
                    return Ok(Some(tree.id.to_string()));
                }
                let entry = tree
                    .lookup_entry_by_path(&path)
                    .map_err(read_err(url, &format!("{path} at {commit}")))?;
                Ok(entry.map(|e| e.object_id().to_string()))
            })
            .collect()
    }

    /// The spec files (`*.yaml`, `*.yml`) under `paths` at `commit`, sorted by path. A path
    /// that is absent yields nothing; a file over [`MAX_FILE_BYTES`] or more than
    /// [`MAX_FILES`] files is an error.
    pub fn files(&self, url: &str, commit: &str, paths: &[String]) -> Result<Vec<File>, GitError> {
        let repo = self.open(url)?;
        let tree = tree_of(&repo, url, commit)?;
        let mut found: BTreeMap<String, gix::ObjectId> = BTreeMap::new();
        for path in paths {
            let path = normalise(path);
            let (prefix, subtree) = if path.is_empty() {
                (String::new(), tree.clone())
            } else {
                let Some(entry) = tree
                    .lookup_entry_by_path(&path)
                    .map_err(read_err(url, &format!("{path} at {commit}")))?
                else {
                    continue;
                };
                let object = entry.object().map_err(read_err(url, &path))?;
                if entry.mode().is_blob() {
                    if is_spec(&path) {
                        found.insert(path.clone(), object.id);
                    }
                    continue;
                }
                (format!("{path}/"), object.into_tree())
            };
            let mut recorder = gix::traverse::tree::Recorder::default();
            subtree
                .traverse()
                .breadthfirst(&mut recorder)
                .map_err(read_err(url, &format!("the tree of {path} at {commit}")))?;
            for entry in recorder.records {
                let file = format!("{prefix}{}", entry.filepath);
                if entry.mode.is_blob() && is_spec(&file) {
                    found.insert(file, entry.oid);
                }
            }
        }
        if found.len() > MAX_FILES {
            return Err(GitError::TooLarge {
                url: redact(url),
                commit: commit.to_owned(),
                reason: format!(
                    "{} spec files under the paths, over the limit of {MAX_FILES}",
                    found.len()
                ),
            });
        }
        let mut files = Vec::with_capacity(found.len());
        for (path, id) in found {
            let header = repo.find_header(id).map_err(read_err(url, &path))?;
            if header.size() > MAX_FILE_BYTES {
                return Err(GitError::TooLarge {
                    url: redact(url),
                    commit: commit.to_owned(),
                    reason: format!("{path} is {} bytes, over the limit of {MAX_FILE_BYTES}", header.size()),
                });
            }
            let blob = repo.find_blob(id).map_err(read_err(url, &path))?;
            let content = String::from_utf8(blob.data.clone()).map_err(|_| GitError::Read {
                url: redact(url),
                what: path.clone(),
                reason: "not UTF-8 text".into(),
            })?;
            files.push(File { path, content });
        }
        Ok(files)
    }

    fn open(&self, url: &str) -> Result<gix::Repository, GitError> {
        gix::open(self.dir_of(url)).map_err(|e| GitError::Fetch {
            url: redact(url),
            reason: format!("the repository was never fetched: {e}"),
        })
    }
}

fn answer(
    credentials: Option<&Credentials>,
    action: gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>> {
    use gix::credentials::helper::{Action, NextAction};
    match (action, credentials) {
        (Action::Get(context), Some(credentials)) => Ok(Some(gix::credentials::protocol::Outcome {
            identity: gix::sec::identity::Account {
                username: credentials.username.clone(),
                password: credentials.password.clone(),
                oauth_refresh_token: None,
            },
            next: NextAction::from(context),
        })),
        _ => Ok(None),
    }
}

/// An error with its causes, `: `-separated (gix's top-level messages alone say little, such as
/// "Transport handshake failed").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Removes a password from a message, wherever a library put it.
fn scrub(message: &str, credentials: Option<&Credentials>) -> String {
    match credentials {
        Some(c) if !c.password.is_empty() => message.replace(&c.password, "***"),
        _ => message.to_owned(),
    }
}

fn read_err<E: Display>(url: &str, what: &str) -> impl FnOnce(E) -> GitError {
    let (url, what) = (redact(url), what.to_owned());
    move |e| GitError::Read {
        url,
        what,
        reason: e.to_string(),
    }
}

fn oid(url: &str, id: &str) -> Result<gix::ObjectId, GitError> {
    gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| GitError::Read {
        url: redact(url),
        what: format!("commit {id}"),
        reason: e.to_string(),
    })
}

fn tree_of<'r>(repo: &'r gix::Repository, url: &str, commit: &str) -> Result<gix::Tree<'r>, GitError> {
    let id = oid(url, commit)?;
    repo.find_commit(id)
        .and_then(|c| c.tree())
        .map_err(read_err(url, &format!("the tree of {commit}")))
}

fn commit_info(repo: &gix::Repository, url: &str, id: gix::ObjectId) -> Result<CommitInfo, GitError> {
    let what = format!("commit {id}");
    let commit = repo.find_commit(id).map_err(read_err(url, &what))?;
    let signature = |s: gix::actor::SignatureRef<'_>| format!("{} <{}>", s.name, s.email);
    let author = commit.author().map_err(read_err(url, &what))?;
    let committer = commit.committer().map_err(read_err(url, &what))?;
    let committed_ms = committer.time().map(|t| t.seconds * 1000).unwrap_or_default();
    Ok(CommitInfo {
        id: id.to_string(),
        author: signature(author),
        committer: signature(committer),
        message: commit.message_raw_sloppy().to_string(),
        committed_ms,
    })
}

fn normalise(path: &str) -> String {
    path.trim_matches('/').trim_start_matches("./").to_owned()
}

fn is_spec(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Whether `path` (a directory in the repository given to a source) is one a source may read:
/// relative, without `..`.
pub fn valid_path(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|part| part == "..") && !path.contains('\0')
}

/// Where mirrors live by default under a server's data directory.
pub fn mirrors_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("git")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_information() {
        assert_eq!(
            redact("https://u:s3cret@forge.example/a/b.git"),
            "https://***@forge.example/a/b.git"
        );
        assert_eq!(redact("https://forge.example/a@b.git"), "https://forge.example/a@b.git");
        assert_eq!(redact("file:///srv/repo.git"), "file:///srv/repo.git");
    }

    #[test]
    fn reads_credentials_files() {
        let c = Credentials::parse("bot:tok:en\n").expect("parsed");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bot", "tok:en"));
        assert!(Credentials::parse("no-colon").is_none());
        assert!(Credentials::parse(":empty-user").is_none());
        assert!(!format!("{c:?}").contains("tok:en"));
    }

    #[test]
    fn refuses_paths_outside_the_repository() {
        assert!(valid_path("apps/shop"));
        assert!(valid_path(""));
        assert!(!valid_path("/etc"));
        assert!(!valid_path("apps/../../etc"));
    }
}
