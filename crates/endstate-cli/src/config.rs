//! Where the CLI finds its server and token: flags, then environment, then the config file that
//! `endstate dev` writes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::Global;

/// The client config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    /// The server's address.
    pub(crate) server: Option<String>,
    /// The bearer token.
    pub(crate) token: Option<String>,
    /// The CA (PEM) the server's certificate must come from: pinned by `endstate login` or
    /// written by `endstate dev`. Absent: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_pem: Option<String>,
}

/// Where and how to call the server.
pub(crate) struct Resolved {
    pub(crate) server: String,
    pub(crate) token: String,
    /// The CA to trust alone, if one is pinned.
    pub(crate) ca_pem: Option<String>,
}

/// The config file's path: --config / ENDSTATE_CONFIG, else $XDG_CONFIG_HOME/endstate/config.json,
/// else $HOME/.config/endstate/config.json.
pub(crate) fn config_path(global: &Global) -> Option<PathBuf> {
    if let Some(path) = &global.config {
        return Some(path.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("endstate").join("config.json"))
}

pub(crate) fn read(path: &Path) -> anyhow::Result<Option<ClientConfig>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("the config file {} is not valid", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read the config file {}", path.display())),
    }
}

/// Writes the config file, readable only by its owner (it holds a token).
pub(crate) fn write(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(config)?;
    write_private(path, &text)
}

/// Writes a file with mode 0600.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode when opened; make sure it is private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The server, token and CA to use, or an explanation of how to give them.
pub(crate) fn resolve(global: &Global) -> anyhow::Result<Resolved> {
    let file = match config_path(global) {
        Some(path) => read(&path)?,
        None => None,
    }
    .unwrap_or_default();
    // The file's token and CA belong to the file's server: never used with another one.
    let (file_token, file_ca) = match (&global.server, &file.server) {
        (Some(given), Some(from_file)) if given.trim_end_matches('/') != from_file.trim_end_matches('/') => {
            (None, None)
        }
        _ => (file.token, file.ca_pem),
    };
    let ca_pem = match &global.ca_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("cannot read the CA file {}", path.display()))?)
        }
        None => file_ca,
    };
    let server = global.server.clone().or(file.server).context(
        "no server given: pass --server, set ENDSTATE_SERVER, or run `endstate dev` (it writes the client config)",
    )?;
    let token = global.token.clone().or(file_token).context(
        "no token given: pass --token, set ENDSTATE_TOKEN, or run `endstate dev` (it writes the client config)",
    )?;
    Ok(Resolved { server, token, ca_pem })
}

/// Whether a server is configured at all (for commands that can work without one).
pub(crate) fn has_server(global: &Global) -> bool {
    global.server.is_some()
        || config_path(global)
            .and_then(|path| read(&path).ok().flatten())
            .is_some_and(|c| c.server.is_some())
}
