//! Isolation backends: how a container's process is started and confined.
//!
//! Both modes implement [`Backend`]; everything above it (records, logs, supervision,
//! `ps`/`stop`/`kill`/`rm`/`exec`, crash recovery) lives in `crate::container` and
//! `crate::cli::containers` and is shared by both.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod cgroup;
pub mod confinement;
pub mod container;
pub mod host_process;
mod launch;
pub mod network;
pub mod options;
pub mod seccomp;
pub mod vm;

pub use launch::{BindMount, LaunchSpec, NetworkMode, ProcessSpec, Resources, VmOptions};

/// Which kind of isolation a container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IsolationKind {
    /// A microVM with its own kernel.
    Vm,
    /// Namespaces and cgroups on the host kernel.
    Container,
}

impl IsolationKind {
    /// The name used on the command line and in `ps`.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationKind::Vm => "vm",
            IsolationKind::Container => "container",
        }
    }

    /// Parses the name stored in a container record.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vm" => Some(IsolationKind::Vm),
            "container" => Some(IsolationKind::Container),
            _ => None,
        }
    }
}

/// Identifies an existing container to a backend (from its record).
#[derive(Debug, Clone)]
pub struct Target {
    /// Container ID.
    pub id: String,
    /// The container's directory under the state root.
    pub dir: PathBuf,
    /// Host PID of the container's main process (container mode), if it has one.
    pub pid: Option<i32>,
}

/// Standard streams handed to a new process. `None` inherits the caller's stream.
/// Ignored when the process has a terminal: then [`Process::take_pty`] returns its master.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
    /// Initial terminal size (rows, columns) of a process with a terminal, set before it
    /// runs so its first look at the size is right.
    pub terminal_size: Option<(u16, u16)>,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called exit with this status.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

/// The end of a process, as reported to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit status or signal.
    pub status: ExitStatus,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl Exit {
    /// The shell convention: the status itself, or 128 + the signal number.
    pub fn code(&self) -> i32 {
        match self.status {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// Failures of a backend.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// This isolation mode cannot run here; the message says why.
    #[error("{0}")]
    Unavailable(String),
    /// Setting up or starting the container failed.
    #[error("{context}: {message}")]
    Runtime {
        /// What was being done.
        context: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The mode cannot honour an option the run asked for (said before anything starts).
    #[error("{0}")]
    Refused(String),
    /// The container did not answer (a hung or stopped VM): only
    /// [`Backend::kill_now`] can end it.
    #[error("{0}")]
    Unresponsive(String),
    /// A host I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl IsolationError {
    /// Builds a [`IsolationError::Runtime`] from any displayable error.
    pub fn runtime(context: &'static str, err: impl std::fmt::Display) -> Self {
        IsolationError::Runtime {
            context,
            message: err.to_string(),
        }
    }

    /// Builds a [`IsolationError::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        IsolationError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A started process (a container's main process or an exec'd one).
///
/// Shared between the thread that waits and those that forward signals and resizes.
pub trait Process: Send + Sync {
    /// Host PID, where the process has one on this kernel.
    fn pid(&self) -> Option<i32>;
    /// The terminal's master side, once, when the process was started with a terminal.
    fn take_pty(&self) -> Option<OwnedFd>;
    /// Delivers a signal to the process.
    fn signal(&self, signal: i32) -> Result<(), IsolationError>;
    /// Tells the process's terminal its new size.
    fn resize(&self, rows: u16, cols: u16) -> Result<(), IsolationError>;
    /// Waits for the process to end (called once).
    fn wait(&self) -> Result<Exit, IsolationError>;
}

/// An isolation mode.
///
/// The contract the lifecycle relies on:
/// - `start` returns once the main process runs (or has failed to); the calling vessel
///   process is the container's supervisor until `Process::wait` returns, and it records
///   `Process::pid` for other vessel processes.
/// - `signal` and `exec` are called from *other* vessel processes (`kill`, `stop`, `rm -f`,
///   `exec`), knowing only the [`Target`] (ID, directory, recorded PID).
/// - `cleanup` is called by the supervisor after `wait`, by `rm`, and by crash recovery
///   from any later vessel process when the supervisor died (possibly mid-`start`): it must
///   kill what is left, release everything outside the container's directory, tolerate
///   partial state, and be idempotent. The lifecycle removes the directory itself.
pub trait Backend {
    /// Whether this mode honours `option` (an exhaustive decision per option, see
    /// [`options`]).
    fn supports(&self, option: options::RunOption) -> options::Support;
    /// Checks the values of a launch before anything is created: refuses what cannot work
    /// here (`IsolationError::Refused`), returns a note for each value it rounds.
    fn validate(&self, spec: &LaunchSpec) -> Result<Vec<String>, IsolationError>;
    /// Creates the container and starts its main process.
    fn start(&self, spec: &LaunchSpec, stdio: Stdio) -> Result<Box<dyn Process>, IsolationError>;
    /// Starts another process inside a running container.
    fn exec(
        &self,
        target: &Target,
        process: &ProcessSpec,
        stdio: Stdio,
    ) -> Result<Box<dyn Process>, IsolationError>;
    /// Signals a container's main process from any vessel process (not only its supervisor).
    /// `Ok` means the signal was delivered, not only asked for.
    fn signal(&self, target: &Target, signal: i32) -> Result<(), IsolationError>;
    /// Ends a running container at once, whatever its processes (or its VM) do, from any
    /// vessel process: what `kill -s KILL`, `stop` and `rm -f` fall back to when the
    /// container does not end by a signal. The supervisor then records the end as a
    /// SIGKILL.
    fn kill_now(&self, target: &Target) -> Result<(), IsolationError>;
    /// Releases everything the container holds on the host except its directory
    /// (processes, mounts, cgroups, runtime state). Idempotent; also used after a crash.
    fn cleanup(&self, target: &Target) -> Result<(), IsolationError>;
}

/// The backend for an isolation mode.
pub fn backend(kind: IsolationKind) -> Box<dyn Backend> {
    match kind {
        IsolationKind::Container => Box::new(container::ContainerBackend),
        IsolationKind::Vm => Box::new(vm::VmBackend),
    }
}
