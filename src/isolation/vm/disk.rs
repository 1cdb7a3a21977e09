//! The container's own disk: a sparse ext4 (the overlay's writable layer, removed with the
//! container). The image's ext4, shared read-only by every VM of the image, is built by the
//! store when the lifecycle prepares the container (`LaunchSpec::image_disk`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Apparent size of a container disk; sparse, so only what the guest writes takes space.
pub const CONTAINER_DISK_SIZE: u64 = 4 << 30;

/// The container disk's path in its directory.
pub fn container_disk_path(dir: &Path) -> PathBuf {
    dir.join("disk.ext4")
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
