//! Confining the container's processes inside the guest as container mode confines them on
//! the host: a PID namespace and a mount namespace of their own (the agent, PID 1 of the
//! guest, and its channel device are neither visible nor reachable), runc's masked and
//! read-only paths, docker's capability set, no_new_privs and docker's seccomp filter.
//!
//! Everything a child needs is prepared in the agent before the fork ([`Entry`],
//! [`Privileges`]); the child (the `pre_exec` of [`crate::process::spawn`]) then only makes
//! system calls.
//!
//! A PID namespace is entered by a fork: a process cannot move itself, and the agent
//! cannot move its own future children (its threads would then fail to start). So the
//! agent's child is a relay that stays outside the container: it unshares (first process)
//! or joins (exec sessions) the PID namespace, forks the process proper, forwards every
//! signal it gets to it, and exits as it exits, so the agent sees the relay as the process.
//! The process proper dies with the relay (`PR_SET_PDEATHSIG`), which is how a SIGKILL
//! the relay cannot forward still reaches it.
//!
//! The first process (stream 0) is PID 1 of the new PID namespace; it unshares the mount
//! namespace, mounts its own /proc, masks paths, and moves the container's root onto `/`
//! (pivot_root does not work from the initramfs the agent runs on; runc does the same
//! there) before it chroots. Exec sessions join its PID and mount namespaces and its root
//! through `/proc/PID/ns/{pid,mnt}` and `/proc/PID/root`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use vessel_agent::{Confinement, RootfsSpec};

/// The relay's process proper, for its signal handler.
static PROPER: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    // SAFETY: kill is async-signal-safe; the pid was stored before the handler was set.
    unsafe { libc::kill(PROPER.load(Ordering::Relaxed), sig) };
}

/// Forks inside the relay: returns in the process proper; the relay itself forwards
/// signals, waits, and exits as the process proper does, never returning.
///
/// # Safety
/// Only in a forked, single-threaded child: it makes raw system calls and `_exit`s.
unsafe fn fork_and_relay() -> io::Result<()> {
    // SAFETY: fork in the single-threaded child.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: prctl with integer arguments. Dying with the relay is how an uncatchable
        // SIGKILL of the relay reaches this process. (Whether the relay died before this
        // line cannot be asked: getppid() is 0 for a parent outside the PID namespace. The
        // agent only kills a relay after its Started, long after this.)
        unsafe { check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))? };
        return Ok(());
    }
    PROPER.store(pid, Ordering::Relaxed);
    // SAFETY: sigaction with a handler that only calls kill; close_range, waitpid, signal,
    // sigprocmask, kill and _exit are all system calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forward as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in 1..=64 {
            if ![libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD].contains(&sig) {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        // The relay holds nothing open: the pipes' readers see their end when the
        // process proper's copies close.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(125);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// How a process enters the container's namespaces.
pub enum Entry {
    /// The container's first process: a new mount namespace, set up from here.
    First {
        /// The root to move onto `/` (absolute, in the agent's view).
        root: CString,
        /// `<root>/proc`.
        proc_dir: CString,
        /// Paths to hide: (absolute path under the root, is a directory).
        masked: Vec<(CString, bool)>,
        /// Paths to make read-only (absolute, under the root).
        readonly: Vec<CString>,
        /// `<root>/dev/null`, bound over masked files.
        dev_null: CString,
    },
    /// A later process: the first one's namespaces and root.
    Join {
        /// `/proc/<first>/ns/pid`.
        pid_ns: OwnedFd,
        /// `/proc/<first>/ns/mnt`.
        mnt_ns: OwnedFd,
        /// `/proc/<first>/root`.
        root: OwnedFd,
    },
}

impl Entry {
    /// The entry of a container's first process, whose root is `root`.
    pub fn first(root: &Path, spec: &RootfsSpec) -> io::Result<Entry> {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        // What a masked path is (file or directory) is read from the agent's own /proc
        // and /sys: the same kernel's, as the container's will be. Absent ones are skipped.
        let mut masked = Vec::new();
        for p in &spec.masked_paths {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                masked.push((c(&under(p))?, m.is_dir()));
            }
        }
        let readonly = spec
            .readonly_paths
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| c(&under(p)))
            .collect::<io::Result<_>>()?;
        Ok(Entry::First {
            root: c(root)?,
            proc_dir: c(&root.join("proc"))?,
            masked,
            readonly,
            dev_null: c(&root.join("dev/null"))?,
        })
    }

    /// The entry of a later process of the container whose first process (its PID 1, in
    /// the agent's numbering) is `pid`.
    pub fn join(pid: u32) -> io::Result<Entry> {
        let open = |what: &str| -> io::Result<OwnedFd> {
            let f = std::fs::File::open(format!("/proc/{pid}/{what}"))?;
            Ok(OwnedFd::from(f))
        };
        Ok(Entry::Join {
            pid_ns: open("ns/pid")?,
            mnt_ns: open("ns/mnt")?,
            root: open("root")?,
        })
    }

    /// In the agent's child: enters the PID namespace through a relay ([`fork_and_relay`]),
    /// then the mount namespace and the root. Returns in the process proper only.
    /// Async-signal-safe.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: unshare and setns on integers and a descriptor opened before the fork;
        // then the relay fork, in this single-threaded child.
        unsafe {
            match self {
                Entry::First { .. } => check(libc::unshare(libc::CLONE_NEWPID))?,
                Entry::Join { pid_ns, .. } => {
                    check(libc::setns(pid_ns.as_raw_fd(), libc::CLONE_NEWPID))?
                }
            }
            fork_and_relay()?;
        }
        match self {
            Entry::First {
                root,
                proc_dir,
                masked,
                readonly,
                dev_null,
            } => {
                // SAFETY (all calls below): system calls on NUL-terminated strings and
                // integers prepared before the fork.
                unsafe {
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE))?;
                    // A /proc of the new PID namespace: it shows the container's processes.
                    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                    check(mount(Some(c"proc"), proc_dir, Some(c"proc"), nosuid))?;
                    for (path, is_dir) in masked {
                        if *is_dir {
                            check(mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY))?;
                        } else {
                            check(mount(Some(dev_null), path, None, libc::MS_BIND))?;
                        }
                    }
                    for path in readonly {
                        check(mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC))?;
                        check(mount(
                            Some(path),
                            path,
                            None,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        ))?;
                    }
                    check(libc::chdir(root.as_ptr()))?;
                    check(mount(Some(c"."), c"/", None, libc::MS_MOVE))?;
                    check(libc::chroot(c".".as_ptr()))?;
                }
            }
            Entry::Join { mnt_ns, root, .. } => {
                // SAFETY: setns, fchdir and chroot on descriptors opened before the fork.
                unsafe {
                    check(libc::setns(mnt_ns.as_raw_fd(), libc::CLONE_NEWNS))?;
                    check(libc::fchdir(root.as_raw_fd()))?;
                    check(libc::chroot(c".".as_ptr()))?;
                }
            }
        }
        Ok(())
    }
}

/// A process's privileges, ready to apply in the child.
pub struct Privileges {
    /// Capabilities to drop from the bounding set.
    drop: Vec<libc::c_ulong>,
    no_new_privs: bool,
    filter: Vec<libc::sock_filter>,
}

impl Privileges {
    /// Prepares `c` for this kernel (whose last capability is read from /proc).
    pub fn new(c: &Confinement) -> io::Result<Privileges> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let drop = (0..=last)
            .filter(|n| !c.capabilities.contains(n))
            .map(libc::c_ulong::from)
            .collect();
        if !c.seccomp.len().is_multiple_of(8) || c.seccomp.len() / 8 > u16::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a {}-byte seccomp program", c.seccomp.len()),
            ));
        }
        let filter = c
            .seccomp
            .chunks_exact(8)
            .map(|i| libc::sock_filter {
                code: u16::from_le_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Privileges {
            drop,
            no_new_privs: c.no_new_privs,
            filter,
        })
    }

    /// In the child, while still root: narrows the bounding set (what the process keeps
    /// across its exec as root; a non-root process keeps nothing anyway).
    pub fn drop_capabilities(&self) -> io::Result<()> {
        for cap in &self.drop {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) })?;
        }
        Ok(())
    }

    /// In the child, the last thing before exec: no_new_privs and the seccomp filter.
    pub fn lock(&self) -> io::Result<()> {
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        if !self.filter.is_empty() {
            let prog = libc::sock_fprog {
                len: self.filter.len() as u16,
                filter: self.filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points at `self.filter`, alive for the call; the kernel
            // copies the program.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                )
            };
            check(rc as libc::c_int)?;
        }
        Ok(())
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2) on C strings; `None` passes a null pointer.
///
/// # Safety
/// Only system calls: safe to call in a forked child.
unsafe fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
) -> libc::c_int {
    let p = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string or null, as mount(2) accepts.
    unsafe {
        libc::mount(
            p(source),
            target.as_ptr(),
            p(fstype),
            flags,
            std::ptr::null(),
        )
    }
}
