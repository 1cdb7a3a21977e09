//! Which `vessel run` options each isolation mode honours, decided in one place.
//!
//! Every option that reaches a backend is a [`RunOption`]; each backend answers
//! [`super::Backend::supports`] for every one with an exhaustive `match`, so a new option
//! cannot be added without deciding what each mode does with it. [`check`] runs before
//! anything is created: an option the chosen mode cannot honour is refused in one line that
//! names the option, the mode and what to use instead, never accepted and dropped.

use super::{confinement, IsolationKind};

/// A `vessel run` option as a backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOption {
    /// `--vmm`.
    Vmm,
    /// `--kernel`.
    Kernel,
    /// `--debug`.
    Debug,
    /// `--cpus`.
    Cpus,
    /// `--memory`.
    Memory,
    /// `--pids-limit`.
    PidsLimit,
    /// `-i`.
    Interactive,
    /// `-t`.
    Tty,
    /// `-e`, `--env-file`: the process's environment.
    Env,
    /// `-w`.
    Workdir,
    /// `-u`.
    User,
    /// `--entrypoint`.
    Entrypoint,
    /// `-v HOST:CTR`.
    Volume,
    /// `--tmpfs`.
    Tmpfs,
    /// `--read-only`.
    ReadOnly,
    /// `--network default` (also what no `--network` means).
    NetworkDefault,
    /// `-p`.
    Publish,
    /// `-P`.
    PublishAll,
    /// `--network none`.
    NetworkNone,
    /// `--network host`.
    NetworkHost,
    /// `--hostname`.
    Hostname,
    /// `--cap-add`.
    CapAdd,
    /// `--cap-drop`.
    CapDrop,
}

/// What each `vessel run` flag is, by its clap id: options a backend decides on, or `None`
/// for those the lifecycle alone handles (`--name`, `--rm`, `-d`, `--pull`, ...). A test
/// walks every flag clap knows through this, so a new flag cannot skip the decision.
#[cfg(test)]
pub fn of_flag(id: &str) -> Option<Option<&'static [RunOption]>> {
    use RunOption::*;
    Some(match id {
        "isolation" | "rm" | "detach" | "name" | "pull" | "argv" => None,
        "vmm" => Some(&[Vmm]),
        "kernel" => Some(&[Kernel]),
        "debug" => Some(&[Debug]),
        "cpus" => Some(&[Cpus]),
        "memory" => Some(&[Memory]),
        "pids_limit" => Some(&[PidsLimit]),
        "interactive" => Some(&[Interactive]),
        "tty" => Some(&[Tty]),
        "env" | "env_file" => Some(&[Env]),
        "workdir" => Some(&[Workdir]),
        "user" => Some(&[User]),
        "entrypoint" => Some(&[Entrypoint]),
        "volume" => Some(&[Volume]),
        "tmpfs" => Some(&[Tmpfs]),
        "read_only" => Some(&[ReadOnly]),
        "network" => Some(&[NetworkDefault, NetworkNone, NetworkHost]),
        "publish" => Some(&[Publish]),
        "publish_all" => Some(&[PublishAll]),
        "hostname" => Some(&[Hostname]),
        "cap_add" => Some(&[CapAdd]),
        "cap_drop" => Some(&[CapDrop]),
        _ => return None,
    })
}

impl RunOption {
    /// Every option, for the tests that hold each backend to a decision.
    #[cfg(test)]
    pub const ALL: &'static [RunOption] = &[
        RunOption::Vmm,
        RunOption::Kernel,
        RunOption::Debug,
        RunOption::Cpus,
        RunOption::Memory,
        RunOption::PidsLimit,
        RunOption::Interactive,
        RunOption::Tty,
        RunOption::Env,
        RunOption::Workdir,
        RunOption::User,
        RunOption::Entrypoint,
        RunOption::Volume,
        RunOption::Tmpfs,
        RunOption::ReadOnly,
        RunOption::NetworkDefault,
        RunOption::Publish,
        RunOption::PublishAll,
        RunOption::NetworkNone,
        RunOption::NetworkHost,
        RunOption::Hostname,
        RunOption::CapAdd,
        RunOption::CapDrop,
    ];

    /// The option as the user typed it.
    pub fn flag(self) -> &'static str {
        match self {
            RunOption::Vmm => "--vmm",
            RunOption::Kernel => "--kernel",
            RunOption::Debug => "--debug",
            RunOption::Cpus => "--cpus",
            RunOption::Memory => "--memory",
            RunOption::PidsLimit => "--pids-limit",
            RunOption::Interactive => "--interactive",
            RunOption::Tty => "--tty",
            RunOption::Env => "--env",
            RunOption::Workdir => "--workdir",
            RunOption::User => "--user",
            RunOption::Entrypoint => "--entrypoint",
            RunOption::Volume => "--volume",
            RunOption::Tmpfs => "--tmpfs",
            RunOption::ReadOnly => "--read-only",
            RunOption::NetworkDefault => "--network default",
            RunOption::Publish => "--publish",
            RunOption::PublishAll => "--publish-all",
            RunOption::NetworkNone => "--network none",
            RunOption::NetworkHost => "--network host",
            RunOption::Hostname => "--hostname",
            RunOption::CapAdd => "--cap-add",
            RunOption::CapDrop => "--cap-drop",
        }
    }
}

/// A backend's answer for one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Honoured.
    Yes,
    /// Refused; the text says why and what to use instead.
    No(&'static str),
}

/// What a `vessel run` asks for, as far as backends care: which options were given.
/// Built from the command line before anything else happens (before even a pull), so a
/// refusal comes first.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Options given.
    pub options: Vec<RunOption>,
    /// `--cap-add` names.
    pub cap_add: Vec<String>,
    /// `--cap-drop` names.
    pub cap_drop: Vec<String>,
}

impl Asked {
    /// Adds `option` when `given`.
    pub fn with(mut self, given: bool, option: RunOption) -> Self {
        if given {
            self.options.push(option);
        }
        self
    }
}

/// Refuses, in one line, the first option `backend` (of `kind`) cannot honour, and
/// capability names no kernel knows.
pub fn check(
    kind: IsolationKind,
    backend: &dyn super::Backend,
    asked: &Asked,
) -> Result<(), super::IsolationError> {
    for o in &asked.options {
        if let Support::No(instead) = backend.supports(*o) {
            return Err(super::IsolationError::Refused(format!(
                "{} is not available with {} isolation: {instead}",
                o.flag(),
                kind.as_str()
            )));
        }
    }
    confinement::capabilities(&asked.cap_add, &asked.cap_drop)
        .map_err(|e| super::IsolationError::Refused(e.to_string()))?;
    Ok(())
}
