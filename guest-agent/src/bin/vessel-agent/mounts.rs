//! The pseudo filesystems the agent itself needs before anything else.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// Mounts `fstype` at `target` (a directory created if missing) with flags and data.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    // A missing mount point is made a directory; an existing file is a file's mount point.
    if !target.exists() {
        std::fs::create_dir_all(target)?;
    }
    let src = CString::new(source)?;
    let tgt = CString::new(target.as_os_str().as_encoded_bytes())?;
    let fs = CString::new(fstype)?;
    let data = data.map(CString::new).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void);
    // SAFETY: every pointer is a valid NUL-terminated string (or null for data) that
    // outlives the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, data_ptr) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount {fstype} on {}: {e}", target.display()),
        ));
    }
    Ok(())
}

/// /proc, /sys, /dev (devtmpfs, so device nodes appear as drivers probe), /dev/pts, /run, /tmp.
pub fn early() -> io::Result<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", Path::new("/proc"), "proc", nosuid, None)?;
    mount("sysfs", Path::new("/sys"), "sysfs", nosuid, None)?;
    // The kernel may already have mounted devtmpfs on /dev (CONFIG_DEVTMPFS_MOUNT).
    if let Err(e) = mount(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        libc::MS_NOSUID,
        None,
    ) {
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    mount(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount(
        "tmpfs",
        Path::new("/run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    mount(
        "tmpfs",
        Path::new("/tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    Ok(())
}
