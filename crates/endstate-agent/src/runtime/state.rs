//! The runtime's files under `<data_dir>/runtime/`: the last accepted generation, the desired set
//! it came with, and the live process groups. Blocking IO; callers run it on the blocking pool.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use endstate_agent_proto::{DesiredInstances, FromServer, decode_from_server};
use endstate_types::Generation;
use serde_json::{Value, json};
use tracing::warn;

use super::RuntimeError;

/// The last accepted generation, in decimal, with a newline.
pub(super) const GENERATION_FILE: &str = "generation";
/// The last accepted desired set, as the protocol frame it came in.
pub(super) const DESIRED_FILE: &str = "desired.json";
/// The process groups of the instances running now.
pub(super) const GROUPS_FILE: &str = "groups.json";

/// One live process group, as recorded in [`GROUPS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupRecord {
    /// The instance it runs (for logs).
    pub(super) instance: String,
    /// When its leader started, in clock ticks after boot, so a reused id is not signalled.
    pub(super) start_ticks: Option<u64>,
}

/// What [`GROUPS_FILE`] held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Groups {
    /// The boot the groups were recorded in (empty when unknown).
    pub(super) boot_id: String,
    /// By process group id.
    pub(super) groups: BTreeMap<u32, GroupRecord>,
}

fn io_failed(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = path.to_owned();
    move |source| RuntimeError::Io { action, path, source }
}

/// Creates `dir` (and its parents).
pub(super) fn create_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::create_dir_all(dir).map_err(io_failed("create directory", dir))
}

/// Replaces `dir/name` with `bytes`: written to a temporary file, synced, renamed over it.
/// The directory is synced by [`sync_dir`], once per batch of files.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&temp).map_err(io_failed("create", &temp))?;
    file.write_all(bytes).map_err(io_failed("write", &temp))?;
    file.sync_all().map_err(io_failed("sync", &temp))?;
    drop(file);
    fs::rename(&temp, &target).map_err(io_failed("rename into place", &target))
}

/// Syncs a directory, so the renames in it survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), RuntimeError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_failed("sync directory", dir))
}

/// Persists an accepted desired set: first the frame, then the generation, then the directory.
/// The generation file is the authority: a crash between the two leaves the older generation,
/// which the server sends again.
pub(super) fn save_desired(dir: &Path, frame: &[u8], generation: Generation) -> Result<(), RuntimeError> {
    create_dir(dir)?;
    replace(dir, DESIRED_FILE, frame)?;
    replace(dir, GENERATION_FILE, format!("{}\n", generation.0).as_bytes())?;
    sync_dir(dir)
}

/// The last accepted generation, if any.
///
/// # Errors
///
/// [`RuntimeError::Corrupt`] when the file is not a number: guessing could roll the agent back.
pub(super) fn load_generation(dir: &Path) -> Result<Option<Generation>, RuntimeError> {
    let path = dir.join(GENERATION_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_failed("read", &path)(error)),
    };
    let number = text.trim().parse::<u64>().map_err(|_| RuntimeError::Corrupt {
        path: path.clone(),
        reason: format!(
            "expected a generation number, found {:?}",
            text.chars().take(64).collect::<String>()
        ),
    })?;
    Ok(Some(Generation(number)))
}

/// The desired set saved with `generation`, if it is there, readable and of that generation.
/// Anything else is logged and yields nothing: the server sends the set again when it is newer,
/// and the caveat is documented.
pub(super) fn load_desired(dir: &Path, generation: Generation) -> Option<DesiredInstances> {
    let path = dir.join(DESIRED_FILE);
    let frame = match fs::read(&path) {
        Ok(frame) => frame,
        Err(error) => {
            warn!(path = %path.display(), %error, "No saved desired instances to restart from.");
            return None;
        }
    };
    match decode_from_server(&frame) {
        Ok(FromServer::DesiredInstances(desired)) if desired.generation == generation => Some(desired),
        Ok(FromServer::DesiredInstances(desired)) => {
            warn!(path = %path.display(), saved = %desired.generation, %generation, "Saved desired instances are of another generation; not restarting them.");
            None
        }
        Ok(other) => {
            warn!(path = %path.display(), found = other.type_name(), "Saved desired instances hold another message; not restarting them.");
            None
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "Saved desired instances do not decode; not restarting them.");
            None
        }
    }
}

/// Replaces [`GROUPS_FILE`] with `groups` (removes it when there are none).
pub(super) fn write_groups(dir: &Path, groups: &Groups) -> Result<(), RuntimeError> {
    if groups.groups.is_empty() {
        return remove_groups(dir);
    }
    let list: Vec<Value> = groups
        .groups
        .iter()
        .map(|(pgid, record)| {
            json!({
                "instance": record.instance,
                "pgid": pgid,
                "start_ticks": record.start_ticks,
            })
        })
        .collect();
    let document = json!({ "boot_id": groups.boot_id, "groups": list });
    let mut bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
    bytes.push(b'\n');
    create_dir(dir)?;
    replace(dir, GROUPS_FILE, &bytes)?;
    sync_dir(dir)
}

/// Reads [`GROUPS_FILE`]; a missing file is no groups, an unreadable or malformed one is logged
/// and read as far as it makes sense (an entry without a usable `pgid` is skipped).
pub(super) fn read_groups(dir: &Path) -> Groups {
    let path = dir.join(GROUPS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Groups::default(),
        Err(error) => {
            warn!(path = %path.display(), %error, "Could not read the process groups left by the previous agent.");
            return Groups::default();
        }
    };
    let document: Value = match serde_json::from_slice(&bytes) {
        Ok(document) => document,
        Err(error) => {
            warn!(path = %path.display(), %error, "The process groups left by the previous agent do not parse.");
            return Groups::default();
        }
    };
    let boot_id = document
        .get("boot_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut groups = BTreeMap::new();
    for entry in document.get("groups").and_then(Value::as_array).into_iter().flatten() {
        let Some(pgid) = entry
            .get("pgid")
            .and_then(Value::as_u64)
            .and_then(|pgid| u32::try_from(pgid).ok())
        else {
            warn!(path = %path.display(), %entry, "Skipping a process group without a usable pgid.");
            continue;
        };
        let record = GroupRecord {
            instance: entry
                .get("instance")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            start_ticks: entry.get("start_ticks").and_then(Value::as_u64),
        };
        groups.insert(pgid, record);
    }
    Groups { boot_id, groups }
}

/// Removes [`GROUPS_FILE`] (nothing to do when it is not there).
pub(super) fn remove_groups(dir: &Path) -> Result<(), RuntimeError> {
    let path = dir.join(GROUPS_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_failed("remove", &path)(error)),
    }
}

/// The run directories in `slot_dir` (named `<generation>-<digest>`) other than `keep`, oldest
/// first, except the newest `keep_others` of them.
pub(super) fn stale_run_dirs(slot_dir: &Path, keep: &Path, keep_others: usize) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(slot_dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let generation = entry.file_name().to_str()?.split_once('-')?.0.parse::<u64>().ok()?;
            let path = entry.path();
            (path != keep && path.is_dir()).then_some((generation, path))
        })
        .collect();
    runs.sort();
    let n_stale = runs.len().saturating_sub(keep_others);
    runs.into_iter().take(n_stale).map(|(_, path)| path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_generation(dir.path()).unwrap(), None);
        let desired = DesiredInstances {
            generation: Generation(7),
            instances: Vec::new(),
            checks: Vec::new(),
            actions: Vec::new(),
        };
        let frame = endstate_agent_proto::encode(&FromServer::DesiredInstances(desired.clone())).unwrap();
        save_desired(dir.path(), &frame, Generation(7)).unwrap();
        assert_eq!(load_generation(dir.path()).unwrap(), Some(Generation(7)));
        assert_eq!(load_desired(dir.path(), Generation(7)), Some(desired));
        assert_eq!(load_desired(dir.path(), Generation(8)), None);

        fs::write(dir.path().join(DESIRED_FILE), b"{not json").unwrap();
        assert_eq!(load_desired(dir.path(), Generation(7)), None);
        fs::write(dir.path().join(GENERATION_FILE), b"seven\n").unwrap();
        let error = load_generation(dir.path()).unwrap_err();
        assert!(error.to_string().contains("expected a generation number"), "{error}");
    }

    #[test]
    fn groups_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_groups(dir.path()), Groups::default());
        let groups = Groups {
            boot_id: "b00t".to_owned(),
            groups: BTreeMap::from([
                (
                    42,
                    GroupRecord {
                        instance: "shop/web#0".to_owned(),
                        start_ticks: Some(99),
                    },
                ),
                (
                    43,
                    GroupRecord {
                        instance: "shop/web#1".to_owned(),
                        start_ticks: None,
                    },
                ),
            ]),
        };
        write_groups(dir.path(), &groups).unwrap();
        assert_eq!(read_groups(dir.path()), groups);
        write_groups(dir.path(), &Groups::default()).unwrap();
        assert!(!dir.path().join(GROUPS_FILE).exists());

        fs::write(
            dir.path().join(GROUPS_FILE),
            br#"{"groups":[{"pgid":-1},{"pgid":"x"},{"pgid":12}]}"#,
        )
        .unwrap();
        let read = read_groups(dir.path());
        assert_eq!(read.groups.keys().copied().collect::<Vec<_>>(), [12]);
        fs::write(dir.path().join(GROUPS_FILE), b"garbage").unwrap();
        assert_eq!(read_groups(dir.path()), Groups::default());
    }

    #[test]
    fn stale_run_dirs_keep_the_newest() {
        let slot = tempfile::tempdir().unwrap();
        for name in ["1-aaa", "3-bbb", "10-ccc", "12-ddd", "notarun"] {
            fs::create_dir(slot.path().join(name)).unwrap();
        }
        let current = slot.path().join("12-ddd");
        let stale = stale_run_dirs(slot.path(), &current, 1);
        assert_eq!(stale, [slot.path().join("1-aaa"), slot.path().join("3-bbb")]);
    }
}
