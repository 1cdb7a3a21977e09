//! `vessel system check`: re-hash every blob, check every image has its config,
//! layers and tree, and every reference an image; with `repair`, remove what is
//! broken (corrupt blobs, images missing content, dangling references) so that
//! the next pull or load fetches it again.

use std::collections::HashSet;

use crate::digest::Digest;
use crate::error::Result;
use crate::metadata;
use crate::store::{remove_path, Store};

/// What `system check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Blobs verified.
    pub blobs: usize,
    /// Images checked.
    pub images: usize,
    /// References checked.
    pub references: usize,
    /// One line per problem.
    pub problems: Vec<String>,
    /// One line per repair made.
    pub repaired: Vec<String>,
}

impl Store {
    /// Verifies the store; with `repair`, removes what is broken.
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        let _lock = self.lock_exclusive()?;
        let mut report = CheckReport::default();
        let mut corrupt = HashSet::new();
        for d in self.content().list()? {
            report.blobs += 1;
            match self.content().verify(&d) {
                Ok(actual) if actual == d => {}
                Ok(actual) => {
                    report
                        .problems
                        .push(format!("blob {d}: content hashes to {actual}"));
                    corrupt.insert(d.to_string());
                }
                Err(e) => {
                    report.problems.push(format!("blob {d}: {e}"));
                    corrupt.insert(d.to_string());
                }
            }
        }
        let mut conn = self.db();
        let images = metadata::all_images(&conn)?;
        let mut broken_images = Vec::new();
        for img in &images {
            report.images += 1;
            let mut needed = vec![img.id.clone()];
            needed.extend(img.manifest_digest.clone());
            needed.extend(
                metadata::layers_of(&conn, &img.id)?
                    .into_iter()
                    .map(|l| l.blob_digest),
            );
            let mut bad = false;
            if let Err(e) = oci_spec::image::ImageConfiguration::from_reader(&img.config[..]) {
                report
                    .problems
                    .push(format!("image {}: config unreadable: {e}", img.id));
                bad = true;
            }
            for b in &needed {
                let present = Digest::parse(b)
                    .map(|d| self.content().has(&d))
                    .unwrap_or(false);
                if !present {
                    report
                        .problems
                        .push(format!("image {}: blob {b} is missing", img.id));
                    bad = true;
                } else if corrupt.contains(b) {
                    report
                        .problems
                        .push(format!("image {}: blob {b} is corrupt", img.id));
                    bad = true;
                }
            }
            if !self.rootfs_path(&img.id).is_dir() {
                report
                    .problems
                    .push(format!("image {}: unpacked tree is missing", img.id));
                bad = true;
            }
            if bad {
                broken_images.push(img.id.clone());
            }
        }
        let ids: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        let refs: Vec<(String, String)> = {
            let mut st = conn.prepare("SELECT name, image_id FROM refs")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut dangling = Vec::new();
        for (name, id) in &refs {
            report.references += 1;
            if !ids.contains(id.as_str()) {
                report
                    .problems
                    .push(format!("reference {name}: image {id} does not exist"));
                dangling.push(name.clone());
            }
        }
        if repair {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for name in &dangling {
                metadata::remove_ref(&tx, name)?;
                report.repaired.push(format!("removed reference {name}"));
            }
            for id in &broken_images {
                metadata::delete_image(&tx, id)?;
                report
                    .repaired
                    .push(format!("removed image {id} (pull or load it again)"));
            }
            tx.commit()?;
            drop(conn);
            for b in &corrupt {
                if let Ok(d) = Digest::parse(b) {
                    self.content().remove(&d)?;
                    report.repaired.push(format!("removed corrupt blob {b}"));
                }
            }
            for id in &broken_images {
                remove_path(&self.rootfs_path(id))?;
                remove_path(&self.disk_path(id))?;
            }
        }
        Ok(report)
    }
}
