//! The artifact cache: what an instance runs, fetched once per content into a content-addressed
//! cache, and installed into an immutable directory per version.
//!
//! # Layout (under the data directory given to [`ArtifactCache::new`])
//!
//! ```text
//! cache/sha256/<hex>                                  every artifact, named by its SHA-256, read-only
//! cache/tmp/                                          downloads and copies in progress
//! versions/<system>/<component>/<version>-<sha12>/<file>   an installed version, executable, never rewritten
//! ```
//!
//! # Expected flow
//!
//! [`ArtifactCache::fetch`] puts an [`ArtifactRef`] into the cache and returns the path of its blob;
//! [`ArtifactCache::install`] fetches it and returns the version directory the instance runs from.
//!
//! # Guarantees
//!
//! - A blob appears under `cache/sha256/` only complete and verified: it is written to a temporary
//!   file in `cache/tmp/` (same file system), synced, then renamed. A failure, a timeout or a
//!   cancelled future removes the temporary file.
//! - A URL artifact whose blob is in the cache is not downloaded again. Concurrent fetches of the
//!   same SHA-256 through one [`ArtifactCache`] download it once: the others wait and find it cached.
//! - A download that does not finish within [`FetchLimits::total_timeout`] fails with
//!   [`ArtifactError::Timeout`]; a response larger than [`FetchLimits::max_size`] (announced or
//!   actually sent) is refused with [`ArtifactError::TooLarge`] and not kept.
//! - A local path is **copied**, not hard-linked: a hard link shares the inode, so writing the
//!   source in place later would change the cached, supposedly immutable content. It is addressed by
//!   the SHA-256 of the copy.
//! - A version directory is built under a temporary name and renamed into place; an existing one is
//!   returned as it is, never rewritten. Its artifact is mode `0555`.
//! - Names that become paths (SHA-256, system, component, version, file name) are checked, so
//!   nothing is written outside the data directory.
//!
//! # Caveats
//!
//! - `https` URLs are verified against the platform's roots and the agent's `--trust-ca` files
//!   ([`crate::https`]); a certificate that is not trusted or has expired fails the download as a
//!   request error naming why. Redirects are followed (up to 10).
//! - No proxy is used: the agent reads no environment variables.
//! - A cached blob is trusted: it is not hashed again on a hit, so corruption on disk goes unnoticed.
//! - Artifacts are single files; archives (`.tar.gz`) are not unpacked.
//! - Nothing is ever deleted: no garbage collection of old blobs or versions, and temporary files
//!   left by a crash of the agent stay in `cache/tmp/`.
//! - One agent per data directory: two processes sharing one download twice (still correctly).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// How many hex digits of the SHA-256 name a version directory.
const SHA_PREFIX_LEN: usize = 12;

/// The mode of a cached blob: nobody writes it.
const BLOB_MODE: u32 = 0o444;

/// The mode of an installed artifact: executable, and nobody writes it.
const INSTALLED_MODE: u32 = 0o555;

/// A distinct suffix for every temporary name made by this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where an artifact comes from (the spec's `ArtifactSource`, checked by the agent again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRef {
    /// A file on this host, copied into the cache.
    Path(PathBuf),
    /// An `http` or `https` URL and the SHA-256 its content must have.
    Url {
        /// The URL.
        url: String,
        /// The expected SHA-256, 64 lowercase hex digits.
        sha256: String,
    },
}

/// Where an artifact is installed: `versions/<component>/<version>-<sha12>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDir {
    /// The component, `system/component`; every `/`-separated part becomes a directory.
    pub component: String,
    /// The artifact version.
    pub version: String,
}

/// An installed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The version directory; never modified once it exists.
    pub dir: PathBuf,
    /// The artifact in it, executable, named after its source (`example-service`), or `artifact`
    /// when the source's name is not usable.
    pub artifact: PathBuf,
    /// The SHA-256 of the artifact, lowercase hex.
    pub sha256: String,
}

/// Limits of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The longest a whole download (connect, headers, body, verification) may take.
    pub total_timeout: Duration,
    /// The largest artifact accepted, in bytes.
    pub max_size: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(600),
            max_size: 1 << 30,
        }
    }
}

/// What went wrong fetching or installing an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The expected SHA-256 is not 64 lowercase hex digits.
    #[error("found sha256 `{found}`, expected 64 lowercase hex digits")]
    InvalidSha256 {
        /// What was given.
        found: String,
    },
    /// The URL does not parse.
    #[error("found artifact url `{url}`, which is not a url ({reason})")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A scheme other than `http` and `https`.
    #[error("{url}: found scheme `{scheme}`, expected http or https")]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A name that would become a path is not a single, plain path segment.
    #[error("found {what} `{value}`, expected a plain name (not empty, no `/`, not starting with `.`)")]
    InvalidName {
        /// Which name (`version`, `component`).
        what: &'static str,
        /// The name.
        value: String,
    },
    /// The request failed before an answer (connection refused, bad response, redirect to https, ...).
    #[error("{url}: request failed")]
    Request {
        /// The URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url}: server answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The response is larger than [`FetchLimits::max_size`].
    #[error("{url}: refused a response larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The download did not finish within [`FetchLimits::total_timeout`].
    #[error("{url}: download did not finish within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The downloaded content does not have the expected SHA-256; it was not kept.
    #[error("{url}: found sha256 {found}, expected {expected}")]
    ShaMismatch {
        /// The URL.
        url: String,
        /// The SHA-256 declared.
        expected: String,
        /// The SHA-256 of what was downloaded.
        found: String,
    },
    /// A version directory exists for this version and SHA-256 but lacks the artifact's file name.
    #[error("version directory {} exists without {file}, and is not rewritten", dir.display())]
    InstallConflict {
        /// The directory.
        dir: PathBuf,
        /// The file name expected in it.
        file: String,
    },
    /// A file system operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done (`read`, `create`, `rename into place`, ...).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// A content-addressed artifact cache under a data directory.
#[derive(Debug)]
pub struct ArtifactCache {
    root: PathBuf,
    limits: FetchLimits,
    client: reqwest::Client,
    /// One lock per SHA-256 being downloaded, so concurrent fetches download it once. An entry is
    /// removed after the blob is in place (or the download failed), so the map stays small.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A temporary file or directory, removed when dropped unless kept.
struct TempPath {
    path: PathBuf,
    dir: bool,
    keep: bool,
}

// === impl ArtifactCache ===

impl ArtifactCache {
    /// A cache under `dir` with the default [`FetchLimits`]. Directories are created when needed.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Request`] if the HTTP client cannot be built.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        Self::with_limits(dir, FetchLimits::default())
    }

    /// A cache under `dir` with the given limits.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Request`] if the HTTP client cannot be built.
    pub fn with_limits(dir: impl Into<PathBuf>, limits: FetchLimits) -> Result<Self, ArtifactError> {
        Self::with_trust(dir, limits, &[])
    }

    /// A cache under `dir` with the given limits whose `https` downloads trust the platform's
    /// roots and `trusted` (see [`crate::https`]).
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Request`] if the HTTP client cannot be built.
    pub fn with_trust(
        dir: impl Into<PathBuf>,
        limits: FetchLimits,
        trusted: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<Self, ArtifactError> {
        let client = crate::https::client(trusted)
            .build()
            .map_err(|source| ArtifactError::Request {
                url: String::new(),
                source,
            })?;
        Ok(Self {
            root: dir.into(),
            limits,
            client,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The path of the blob with this SHA-256 (lowercase hex), whether or not it is cached.
    #[must_use]
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// Puts the artifact into the cache (unless it is there) and returns the path of its blob.
    ///
    /// # Errors
    ///
    /// See [`ArtifactError`]: a bad SHA-256 or URL, a failed download, a mismatching SHA-256, a
    /// timeout, a response too large, or a file system error.
    pub async fn fetch(&self, artifact: &ArtifactRef) -> Result<PathBuf, ArtifactError> {
        match artifact {
            ArtifactRef::Path(source) => self.import(source.clone()).await,
            ArtifactRef::Url { url, sha256 } => self.download(url, sha256).await,
        }
    }

    /// Fetches the artifact and installs it into its immutable version directory, or returns the
    /// directory that already exists for this version and content.
    ///
    /// # Errors
    ///
    /// Those of [`fetch`](Self::fetch); [`ArtifactError::InvalidName`] for a component or version
    /// that is not a plain name; [`ArtifactError::InstallConflict`] when the directory exists
    /// without the artifact's file.
    pub async fn install(&self, artifact: &ArtifactRef, version: &VersionDir) -> Result<Installed, ArtifactError> {
        let mut parent = self.root.join("versions");
        for part in version.component.split('/') {
            check_name("component", part)?;
            parent.push(part);
        }
        check_name("version", &version.version)?;
        let blob = self.fetch(artifact).await?;
        let sha256 = blob
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        let prefix = sha256.get(..SHA_PREFIX_LEN).unwrap_or(&sha256);
        let dir = parent.join(format!("{}-{prefix}", version.version));
        let file = artifact_file_name(artifact);
        let installed = Installed {
            artifact: dir.join(&file),
            dir: dir.clone(),
            sha256,
        };
        let shown = dir.clone();
        blocking(&shown, move || install_blocking(&blob, &parent, &dir, &file)).await?;
        Ok(installed)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("cache").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("cache").join("tmp")
    }

    /// Copies a local file into the cache, addressed by its content.
    async fn import(&self, source: PathBuf) -> Result<PathBuf, ArtifactError> {
        let blobs = self.blobs_dir();
        let tmp = self.tmp_dir();
        let shown = source.clone();
        blocking(&shown, move || import_blocking(&source, &blobs, &tmp)).await
    }

    /// Downloads a URL into the cache, unless its SHA-256 is there already.
    async fn download(&self, url: &str, sha256: &str) -> Result<PathBuf, ArtifactError> {
        if !is_sha256_hex(sha256) {
            return Err(ArtifactError::InvalidSha256 {
                found: sha256.to_owned(),
            });
        }
        let parsed = reqwest::Url::parse(url).map_err(|error| ArtifactError::InvalidUrl {
            url: url.to_owned(),
            reason: error.to_string(),
        })?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ArtifactError::UnsupportedScheme {
                    url: url.to_owned(),
                    scheme: other.to_owned(),
                });
            }
        }
        let blob = self.blob_path(sha256);
        if is_file(&blob).await {
            return Ok(blob);
        }
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(in_flight.entry(sha256.to_owned()).or_default())
        };
        let _guard = lock.lock().await;
        // Another fetch may have put it there while this one waited.
        let outcome = if is_file(&blob).await {
            Ok(blob)
        } else {
            let after = self.limits.total_timeout;
            match tokio::time::timeout(after, self.download_into_cache(parsed, url, sha256, blob)).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(ArtifactError::Timeout {
                    url: url.to_owned(),
                    after,
                }),
            }
        };
        // Still holding the lock: later fetches find the blob, or try again after a failure.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sha256);
        outcome
    }

    async fn download_into_cache(
        &self,
        parsed: reqwest::Url,
        url: &str,
        sha256: &str,
        blob: PathBuf,
    ) -> Result<PathBuf, ArtifactError> {
        let request_failed = |source| ArtifactError::Request {
            url: url.to_owned(),
            source,
        };
        let too_large = || ArtifactError::TooLarge {
            url: url.to_owned(),
            limit: self.limits.max_size,
        };
        let mut response = self.client.get(parsed).send().await.map_err(request_failed)?;
        if !response.status().is_success() {
            return Err(ArtifactError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        if response.content_length().is_some_and(|len| len > self.limits.max_size) {
            return Err(too_large());
        }
        let tmp_dir = self.tmp_dir();
        create_dir_all_async(&tmp_dir).await?;
        let (mut file, temp) = create_temp_file(&tmp_dir).await?;
        let write_failed = |path: &Path, source| ArtifactError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        };
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
            size = size.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
            if size > self.limits.max_size {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|source| write_failed(&temp.path, source))?;
        }
        file.sync_all()
            .await
            .map_err(|source| write_failed(&temp.path, source))?;
        drop(file);
        let found = hex(&hasher.finalize());
        if found != sha256 {
            return Err(ArtifactError::ShaMismatch {
                url: url.to_owned(),
                expected: sha256.to_owned(),
                found,
            });
        }
        let shown = temp.path.clone();
        let blobs = self.blobs_dir();
        let target = blob.clone();
        blocking(&shown, move || {
            publish_blob(&temp.path, &blobs, &target)?;
            keep(temp);
            Ok(())
        })
        .await?;
        Ok(blob)
    }
}

// === impl TempPath ===

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = if self.dir {
            fs::remove_dir_all(&self.path)
        } else {
            fs::remove_file(&self.path)
        };
    }
}

// === file work (blocking, run through `blocking`) ===

/// Runs file work on the blocking pool; `path` names it if the task is lost.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| {
        Err(ArtifactError::Io {
            action: "finish file work on",
            path: path.to_owned(),
            source: io::Error::other(error),
        })
    })
}

fn import_blocking(source: &Path, blobs: &Path, tmp: &Path) -> Result<PathBuf, ArtifactError> {
    let read_failed = |source_error| ArtifactError::Io {
        action: "read",
        path: source.to_owned(),
        source: source_error,
    };
    // Hash first, so a cached artifact is not copied again.
    let mut input = fs::File::open(source).map_err(read_failed)?;
    let sha256 = hash_copy(&mut input, None).map_err(read_failed)?;
    let blob = blobs.join(&sha256);
    if blob.is_file() {
        return Ok(blob);
    }
    create_dir_all(tmp)?;
    let (mut output, temp) = create_temp(tmp, false, open_new)?;
    let mut input = fs::File::open(source).map_err(read_failed)?;
    // The copy's own hash addresses it, should the source have changed since the first pass.
    let sha256 = hash_copy(&mut input, Some(&mut output)).map_err(|error| ArtifactError::Io {
        action: "copy into the cache",
        path: source.to_owned(),
        source: error,
    })?;
    output.sync_all().map_err(|error| ArtifactError::Io {
        action: "write",
        path: temp.path.clone(),
        source: error,
    })?;
    drop(output);
    let blob = blobs.join(&sha256);
    publish_blob(&temp.path, blobs, &blob)?;
    keep(temp);
    Ok(blob)
}

fn keep(mut temp: TempPath) {
    temp.keep = true;
}

/// Reads `input` to its end, copying it to `output` if given; returns its SHA-256.
fn hash_copy(input: &mut impl Read, mut output: Option<&mut fs::File>) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        if let Some(output) = output.as_mut() {
            output.write_all(chunk)?;
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Makes a complete temporary file read-only and renames it to `blob`.
fn publish_blob(temp: &Path, blobs: &Path, blob: &Path) -> Result<(), ArtifactError> {
    fs::set_permissions(temp, fs::Permissions::from_mode(BLOB_MODE)).map_err(|source| ArtifactError::Io {
        action: "make read-only",
        path: temp.to_owned(),
        source,
    })?;
    create_dir_all(blobs)?;
    // Same content, same name: replacing a blob another fetch just published changes nothing.
    fs::rename(temp, blob).map_err(|source| ArtifactError::Io {
        action: "rename into place",
        path: blob.to_owned(),
        source,
    })
}

fn install_blocking(blob: &Path, parent: &Path, dir: &Path, file: &str) -> Result<(), ArtifactError> {
    if dir.is_dir() {
        return existing_install(dir, file);
    }
    create_dir_all(parent)?;
    let ((), staging) = create_temp(parent, true, |path| fs::create_dir(path))?;
    let staged = staging.path.join(file);
    fs::copy(blob, &staged).map_err(io_failed("copy the artifact to", &staged))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(INSTALLED_MODE))
        .map_err(io_failed("make executable", &staged))?;
    fs::File::open(&staged)
        .and_then(|copy| copy.sync_all())
        .map_err(io_failed("sync", &staged))?;
    match fs::rename(&staging.path, dir) {
        Ok(()) => {
            keep(staging);
            Ok(())
        }
        // Another install of the same version won the race: keep its directory, drop ours.
        Err(error) if dir.is_dir() => {
            tracing::debug!(dir = %dir.display(), %error, "Version directory appeared meanwhile.");
            existing_install(dir, file)
        }
        Err(error) => Err(io_failed("rename into place", dir)(error)),
    }
}

fn existing_install(dir: &Path, file: &str) -> Result<(), ArtifactError> {
    if dir.join(file).is_file() {
        Ok(())
    } else {
        Err(ArtifactError::InstallConflict {
            dir: dir.to_owned(),
            file: file.to_owned(),
        })
    }
}

fn create_dir_all(dir: &Path) -> Result<(), ArtifactError> {
    fs::create_dir_all(dir).map_err(|source| ArtifactError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

async fn create_dir_all_async(dir: &Path) -> Result<(), ArtifactError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| ArtifactError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })
}

/// A new, unique temporary name in `dir`: `.tmp-<pid>-<n>`.
fn temp_name(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}", std::process::id()))
}

/// A mapper of an IO error to [`ArtifactError::Io`].
fn io_failed(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArtifactError {
    let path = path.to_owned();
    move |source| ArtifactError::Io { action, path, source }
}

fn open_new(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Creates a new temporary file or directory in `dir` with `create`, which must fail with
/// `AlreadyExists` when the name is taken.
fn create_temp<T>(
    dir: &Path,
    is_dir: bool,
    create: impl Fn(&Path) -> io::Result<T>,
) -> Result<(T, TempPath), ArtifactError> {
    loop {
        let path = temp_name(dir);
        match create(&path) {
            // Left behind by an earlier agent with the same pid.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(ArtifactError::Io {
                    action: "create",
                    path,
                    source,
                });
            }
            Ok(file) => {
                let temp = TempPath {
                    path,
                    dir: is_dir,
                    keep: false,
                };
                return Ok((file, temp));
            }
        }
    }
}

/// [`create_temp`] for a file, with an async handle.
async fn create_temp_file(dir: &Path) -> Result<(tokio::fs::File, TempPath), ArtifactError> {
    let owned = dir.to_owned();
    let (file, temp) = blocking(dir, move || create_temp(&owned, false, open_new)).await?;
    Ok((tokio::fs::File::from_std(file), temp))
}

/// Whether `path` is a regular file.
async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok_and(|meta| meta.is_file())
}

/// The name the artifact gets in its version directory: its source's last path segment.
fn artifact_file_name(artifact: &ArtifactRef) -> String {
    let name = match artifact {
        ArtifactRef::Path(path) => path.file_name().and_then(|name| name.to_str()).map(str::to_owned),
        ArtifactRef::Url { url, .. } => reqwest::Url::parse(url).ok().and_then(|url| {
            url.path_segments()
                .and_then(|mut segments| segments.next_back().map(str::to_owned))
        }),
    };
    name.filter(|name| check_name("file name", name).is_ok())
        .unwrap_or_else(|| "artifact".to_owned())
}

/// A name that becomes one path segment: not empty, no `/` or NUL, not starting with `.` (which
/// also excludes `.`, `..` and the temporary names).
fn check_name(what: &'static str, value: &str) -> Result<(), ArtifactError> {
    let plain = !value.is_empty() && !value.starts_with('.') && !value.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(ArtifactError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["shop", "2.4.1", "v1_beta-2", "example-service"] {
            assert!(check_name("version", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".tmp-1-2", "a/b", "a\0b"] {
            assert!(check_name("version", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_hex() {
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_sha256_hex(&hex(&Sha256::digest(b"x"))));
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            assert!(!is_sha256_hex(bad), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        let url = |url: &str| ArtifactRef::Url {
            url: url.to_owned(),
            sha256: String::new(),
        };
        for (artifact, expect) in [
            (
                ArtifactRef::Path(PathBuf::from("/opt/a/example-service")),
                "example-service",
            ),
            (url("http://h/dl/shop-api-2.4.1"), "shop-api-2.4.1"),
            (url("http://h/dl/"), "artifact"),
            (url("http://h"), "artifact"),
            (url("http://h/dl/..%2f"), "artifact"),
            (url("http://h/.hidden"), "artifact"),
        ] {
            assert_eq!(artifact_file_name(&artifact), expect, "{artifact:?}");
        }
    }
}
