//! Forwarding the signals vessel receives (Ctrl-C, `kill`, terminal resizes) to the
//! container. The handler only writes the signal number to a pipe (async-signal-safe);
//! a thread reads it and acts.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signals a supervising vessel passes on.
pub const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static OWNER_PID: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    // The runtime's cloned processes inherit this handler until they exec; only the
    // process that installed it may write, or a reused descriptor number could be hit.
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let me = unsafe { libc::getpid() };
    if fd >= 0 && me == OWNER_PID.load(Ordering::Relaxed) {
        let b = sig as u8;
        // SAFETY: write is async-signal-safe; the buffer is a valid local byte.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Receives the forwarded signals, in order.
pub struct Signals {
    read: File,
}

impl Signals {
    /// Installs the handlers for [`FORWARDED`].
    pub fn install() -> std::io::Result<Signals> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        OWNER_PID.store(std::process::id() as i32, Ordering::Relaxed);
        PIPE_WRITE.store(w.into_raw_fd(), Ordering::Relaxed);
        for &sig in FORWARDED {
            // SAFETY: the sigaction struct is fully initialised; the handler only calls
            // async-signal-safe functions. SA_RESTART keeps blocking calls from failing.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        // SAFETY: r is an owned descriptor we just created.
        Ok(Signals {
            read: unsafe { File::from_raw_fd(r.into_raw_fd()) },
        })
    }

    /// Blocks until the next signal arrives.
    pub fn next(&mut self) -> Option<i32> {
        let mut b = [0u8; 1];
        self.read.read_exact(&mut b).ok()?;
        Some(b[0] as i32)
    }
}
