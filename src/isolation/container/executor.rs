//! The last step inside the container: exec the process, and when that fails, say why on
//! the container's stderr and exit with docker's codes (127 not found, 126 cannot invoke).

use std::ffi::CString;
use std::io::Write;

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

/// Exit status when the command does not exist.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed.
pub const EXIT_CANNOT_INVOKE: i32 = 126;

/// Executes `process.args` of the spec with `execvp` (PATH from the container's env).
#[derive(Clone)]
pub struct VesselExecutor;

fn fail(code: i32, message: String) -> ! {
    let _ = writeln!(std::io::stderr(), "vessel: {message}");
    // SAFETY: _exit ends the process without running this forked copy's atexit handlers,
    // which belong to the parent vessel process.
    unsafe { libc::_exit(code) }
}

impl Executor for VesselExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_bytes())).collect() {
            Ok(c) => c,
            Err(_) => fail(
                EXIT_CANNOT_INVOKE,
                format!("{:?}: argument contains a NUL byte", args[0]),
            ),
        };
        let err = match nix::unistd::execvp(&cargs[0], &cargs) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let name = &args[0];
        match err {
            nix::errno::Errno::ENOENT if !name.contains('/') => fail(
                EXIT_NOT_FOUND,
                format!("{name:?}: executable file not found in $PATH"),
            ),
            nix::errno::Errno::ENOENT => fail(
                EXIT_NOT_FOUND,
                format!("{name:?}: no such file or directory"),
            ),
            e => fail(EXIT_CANNOT_INVOKE, format!("{name:?}: cannot execute: {e}")),
        }
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        // Resolution happens at exec time so failures get docker's exit codes, not a
        // runtime error before the process starts.
        Ok(())
    }
}
