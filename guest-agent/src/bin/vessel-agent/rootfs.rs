//! Assembling the container's root: image disk (read-only) + container disk (the overlay's
//! upper and work directories) joined with overlayfs, with /sys and a /dev of its own
//! inside. /proc is mounted by the container's first process, in its PID namespace
//! ([`crate::confine`]).

use std::path::{Path, PathBuf};

use vessel_agent::RootfsSpec;

use crate::disks;
use crate::mounts::mount;

/// Character devices every container gets (runc's): name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// A tmpfs /dev with only [`DEVICES`] and the usual links, not the guest's devtmpfs: that
/// holds the disks (the container could write its image's blocks directly) and the agent's
/// channel (it could forge the agent's messages to the host).
fn populate_dev(dev: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    mount(
        "tmpfs",
        dev,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: mknod on a NUL-terminated path with plain integer arguments.
        if unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(*major, *minor),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // The agent's umask would otherwise narrow the mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, dev.join(link))?;
    }
    for d in ["pts", "shm", "mqueue"] {
        std::fs::create_dir_all(dev.join(d))?;
    }
    Ok(())
}

/// Where the container's root is assembled; processes are chrooted here.
pub const ROOT: &str = "/run/vessel/root";

/// Mounts everything (volumes too) and sets the hostname; returns the root directory.
/// `workdir`, the first process's working directory, is made while the root can still be
/// written.
pub fn assemble(spec: &RootfsSpec, workdir: &str, cmdline: &str) -> Result<PathBuf, String> {
    if let Some(net) = &spec.network {
        crate::net::configure(net, cmdline)?;
    }
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
    // Mount points and the working directory are made while the root can still be written
    // (--read-only), as container mode makes them.
    if !workdir.is_empty() {
        std::fs::create_dir_all(root.join(workdir.trim_start_matches('/')))
            .map_err(|e| format!("working directory {workdir}: {e}"))?;
    }
    for t in &spec.tmpfs {
        std::fs::create_dir_all(root.join(t.trim_start_matches('/')))
            .map_err(|e| format!("--tmpfs {t}: {e}"))?;
    }
    // Before the root turns read-only: their mount points may have to be made.
    crate::volumes::mount_all(root, &spec.volumes, cmdline)?;
    bind_files(root, &spec.files)?;
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
    mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        nosuid | libc::MS_RDONLY,
        None,
    )
    .map_err(|e| e.to_string())?;
    populate_dev(&root.join("dev")).map_err(|e| format!("/dev: {e}"))?;
    // The agent's own devpts, not a new instance: the terminals it opens for `-t` must be
    // the ones the container sees under /dev/pts (ttyname, tty(1)).
    mount("/dev/pts", &root.join("dev/pts"), "", libc::MS_BIND, None).map_err(|e| e.to_string())?;
    mount("shm", &root.join("dev/shm"), "tmpfs", nosuid, None).map_err(|e| e.to_string())?;
    for t in &spec.tmpfs {
        // As container mode mounts them (docker's options).
        let at = root.join(t.trim_start_matches('/'));
        mount("tmpfs", &at, "tmpfs", nosuid, Some("mode=1777,size=65536k"))
            .map_err(|e| format!("--tmpfs {t}: {e}"))?;
    }
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

/// Where the agent keeps the files it binds into the container (its own tmpfs).
const FILES: &str = "/run/vessel/files";

/// Binds each file (`/etc/hosts`, ...) over the image's own, as docker does: the
/// container may change them, and the image's copy is left as it was.
fn bind_files(root: &Path, files: &[vessel_agent::FileSpec]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(FILES).map_err(|e| format!("creating {FILES}: {e}"))?;
    for (i, f) in files.iter().enumerate() {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(format!("refusing to bind a file at {:?}", f.path));
        }
        let src = Path::new(FILES).join(i.to_string());
        std::fs::write(&src, &f.contents).map_err(|e| format!("writing {}: {e}", f.path))?;
        let at = root.join(rel);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", f.path))?;
            // The image's directories may be symlinks; an absolute one resolves in the
            // agent's root, not the container's, and is not followed there.
            let real = parent
                .canonicalize()
                .map_err(|e| format!("{}: {e}", f.path))?;
            if !real.starts_with(root) {
                return Err(format!(
                    "{}: the image's {} leads out of its root",
                    f.path,
                    parent.strip_prefix(root).unwrap_or(parent).display()
                ));
            }
        }
        // A symlink in the image (/etc/resolv.conf -> ../run/...) is replaced, not followed
        // out of the root.
        if at.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            std::fs::remove_file(&at).map_err(|e| format!("{}: {e}", f.path))?;
        }
        if !at.exists() {
            std::fs::write(&at, b"").map_err(|e| format!("{}: {e}", f.path))?;
        }
        mount(&src.to_string_lossy(), &at, "", libc::MS_BIND, None)
            .map_err(|e| format!("{}: {e}", f.path))?;
    }
    Ok(())
}
