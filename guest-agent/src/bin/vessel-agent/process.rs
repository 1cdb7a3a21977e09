//! Starting one container process: enter the container's namespaces and root
//! ([`crate::confine`]), switch user, drop privileges, wire its stdio to pipes or a
//! pseudo-terminal.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use vessel_agent::{ProcessSpec, SpawnErrorKind};

use crate::cgroup::Cgroup;
use crate::confine::{Entry, Privileges};

/// A started process and the host side of its stdio.
pub struct Spawned {
    /// Guest pid.
    pub pid: u32,
    /// Where stdin bytes go (a pipe, or the terminal master).
    pub stdin: File,
    /// Output sources: (is_stderr, reader). One entry (the master) with a terminal.
    pub outputs: Vec<(bool, File)>,
    /// The terminal master, for resizes.
    pub tty: Option<File>,
}

/// Why a process did not start.
pub struct SpawnError {
    /// Exit-code classification.
    pub kind: SpawnErrorKind,
    /// Reason.
    pub message: String,
}

fn other(message: String) -> SpawnError {
    SpawnError {
        kind: SpawnErrorKind::Other,
        message,
    }
}

/// Starts `spec` in the container whose root (in the agent's view) is `root`, entering it
/// as `entry` says, with `privileges` (none: the agent's own, which only a container
/// without a confinement gets).
pub fn spawn(
    root: &Path,
    spec: &ProcessSpec,
    entry: Arc<Entry>,
    cgroup: Arc<Cgroup>,
    privileges: Option<Arc<Privileges>>,
) -> Result<Spawned, SpawnError> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| other("no command given".into()))?;
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let host_cwd = root.join(cwd.trim_start_matches('/'));
    if !host_cwd.is_dir() {
        // docker creates a missing working directory.
        std::fs::create_dir_all(&host_cwd)
            .map_err(|e| other(format!("working directory {cwd}: {e}")))?;
        // SAFETY: chown on a valid NUL-terminated path; failures only leave root ownership.
        if let Ok(p) = CString::new(host_cwd.as_os_str().as_encoded_bytes()) {
            unsafe { libc::chown(p.as_ptr(), spec.uid, spec.gid) };
        }
    }
    let cwd_c = CString::new(cwd).map_err(|e| other(e.to_string()))?;
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    let (uid, gid, tty) = (spec.uid, spec.gid, spec.tty);

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).env_clear();
    for kv in &spec.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => cmd.env(kv, ""),
        };
    }
    let mut master = None;
    if tty {
        let (m, s) = openpty().map_err(|e| other(format!("allocating a terminal: {e}")))?;
        let dup = |f: &OwnedFd| f.try_clone().map_err(|e| other(e.to_string()));
        cmd.stdin(Stdio::from(dup(&s)?))
            .stdout(Stdio::from(dup(&s)?))
            .stderr(Stdio::from(s));
        master = Some(File::from(m));
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared
    // before the fork (CStrings, Vecs and descriptors that are not reallocated or closed).
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            cgroup.join()?;
            entry.enter()?;
            check(libc::chdir(cwd_c.as_ptr()))?;
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty {
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
            if let Some(p) = &privileges {
                p.drop_capabilities()?;
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            if let Some(p) = &privileges {
                p.lock()?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| classify(program, e))?;
    let pid = child.id();
    let (stdin, outputs) = match master {
        Some(ref m) => {
            let r = m.try_clone().map_err(|e| other(e.to_string()))?;
            let w = m.try_clone().map_err(|e| other(e.to_string()))?;
            (w, vec![(false, r)])
        }
        None => {
            let mut c = child;
            let stdin = File::from(OwnedFd::from(c.stdin.take().expect("piped")));
            let out = File::from(OwnedFd::from(c.stdout.take().expect("piped")));
            let err = File::from(OwnedFd::from(c.stderr.take().expect("piped")));
            (stdin, vec![(false, out), (true, err)])
        }
    };
    Ok(Spawned {
        pid,
        stdin,
        outputs,
        tty: master,
    })
}

fn classify(program: &str, e: io::Error) -> SpawnError {
    let kind = match e.raw_os_error() {
        Some(libc::ENOENT) => SpawnErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
            SpawnErrorKind::NotExecutable
        }
        _ => SpawnErrorKind::Other,
    };
    SpawnError {
        kind,
        message: format!("exec {program}: {e}"),
    }
}

/// A new pseudo-terminal pair, both ends close-on-exec (the child gets dup2'd copies).
fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two fds into the provided ints; name/termios/winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh fds that we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [&m, &s] {
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}

/// Sets the terminal size of a pseudo-terminal master.
pub fn resize(master: &File, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer on a valid fd.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}
