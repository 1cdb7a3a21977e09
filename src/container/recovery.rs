//! Removing containers, and cleaning up after vessel processes that died (kill -9, a crash,
//! a reboot) while they supervised one: every vessel command that touches containers calls
//! [`recover`] first.

use std::collections::HashSet;
use std::path::Path;

use vessel_images::Store;

use super::layout;
use super::record::{Record, RecordError, Records, State};
use crate::isolation::{self, IsolationError, IsolationKind, Target};
use crate::liveness;

/// Why removing a container failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Releasing host resources failed.
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    /// The database failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Removing the directory failed.
    #[error("removing {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn target(root: &Path, r: &Record) -> Target {
    Target {
        id: r.id.clone(),
        dir: layout::container_dir(root, &r.id),
        pid: r.pid,
    }
}

/// Whether the vessel process supervising `r` is alive.
pub fn supervised(r: &Record) -> bool {
    match (r.supervisor_pid, r.supervisor_start) {
        (Some(pid), Some(start)) => liveness::alive(pid, start),
        _ => false,
    }
}

fn remove_dir(dir: &Path) -> Result<(), RemoveError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Dir {
            path: dir.display().to_string(),
            source,
        }),
    }
}

/// Releases everything a stopped container holds and deletes it: host resources, its
/// directory (writable layer, logs), its record, its image lease. Tolerates a partly
/// removed container.
pub fn remove(
    root: &Path,
    records: &Records,
    store: &Store,
    r: &Record,
) -> Result<(), RemoveError> {
    let t = target(root, r);
    isolation::backend(r.isolation).cleanup(&t)?;
    // The directory goes before the record, so a directory never outlives its record
    // (recovery would otherwise have to guess whether a directory is being created).
    remove_dir(&t.dir)?;
    records.delete(&r.id)?;
    let _ = store.remove_lease(&r.id);
    Ok(())
}

/// Finds containers whose supervisor died and cleans up after them: their processes are
/// killed, mounts and cgroups released, `--rm` containers removed, the others marked
/// exited. Directories without a record (a removal that crashed) are removed.
pub fn recover(root: &Path, records: &Records, store: &Store) {
    // Directories first: a directory is created after its record, so every directory
    // listed here has a record in the list read next, unless it is an orphan.
    let dirs: Vec<String> = std::fs::read_dir(layout::containers_dir(root))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Ok(all) = records.list() else {
        return;
    };
    for r in &all {
        let abandoned = match r.state {
            State::Created | State::Running => !supervised(r),
            // An --rm container whose supervisor died between recording the exit and
            // removing it.
            State::Exited => {
                r.auto_remove
                    && r.supervisor_pid.is_none()
                    && r.finished.is_none_or(|f| super::now() - f >= 10)
            }
        };
        if !abandoned {
            continue;
        }
        if r.auto_remove {
            if let Err(e) = remove(root, records, store, r) {
                eprintln!(
                    "vessel: warning: cleaning up container {}: {e}",
                    &r.id[..12.min(r.id.len())]
                );
            }
            continue;
        }
        if let Err(e) = isolation::backend(r.isolation).cleanup(&target(root, r)) {
            eprintln!(
                "vessel: warning: cleaning up container {}: {e}",
                &r.id[..12.min(r.id.len())]
            );
        }
        let _ = records.set_exited(&r.id, None, false, super::now());
    }
    let known: HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
    for d in dirs {
        if known.contains(d.as_str()) || d.len() != 64 {
            continue;
        }
        let t = Target {
            id: d.clone(),
            dir: layout::container_dir(root, &d),
            pid: None,
        };
        // No record says which mode it was: both cleanups tolerate what is not theirs.
        for kind in [IsolationKind::Vm, IsolationKind::Container] {
            let _ = isolation::backend(kind).cleanup(&t);
        }
        let _ = remove_dir(&t.dir);
    }
}
