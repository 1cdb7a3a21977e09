//! `vessel system df`: how much the images take, what they share, what could go.

use std::collections::HashMap;

use crate::error::Result;
use crate::metadata;
use crate::remove::tree_size;
use crate::store::Store;

/// Disk usage of the image store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Images in the store.
    pub images: usize,
    /// Images a container holds a lease on.
    pub active: usize,
    /// Uncompressed size of all distinct layers.
    pub size: u64,
    /// Part of `size` in layers used by more than one image.
    pub shared: u64,
    /// Part of `size` in layers used by one image only.
    pub unique: u64,
    /// What removing every image without a lease would free (uncompressed layers).
    pub reclaimable: u64,
    /// Bytes in blobs/ (compressed content).
    pub blobs_bytes: u64,
    /// Bytes in rootfs/ (unpacked trees).
    pub rootfs_bytes: u64,
    /// Bytes in disks/ (ext4 images, allocated).
    pub disks_bytes: u64,
}

impl Store {
    /// Computes the store's disk usage.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let conn = self.db();
        let images = metadata::all_images(&conn)?;
        // diff_id → (size, images using it, of which leased)
        let mut layers: HashMap<String, (u64, usize, usize)> = HashMap::new();
        let mut active = 0;
        for img in &images {
            let leased = !metadata::leases_of(&conn, &img.id)?.is_empty();
            if leased {
                active += 1;
            }
            let mut seen = std::collections::HashSet::new();
            for l in metadata::layers_of(&conn, &img.id)? {
                if !seen.insert(l.diff_id.clone()) {
                    continue;
                }
                let e = layers.entry(l.diff_id).or_insert((l.diff_size, 0, 0));
                e.1 += 1;
                if leased {
                    e.2 += 1;
                }
            }
        }
        drop(conn);
        let mut du = DiskUsage {
            images: images.len(),
            active,
            ..Default::default()
        };
        for (size, users, leased) in layers.values() {
            du.size += size;
            if *users > 1 {
                du.shared += size;
            } else {
                du.unique += size;
            }
            if *leased == 0 {
                du.reclaimable += size;
            }
        }
        du.blobs_bytes = tree_size(&self.root().join("blobs"));
        du.rootfs_bytes = tree_size(&self.root().join("rootfs"));
        du.disks_bytes = tree_size(&self.root().join("disks"));
        Ok(du)
    }
}
