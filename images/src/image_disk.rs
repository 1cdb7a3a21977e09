//! The per-image ext4 disk VM isolation attaches read-only: built once from the
//! unpacked rootfs, under a lock so concurrent runs build it only once, then reused.

use std::fs::OpenOptions;
use std::path::PathBuf;

use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::store::Store;

impl Store {
    /// The image's ext4 disk (`disks/<hex>.ext4`), built on first use.
    pub fn image_disk(&self, image: &Image) -> Result<PathBuf> {
        let out = self.disk_path(&image.id);
        if out.is_file() {
            return Ok(out);
        }
        // Holding the store lock shared keeps garbage collection from removing the
        // tree while mke2fs reads it.
        let _store = self.lock_shared()?;
        let lock_path = self
            .root()
            .join("disks")
            .join(format!("{}.lock", image.hex()));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open", &lock_path, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| StoreError::io("lock", &lock_path, e.into()))?;
        // Someone else may have built it while we waited.
        if out.is_file() {
            return Ok(out);
        }
        if !image.rootfs.is_dir() {
            return Err(StoreError::Disk {
                image: image.id.clone(),
                message: format!(
                    "its unpacked tree {} is missing (run `vessel system check --repair` and pull again)",
                    image.rootfs.display()
                ),
            });
        }
        crate::disk::build_ext4(&image.rootfs, &out).map_err(|e| StoreError::Disk {
            image: image.id.clone(),
            message: e.to_string(),
        })?;
        Ok(out)
    }
}
