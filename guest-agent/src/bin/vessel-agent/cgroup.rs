//! The container's cgroup inside the guest (cgroup v1, mounted in the agent's view only):
//! the `devices` controller with docker's rules, so that a process with `CAP_MKNOD` (in
//! docker's default set) can make a node for a disk or for the agent's channel but not open
//! it, as container mode's device cgroup does on the host; and the `pids` controller for
//! `--pids-limit`.
//!
//! The relay of every container process joins it before it forks the process proper
//! ([`Cgroup::join`]), so nothing of the container runs outside it even for an instant.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::mounts::mount;

const ROOT: &str = "/sys/fs/cgroup";

/// docker's device rules: any node may be made (`m`), only these opened.
const ALLOW: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

/// The container's cgroup.
pub struct Cgroup {
    /// `cgroup.procs` of each controller's container group.
    procs: Vec<CString>,
}

impl Cgroup {
    /// Mounts the controllers and makes the container's group with its rules and, with
    /// `pids_limit`, its process limit.
    pub fn create(pids_limit: Option<i64>) -> io::Result<Cgroup> {
        mount(
            "cgroup-root",
            Path::new(ROOT),
            "tmpfs",
            libc::MS_NOSUID,
            Some("mode=755"),
        )?;
        let group = |controller: &str| -> io::Result<std::path::PathBuf> {
            let dir = Path::new(ROOT).join(controller);
            mount(
                controller,
                &dir,
                "cgroup",
                libc::MS_NOSUID,
                Some(controller),
            )?;
            let group = dir.join("vessel");
            std::fs::create_dir_all(&group)?;
            Ok(group)
        };
        let devices = group("devices")?;
        std::fs::write(devices.join("devices.deny"), "a")?;
        for rule in ALLOW {
            std::fs::write(devices.join("devices.allow"), rule)?;
        }
        let mut groups = vec![devices];
        if let Some(max) = pids_limit {
            let pids = group("pids")?;
            std::fs::write(pids.join("pids.max"), max.to_string())?;
            groups.push(pids);
        }
        let procs = groups
            .iter()
            .map(|g| {
                CString::new(g.join("cgroup.procs").as_os_str().as_encoded_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
            })
            .collect::<io::Result<_>>()?;
        Ok(Cgroup { procs })
    }

    /// In a forked child: moves the calling process into the group. Async-signal-safe.
    pub fn join(&self) -> io::Result<()> {
        for procs in &self.procs {
            // SAFETY: open, write and close on a NUL-terminated path and a static buffer.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" is the writer itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}
