//! Assembling the container's root: image disk (read-only) + container disk (the overlay's
//! upper and work directories) joined with overlayfs, with /proc, /sys and /dev inside.

use std::path::{Path, PathBuf};

use vessel_agent::RootfsSpec;

use crate::disks;
use crate::mounts::mount;

/// Where the container's root is assembled; processes are chrooted here.
pub const ROOT: &str = "/run/vessel/root";

/// Mounts everything and sets the hostname; returns the root directory.
pub fn assemble(spec: &RootfsSpec) -> Result<PathBuf, String> {
    let d = disks::find()?;
    let image = Path::new("/run/vessel/image");
    let rw = Path::new("/run/vessel/rw");
    let root = Path::new(ROOT);
    let ro = libc::MS_RDONLY;
    mount(
        &d.image.to_string_lossy(),
        image,
        "ext4",
        ro,
        Some("noload"),
    )
    .map_err(|e| e.to_string())?;
    // noinit_itable: no background inode-table zeroing stealing the guest's only CPU.
    mount(
        &d.container.to_string_lossy(),
        rw,
        "ext4",
        0,
        Some("noinit_itable"),
    )
    .map_err(|e| e.to_string())?;
    for sub in ["upper", "work"] {
        std::fs::create_dir_all(rw.join(sub)).map_err(|e| format!("creating {sub}: {e}"))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        rw.join("upper").display(),
        rw.join("work").display()
    );
    mount("overlay", root, "overlay", 0, Some(&opts)).map_err(|e| e.to_string())?;
    for dir in ["proc", "sys", "dev", "tmp"] {
        // Images without these directories still get them, in the writable layer.
        let _ = std::fs::create_dir_all(root.join(dir));
    }
    if spec.readonly {
        mount(
            "",
            root,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", &root.join("proc"), "proc", nosuid, None).map_err(|e| e.to_string())?;
    mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        nosuid | libc::MS_RDONLY,
        None,
    )
    .map_err(|e| e.to_string())?;
    mount(
        "devtmpfs",
        &root.join("dev"),
        "devtmpfs",
        libc::MS_NOSUID,
        None,
    )
    .map_err(|e| e.to_string())?;
    // The agent's own devpts, not a new instance: the terminals it opens for `-t` must be
    // the ones the container sees under /dev/pts (ttyname, tty(1)).
    mount("/dev/pts", &root.join("dev/pts"), "", libc::MS_BIND, None).map_err(|e| e.to_string())?;
    mount("shm", &root.join("dev/shm"), "tmpfs", nosuid, None).map_err(|e| e.to_string())?;
    if !spec.hostname.is_empty() {
        // SAFETY: the pointer and length describe the hostname's bytes.
        let rc = unsafe {
            libc::sethostname(
                spec.hostname.as_ptr() as *const libc::c_char,
                spec.hostname.len(),
            )
        };
        if rc != 0 {
            return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(root.to_path_buf())
}
