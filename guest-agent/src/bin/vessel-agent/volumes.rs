//! Host directories shared into the container over virtio-fs (`-v HOST:CTR[:ro]`).
//!
//! Each share is a virtio-fs device whose tag the host names; it is mounted in the agent's
//! view (`/run/vessel/volumes/N`) and bound into the container's root: the whole share for
//! a directory, or the one file for a single-file bind (whose parent directory the host
//! shares). What the container can reach through it is what the host's virtiofsd serves
//! from that directory, sandboxed to it: symlinks and `..` resolve in the guest, inside the
//! container's own tree.

use std::path::Path;

use vessel_agent::VolumeSpec;

use crate::modules;
use crate::mounts::mount;

const SHARES: &str = "/run/vessel/volumes";

/// Mounts every volume under `root`, loading the virtio-fs driver first when it is a module.
pub fn mount_all(root: &Path, volumes: &[VolumeSpec], cmdline: &str) -> Result<(), String> {
    if volumes.is_empty() {
        return Ok(());
    }
    modules::load_all(Path::new("/modules"), "volumes.order", cmdline)?;
    for (i, v) in volumes.iter().enumerate() {
        mount_one(root, i, v).map_err(|e| format!("volume {}: {e}", v.destination))?;
    }
    Ok(())
}

fn mount_one(root: &Path, i: usize, v: &VolumeSpec) -> Result<(), String> {
    let share = Path::new(SHARES).join(i.to_string());
    let ro = if v.read_only { libc::MS_RDONLY } else { 0 };
    mount(&v.tag, &share, "virtiofs", ro, None).map_err(|e| e.to_string())?;
    let dest = root.join(v.destination.trim_start_matches('/'));
    let source = match &v.file {
        None => {
            std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
            share
        }
        Some(name) => {
            let file = share.join(name);
            if !file.is_file() {
                return Err(format!("{name} is not a file in the shared directory"));
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            if !dest.exists() {
                std::fs::File::create(&dest).map_err(|e| e.to_string())?;
            }
            file
        }
    };
    mount(&source.to_string_lossy(), &dest, "", libc::MS_BIND, None).map_err(|e| e.to_string())?;
    if v.read_only {
        mount(
            "",
            &dest,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
