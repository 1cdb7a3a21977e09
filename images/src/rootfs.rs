//! Unpacking an image's layers into `rootfs/<hex>/`.
//!
//! Layers are applied in order, with the confined extraction of [`crate::unpack`],
//! into a temp directory beside the final one, which is renamed into place only
//! when every layer applied. A crash leaves a `.tmp-<pid>-…` directory that the
//! next `Store::open` sweeps; never a half-unpacked tree under an image's name.

use std::fs;
use std::path::PathBuf;

use crate::compression;
use crate::content::temp_name;
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::metadata::LayerRecord;
use crate::store::{remove_path, Store};

impl Store {
    /// Ensures the image's rootfs is unpacked; returns its path.
    pub(crate) fn ensure_rootfs(&self, image_id: &str, layers: &[LayerRecord]) -> Result<PathBuf> {
        let dest = self.rootfs_path(image_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let parent = self.root().join("rootfs");
        let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
        let tmp = parent.join(temp_name(hex));
        fs::create_dir(&tmp).map_err(|e| StoreError::io("create directory", &tmp, e))?;
        let result = self.unpack_layers(&tmp, layers).and_then(|()| {
            // One syncfs makes every file of the tree durable before it gets its
            // name; fsyncing file by file would cost far more for the same guarantee.
            let dir = fs::File::open(&tmp).map_err(|e| StoreError::io("open", &tmp, e))?;
            rustix::fs::syncfs(&dir).map_err(|e| StoreError::io("syncfs", &tmp, e.into()))
        });
        if let Err(e) = result {
            let _ = remove_path(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => {
                if let Ok(d) = fs::File::open(&parent) {
                    let _ = d.sync_all();
                }
                Ok(dest)
            }
            // Another process finished the same image first: theirs is as good as ours.
            Err(_) if dest.is_dir() => {
                let _ = remove_path(&tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = remove_path(&tmp);
                Err(StoreError::io("rename rootfs into", dest, e))
            }
        }
    }

    fn unpack_layers(&self, dir: &std::path::Path, layers: &[LayerRecord]) -> Result<()> {
        let opts = crate::unpack::UnpackOptions::default();
        for l in layers {
            let digest = Digest::parse(&l.blob_digest)?;
            let file = self.content().open(&digest)?;
            let reader = crate::interrupt::Interruptible(std::io::BufReader::with_capacity(
                256 * 1024,
                file,
            ));
            let (_, tar) =
                compression::decompress_sniffed(reader).map_err(|e| StoreError::Unpack {
                    layer: l.blob_digest.clone(),
                    message: e.to_string(),
                })?;
            crate::unpack::apply_layer(dir, tar, &opts).map_err(|e| {
                if crate::interrupt::requested() {
                    StoreError::Interrupted
                } else {
                    StoreError::Unpack {
                        layer: l.blob_digest.clone(),
                        message: e.to_string(),
                    }
                }
            })?;
        }
        Ok(())
    }
}
