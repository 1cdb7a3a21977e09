//! `vessel rmi` and garbage collection.
//!
//! Removing a name untags; an image left with no name is deleted. An image a
//! container holds a lease on is never deleted: without `-f` rmi refuses, with
//! `-f` it only loses its names. Garbage collection then removes every blob,
//! unpacked tree and disk that no remaining image uses, under the store's
//! exclusive lock so that no pull or load in progress loses content.

use std::collections::HashSet;
use std::fs;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::metadata;
use crate::reference::Reference;
use crate::store::{remove_path, Store};

/// What one `rmi` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// References removed (familiar form).
    pub untagged: Vec<String>,
    /// Image IDs deleted.
    pub deleted: Vec<String>,
}

/// What garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Unpacked trees removed.
    pub trees: u64,
    /// Disks removed.
    pub disks: u64,
    /// Bytes freed (files only, approximately for trees).
    pub bytes: u64,
}

fn familiar(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

/// Sum of file sizes under `p` (no symlinks followed).
pub(crate) fn tree_size(p: &std::path::Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten().map(|e| tree_size(&e.path())).sum()
}

impl Store {
    /// Removes `name` (a reference or an image ID) as `vessel rmi [-f]` does.
    pub fn remove(&self, name: &str, force: bool) -> Result<RemoveReport> {
        let id = self.resolve(name)?;
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let refs = metadata::refs_of(&tx, &id)?;
        let leases = metadata::leases_of(&tx, &id)?;
        let by_ref = Reference::parse(name)
            .ok()
            .map(|r| r.to_string())
            .filter(|r| refs.contains(r));
        let mut report = RemoveReport::default();
        let short = id
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or(&id)
            .to_string();
        match by_ref {
            Some(r) => {
                let tags_left = refs.iter().filter(|x| **x != r && !x.contains('@')).count();
                let last = tags_left == 0;
                if last && !leases.is_empty() && !force {
                    return Err(StoreError::Conflict(format!(
                        "image {name} ({short}) is used by {}; remove it first or use -f to untag only",
                        leases.join(", ")
                    )));
                }
                metadata::remove_ref(&tx, &r)?;
                report.untagged.push(familiar(&r));
                if last {
                    // The digest references go with the last tag, as in docker.
                    for d in refs.iter().filter(|x| x.contains('@')) {
                        metadata::remove_ref(&tx, d)?;
                        report.untagged.push(familiar(d));
                    }
                    if leases.is_empty() {
                        metadata::delete_image(&tx, &id)?;
                        report.deleted.push(id.clone());
                    }
                }
            }
            None => {
                let tags = refs.iter().filter(|x| !x.contains('@')).count();
                if tags > 1 && !force {
                    return Err(StoreError::Conflict(format!(
                        "image {short} is referenced by {} names ({}); remove them by name or use -f",
                        tags,
                        refs.iter().map(|r| familiar(r)).collect::<Vec<_>>().join(", ")
                    )));
                }
                if !leases.is_empty() && !force {
                    return Err(StoreError::Conflict(format!(
                        "image {short} is used by {}; remove it first or use -f to untag only",
                        leases.join(", ")
                    )));
                }
                for r in &refs {
                    metadata::remove_ref(&tx, r)?;
                    report.untagged.push(familiar(r));
                }
                if leases.is_empty() {
                    metadata::delete_image(&tx, &id)?;
                    report.deleted.push(id.clone());
                }
            }
        }
        tx.commit()?;
        Ok(report)
    }

    /// Removes blobs, unpacked trees and disks that no image uses.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let mut report = GcReport::default();
        let (used_blobs, image_hexes): (HashSet<String>, HashSet<String>) = {
            let conn = self.db();
            let used = metadata::used_blobs(&conn)?;
            let ids = metadata::all_images(&conn)?
                .into_iter()
                .map(|i| i.id.trim_start_matches("sha256:").to_string())
                .collect();
            (used, ids)
        };
        for d in self.content().list()? {
            if !used_blobs.contains(&d.to_string()) {
                report.bytes += self.content().size(&d).unwrap_or(0);
                self.content().remove(&d)?;
                report.blobs += 1;
            }
        }
        for (sub, suffix) in [("rootfs", ""), ("disks", ".ext4"), ("disks", ".lock")] {
            let dir = self.root().join(sub);
            let rd = fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))?;
            for ent in rd.flatten() {
                let name = ent.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(hex) = name.strip_suffix(suffix) else {
                    continue;
                };
                if Digest::from_hex(hex).is_err() || image_hexes.contains(hex) {
                    continue;
                }
                let p = ent.path();
                report.bytes += tree_size(&p);
                // Rename first so the tree vanishes from its name at once; a crash
                // while deleting leaves a temp the next open sweeps.
                let doomed = self.tmp_dir().join(crate::content::temp_name("gc"));
                let target = if fs::rename(&p, &doomed).is_ok() {
                    doomed
                } else {
                    p
                };
                remove_path(&target)?;
                match suffix {
                    "" => report.trees += 1,
                    ".ext4" => report.disks += 1,
                    _ => {}
                }
            }
        }
        Ok(report)
    }
}
