//! The VM's two disks: the image's ext4 (built once per image, shared read-only by every
//! VM of that image) and the container's own sparse ext4 (the overlay's writable layer,
//! removed with the container).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Apparent size of a container disk; sparse, so only what the guest writes takes space.
pub const CONTAINER_DISK_SIZE: u64 = 4 << 30;

/// The container disk's path in its directory.
pub fn container_disk_path(dir: &Path) -> PathBuf {
    dir.join("disk.ext4")
}

/// The image's ext4 disk under the state root, built once per image by the store (under
/// its lock, so concurrent first runs of one image build it once and GC cannot remove
/// the tree while mke2fs reads it).
pub fn image_disk(root: &Path, image_id: &str) -> Result<PathBuf, String> {
    let store =
        vessel_images::Store::open(root).map_err(|e| format!("opening the image store: {e}"))?;
    let image = store
        .image(image_id)
        .map_err(|e| format!("image {image_id}: {e}"))?;
    store.image_disk(&image).map_err(|e| e.to_string())
}

/// Creates an empty sparse ext4 for the container's writable layer.
pub fn create_container_disk(dir: &Path) -> Result<PathBuf, String> {
    let path = container_disk_path(dir);
    let f =
        std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.set_len(CONTAINER_DISK_SIZE)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    drop(f);
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(&path)
        .output()
        .map_err(|e| format!("running mke2fs (Debian: apt-get install e2fsprogs): {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&path);
        return Err(format!(
            "mke2fs {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(path)
}
