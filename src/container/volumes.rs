//! Named volumes (`-v NAME:/path`, `vessel volume ...`): directories under the state root
//! that outlive containers, shared the same way as host directories in both modes.
//!
//! ```text
//! <root>/volumes/<name>/_data       what containers see
//! <root>/volumes/<name>/meta.json   {"created": <seconds since the epoch>}
//! ```
//!
//! A volume is made in a temporary directory and renamed into place, so a half-made one is
//! never visible under its name; two runs creating it at once both end up using the one that
//! won.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout;
use crate::isolation::LaunchSpec;

/// Failures of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not a volume name.
    #[error("invalid volume name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")]
    BadName(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// Containers use it.
    #[error("volume {name} is in use by container(s) {users}: remove them first, or use -f")]
    InUse {
        /// The volume.
        name: String,
        /// Their names or IDs.
        users: String,
    },
    /// A host I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// One named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// The directory containers see.
    pub mountpoint: PathBuf,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    created: i64,
}

/// Whether `s` names a volume rather than a host path (docker's rule: no slash).
pub fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

fn dir_of(root: &Path, name: &str) -> PathBuf {
    volumes_dir(root).join(name)
}

/// The volume `name`, if it exists.
pub fn get(root: &Path, name: &str) -> Result<Volume, VolumeError> {
    if !is_volume_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let dir = dir_of(root, name);
    let meta = std::fs::read(dir.join("meta.json"))
        .map_err(|_| VolumeError::NotFound(name.to_string()))?;
    let meta: Meta = serde_json::from_slice(&meta).map_err(|e| VolumeError::Io {
        context: format!("reading {}", dir.join("meta.json").display()),
        source: std::io::Error::other(e),
    })?;
    Ok(Volume {
        name: name.to_string(),
        mountpoint: dir.join("_data"),
        created: meta.created,
    })
}

/// Creates volume `name`, or returns it if it exists.
pub fn create(root: &Path, name: &str) -> Result<Volume, VolumeError> {
    if let Ok(v) = get(root, name) {
        return Ok(v);
    }
    if !is_volume_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let parent = volumes_dir(root);
    std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(tmp.join("_data"))?;
        let meta = serde_json::to_vec(&Meta {
            created: super::now(),
        })?;
        let f = tmp.join("meta.json");
        std::fs::write(&f, meta)?;
        std::fs::File::open(&f)?.sync_all()?;
        std::fs::File::open(&tmp)?.sync_all()
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(format!("creating volume {name}"))(e));
    }
    match std::fs::rename(&tmp, dir_of(root, name)) {
        Ok(()) => {}
        // Another run made it first: theirs is the volume.
        Err(_) if dir_of(root, name).join("meta.json").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(format!("creating volume {name}"))(e));
        }
    }
    get(root, name)
}

/// Every volume, by name.
pub fn list(root: &Path) -> Result<Vec<Volume>, VolumeError> {
    let dir = volumes_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
    };
    let mut out: Vec<Volume> = entries
        .flatten()
        .filter_map(|e| get(root, e.file_name().to_str()?).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The containers (IDs) whose launch uses volume `name`.
pub fn users(root: &Path, name: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(layout::containers_dir(root)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let spec: LaunchSpec =
                serde_json::from_slice(&std::fs::read(layout::launch_file(&e.path())).ok()?)
                    .ok()?;
            spec.binds
                .iter()
                .any(|b| b.volume.as_deref() == Some(name))
                .then_some(spec.id)
        })
        .collect()
}

/// Removes volume `name` and what it holds; refuses one in use unless `force`.
pub fn remove(root: &Path, name: &str, force: bool) -> Result<(), VolumeError> {
    get(root, name)?;
    let users = users(root, name);
    if !users.is_empty() && !force {
        return Err(VolumeError::InUse {
            name: name.to_string(),
            users: users
                .iter()
                .map(|id| id[..12.min(id.len())].to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // Renamed aside first, so the name is free (and never half-removed) at once.
    let dir = dir_of(root, name);
    let doomed = volumes_dir(root).join(format!(".rm-{name}-{}", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(io(format!("removing volume {name}")))?;
    std::fs::remove_dir_all(&doomed).map_err(io(format!("removing volume {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(is_volume_name("data-1.x") && !is_volume_name("/data") && !is_volume_name(".x"));
        assert!(matches!(create(r, "../x"), Err(VolumeError::BadName(_))));
        let v = create(r, "data").unwrap();
        assert!(v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("kept"), "1").unwrap();
        // Creating it again keeps it and what it holds.
        let again = create(r, "data").unwrap();
        assert_eq!(again, v);
        assert!(again.mountpoint.join("kept").exists());
        create(r, "other").unwrap();
        let names: Vec<String> = list(r).unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["data", "other"]);
        remove(r, "data", false).unwrap();
        assert!(matches!(get(r, "data"), Err(VolumeError::NotFound(_))));
        assert!(matches!(
            remove(r, "data", false),
            Err(VolumeError::NotFound(_))
        ));
        // Nothing half-made or half-removed is left beside them.
        let left: Vec<String> = std::fs::read_dir(r.join("volumes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["other"]);
    }
}
