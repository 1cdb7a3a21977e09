//! Where a container's files live under the state root:
//!
//! ```text
//! <root>/containers/<id>/launch.json   the LaunchSpec (for the supervisor, exec, recovery)
//! <root>/containers/<id>/log           stdout/stderr frames (what `logs` shows)
//! <root>/containers/<id>/upper, work   the writable layer (container mode)
//! <root>/containers/<id>/rootfs        the overlay mount point while it runs
//! <root>/containers/<id>/runtime       libcontainer's state while it runs
//! ```

use std::path::{Path, PathBuf};

/// The directory holding every container's directory.
pub fn containers_dir(root: &Path) -> PathBuf {
    root.join("containers")
}

/// A container's directory.
pub fn container_dir(root: &Path, id: &str) -> PathBuf {
    containers_dir(root).join(id)
}

/// The serialized launch spec.
pub fn launch_file(dir: &Path) -> PathBuf {
    dir.join("launch.json")
}

/// The log file.
pub fn log_file(dir: &Path) -> PathBuf {
    dir.join("log")
}
