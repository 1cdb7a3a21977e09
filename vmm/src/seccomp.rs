//! Seccomp filters per thread role, as Firecracker has them: whatever a guest makes a
//! device do, the thread doing it can make only the system calls its role needs.
//!
//! The allow-lists are `vmm/seccomp/x86_64.json` (seccompiler's JSON format, with a comment
//! for every entry saying why it is there), compiled when the VMM starts:
//! - `vcpu`: each vCPU thread, installed by the thread itself before its first `KVM_RUN`.
//!   `ioctl` only with `KVM_RUN` (and the two reads of a failure report).
//! - `main`: the event loop, installed after the vCPU threads are started and before the
//!   loop first waits.
//!
//! Anything else traps: [`install_reporter`]'s SIGSYS handler writes one line naming the
//! system call to stderr (the VMM's log) and ends the process with
//! [`crate::exit::EXIT_SECCOMP`], which `vessel run` reports as such. docs/vmm.md says how
//! the lists were derived.

use std::collections::HashMap;

use seccompiler::{BpfProgram, TargetArch};

use crate::error::VmmError;

/// The reviewable source of the filters.
const FILTERS_JSON: &str = include_str!("../seccomp/x86_64.json");

/// The compiled filter of each role.
#[derive(Debug, Clone)]
pub struct Filters {
    /// The event loop's.
    pub main: BpfProgram,
    /// Each vCPU thread's.
    pub vcpu: BpfProgram,
}

impl Filters {
    /// Compiles the filters for this architecture.
    pub fn compile() -> Result<Filters, VmmError> {
        let err = |e: String| VmmError::Seccomp(e);
        let mut map: HashMap<String, BpfProgram> =
            seccompiler::compile_from_json(FILTERS_JSON.as_bytes(), TargetArch::x86_64)
                .map_err(|e| err(e.to_string()))?;
        let mut take = |role: &str| {
            map.remove(role)
                .ok_or_else(|| err(format!("no `{role}` filter in seccomp/x86_64.json")))
        };
        Ok(Filters {
            main: take("main")?,
            vcpu: take("vcpu")?,
        })
    }
}

/// Installs `filter` on the calling thread (no_new_privs is set first, as the kernel
/// requires of an unprivileged caller).
pub fn apply(filter: &BpfProgram) -> Result<(), VmmError> {
    seccompiler::apply_filter(filter).map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Writes `n` in decimal into `buf`, returning the digits (no allocation: for a signal
/// handler).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `struct siginfo`'s SIGSYS member: after signo, errno, code and padding (16 bytes),
    // the call address (8) and then the system call number (int).
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; for SIGSYS the
    // number is at offset 24.
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let mut digits = [0u8; 20];
    let nr = decimal(nr.max(0) as u64, &mut digits);
    let parts: [&[u8]; 3] = [
        b"vessel-vmm: seccomp: forbidden system call ",
        nr,
        b"; the VM is ended\n",
    ];
    for p in parts {
        // SAFETY: write(2) of a valid buffer is async-signal-safe.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(crate::exit::EXIT_SECCOMP) };
}

/// Installs the SIGSYS handler that reports a forbidden system call and ends the VMM.
pub fn install_reporter() -> Result<(), VmmError> {
    // SAFETY: a zeroed sigaction with a handler that only makes async-signal-safe calls.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(VmmError::Io(
            "installing the SIGSYS handler",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Debug builds only (the test hook): with `VESSEL_VMM_SECCOMP_SELFTEST=<role>`, the thread
/// of that role makes a forbidden call right after its filter is installed.
pub fn selftest(role: &str) {
    if cfg!(debug_assertions)
        && std::env::var("VESSEL_VMM_SECCOMP_SELFTEST").is_ok_and(|r| r == role)
    {
        // SAFETY: getppid has no preconditions; it is on neither allow-list.
        unsafe { libc::getppid() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_numbers_print() {
        let f = Filters::compile().unwrap();
        assert!(f.main.len() > 30 && f.vcpu.len() > 30);
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(110, &mut b), b"110");
        assert_eq!(decimal(u64::MAX, &mut b), b"18446744073709551615");
    }
}
