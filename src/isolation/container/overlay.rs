//! The container's root filesystem: overlayfs with the image rootfs as the read-only lower
//! layer and the container's own upper and work directories.

use std::path::{Component, Path};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::isolation::IsolationError;

/// Mounts `lower` + `upper` (+ `work`) at `target`; creates the directories that are missing.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), IsolationError> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)
            .map_err(|e| IsolationError::io(format!("creating {}", d.display()), e))?;
    }
    for p in [lower, upper, work] {
        // overlayfs takes ',' and ':' as separators in its options.
        if p.to_string_lossy().contains([',', ':']) {
            return Err(IsolationError::runtime(
                "mounting the root filesystem",
                format!("path {} contains ',' or ':'", p.display()),
            ));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    // `volatile` skips syncing the upper layer's filesystem (on every fsync in the
    // container and at unmount, where it cost tens of milliseconds per run here). The layer
    // is never mounted again after the container ends, so the guarantee it gives up (a
    // consistent upper dir after a host crash) is not one vessel uses. Kernels before 5.10
    // do not know it: fall back to a plain mount.
    let volatile = format!("{options},volatile");
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(volatile.as_str()),
    )
    .or_else(|_| {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
    })
    .map_err(|e| IsolationError::runtime("mounting the overlay root filesystem", e))
}

/// Whether something is mounted exactly at `path`.
fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmounts `target` (lazily, so a process still holding it cannot make removal fail).
pub fn unmount(target: &Path) -> Result<(), IsolationError> {
    while is_mounted(target) {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| IsolationError::runtime("unmounting the root filesystem", e))?;
    }
    Ok(())
}

/// Creates the absolute directory `dir` inside the root filesystem at `root`, refusing to
/// walk through symlinks (so an image cannot make us create directories on the host).
/// Existing symlinks are left for the runtime to resolve inside the container.
pub fn mkdir_in_root(root: &Path, dir: &str) -> Result<(), IsolationError> {
    let mut cur = root.to_path_buf();
    for comp in Path::new(dir).components() {
        match comp {
            Component::Normal(name) => cur.push(name),
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(IsolationError::runtime(
                    "creating the working directory",
                    format!("{dir:?} contains '..'"),
                ))
            }
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Ok(()),
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(IsolationError::runtime(
                    "creating the working directory",
                    format!("{dir:?}: a path component is not a directory"),
                ))
            }
            Err(_) => std::fs::create_dir(&cur)
                .map_err(|e| IsolationError::io(format!("creating working directory {dir}"), e))?,
        }
    }
    Ok(())
}
