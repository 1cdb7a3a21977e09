//! Ctrl-C during a pull or load: the first SIGINT (or SIGTERM) asks the work to
//! stop at the next chunk or tar entry, so temp files and trees are removed and
//! the command exits with "interrupted"; a second one kills the process at once
//! (and the next `Store::open` sweeps what it left).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; restoring the default action makes
    // a second Ctrl-C terminate the process immediately.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Installs the SIGINT/SIGTERM handlers. For commands (`vessel pull`, `vessel
/// load`) that own the process; library callers with their own signal handling
/// should not call it.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and calls signal(), both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True once a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// A reader that fails once a stop was requested, so long copies end promptly.
pub struct Interruptible<R>(pub R);

impl<R: std::io::Read> std::io::Read for Interruptible<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if requested() {
            // Not ErrorKind::Interrupted: readers retry that one.
            return Err(std::io::Error::other("interrupted"));
        }
        self.0.read(buf)
    }
}
