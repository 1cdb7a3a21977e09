//! Boot assets for VM isolation: which guest kernel to boot, and the initramfs that carries
//! the guest agent and the kernel modules it needs.

pub mod agent;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod kernel_build;
pub mod modules;
pub mod vmlinux;

use std::path::{Path, PathBuf};

/// Where packed initramfs archives and unpacked kernels are cached: `$VESSEL_BOOT_CACHE`,
/// else `<root>/boot`. Entries are keyed by what they were made from and written
/// atomically, so several state roots (a test suite's) may share one directory.
pub fn cache_dir(root: &Path) -> PathBuf {
    match std::env::var_os("VESSEL_BOOT_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => root.join("boot"),
    }
}

/// A file's size and modification time: what the boot caches are keyed by besides its
/// path (a kernel or agent replaced in place gets a new entry).
pub(crate) fn file_stamp(p: &Path) -> (u64, Option<std::time::SystemTime>) {
    let m = std::fs::metadata(p).ok();
    (
        m.as_ref().map_or(0, |m| m.len()),
        m.and_then(|m| m.modified().ok()),
    )
}

/// Failures while finding or preparing boot assets.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// No guest kernel was found anywhere discovery looks.
    #[error("no guest kernel found (looked at: {0}); install one with `vessel kernel install` or pass --kernel")]
    NoKernel(String),
    /// The guest agent binary was not found or is unusable.
    #[error("guest agent: {0}")]
    Agent(String),
    /// A needed kernel module is missing from the modules directory.
    #[error("kernel module {name} not found under {dir} (and not built into the kernel)")]
    MissingModule {
        /// Module name.
        name: String,
        /// The modules directory searched.
        dir: PathBuf,
    },
    /// A module file could not be parsed or decompressed.
    #[error("kernel module {path}: {reason}")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The kernel image is damaged.
    #[error("guest kernel {path}: {reason}")]
    BadKernel {
        /// The kernel image.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Building vessel's own kernel failed.
    #[error("building the guest kernel: {0}")]
    KernelBuild(String),
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

impl BootError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BootError::Io {
            context: context.into(),
            source,
        }
    }
}
