//! Container isolation: the host's kernel, behind namespaces, cgroups, capabilities and
//! seccomp, on an overlayfs root. The runtime mechanics (namespaces, pivot_root, mounts,
//! devices, masked paths, cgroups, capabilities, seccomp) are libcontainer's (youki),
//! driven by an OCI runtime spec; vessel adds the overlay, loopback, the console socket and
//! docker's exit codes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroup;
use super::options::{RunOption, Support};
use super::{
    Backend, Exit, ExitStatus, IsolationError, LaunchSpec, NetworkMode, Process, Stdio, Target,
};
use crate::isolation::ProcessSpec;

mod console;
mod executor;
mod network;
mod overlay;
mod pasta;
mod spec;

/// The host-shared-kernel backend.
pub struct ContainerBackend;

fn rootfs_dir(dir: &Path) -> PathBuf {
    dir.join("rootfs")
}

fn runtime_dir(dir: &Path) -> PathBuf {
    dir.join("runtime")
}

fn builder(
    id: &str,
    dir: &Path,
    stdio: Stdio,
    console: Option<&console::ConsoleSocket>,
) -> Result<ContainerBuilder, IsolationError> {
    let runtime = runtime_dir(dir);
    std::fs::create_dir_all(&runtime)
        .map_err(|e| IsolationError::io(format!("creating {}", runtime.display()), e))?;
    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(executor::VesselExecutor)
        .with_root_path(&runtime)
        .map_err(|e| IsolationError::runtime("preparing the runtime", e))?
        .with_console_socket(console.map(|c| c.path().to_path_buf()));
    if console.is_none() {
        if let Some(fd) = stdio.stdin {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            b = b.with_stderr(fd);
        }
    }
    Ok(b)
}

fn require_root() -> Result<(), IsolationError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(IsolationError::Unavailable(
            "container isolation needs root (namespaces, overlayfs and cgroups)".into(),
        ))
    }
}

impl ContainerBackend {
    fn start_mounted(
        &self,
        spec: &LaunchSpec,
        stdio: Stdio,
    ) -> Result<Box<dyn Process>, IsolationError> {
        let rootfs = rootfs_dir(&spec.dir);
        overlay::mkdir_in_root(&rootfs, &spec.process.cwd)?;
        let bundle = spec.dir.join("bundle");
        std::fs::create_dir_all(&bundle)
            .map_err(|e| IsolationError::io(format!("creating {}", bundle.display()), e))?;
        let etc = spec.dir.join("etc");
        std::fs::create_dir_all(&etc)
            .map_err(|e| IsolationError::io(format!("creating {}", etc.display()), e))?;
        for (name, contents) in
            crate::isolation::network::etc_files(&spec.process.hostname, spec.network)
        {
            std::fs::write(etc.join(name), contents)
                .map_err(|e| IsolationError::io(format!("writing /etc/{name}"), e))?;
        }
        let config = spec::build(spec, &rootfs)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&config).unwrap_or_default(),
        )
        .map_err(|e| IsolationError::io("writing config.json", e))?;

        let console = if spec.process.terminal {
            Some(console::ConsoleSocket::bind(&spec.id)?)
        } else {
            None
        };
        let size = stdio.terminal_size;
        let mut container = builder(&spec.id, &spec.dir, stdio, console.as_ref())?
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(spec.process.terminal)
            .build()
            .map_err(|e| IsolationError::runtime("creating the container", e))?;
        let pid = container
            .pid()
            .ok_or_else(|| IsolationError::runtime("creating the container", "no init pid"))?;
        let pty = console.as_ref().map(|c| c.receive()).transpose()?;
        match spec.network {
            NetworkMode::None => network::loopback_up(pid.as_raw())?,
            NetworkMode::Default => pasta::start(&spec.dir, pid.as_raw(), &spec.ports)?,
            NetworkMode::Host => {}
        }
        let process = ContainerProcess::new(pid.as_raw(), Some(spec.id.clone()), pty);
        if let Some((rows, cols)) = size {
            process.resize(rows, cols)?;
        }
        container
            .start()
            .map_err(|e| IsolationError::runtime("starting the container", e))?;
        Ok(Box::new(process))
    }
}

impl Backend for ContainerBackend {
    fn validate(&self, spec: &LaunchSpec) -> Result<Vec<String>, IsolationError> {
        // The kernel's and docker's bounds for cgroup limits.
        let refuse = |m: String| Err(IsolationError::Refused(m));
        if let Some(m) = spec.resources.memory {
            if m < 6 << 20 {
                return refuse(format!("--memory {m}: the minimum memory limit is 6m"));
            }
        }
        if let Some(c) = spec.resources.cpus {
            let host = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if !(0.01..=host).contains(&c) {
                return refuse(format!(
                    "--cpus {c}: the range of CPUs is from 0.01 to {host}"
                ));
            }
        }
        if spec.network == NetworkMode::Default {
            crate::isolation::network::helper::binary("pasta").map_err(IsolationError::Refused)?;
        }
        if let Some(p) = spec.resources.pids {
            if p < 1 {
                return refuse(format!("--pids-limit {p}: must be at least 1"));
            }
        }
        Ok(Vec::new())
    }

    fn supports(&self, option: RunOption) -> Support {
        use RunOption::*;
        match option {
            Vmm | Kernel | Debug => Support::No(
                "it chooses or shows the VM that runs a container; drop it, or run with \
                 --isolation vm",
            ),
            Cpus | Memory | PidsLimit | Interactive | Tty | Env | Workdir | User | Entrypoint
            | Volume | Tmpfs | ReadOnly | NetworkNone | NetworkHost | Hostname | CapAdd
            | CapDrop | NetworkDefault | Publish | PublishAll => Support::Yes,
        }
    }

    fn start(&self, spec: &LaunchSpec, stdio: Stdio) -> Result<Box<dyn Process>, IsolationError> {
        require_root()?;
        overlay::mount_overlay(
            &spec.image_rootfs,
            &spec.dir.join("upper"),
            &spec.dir.join("work"),
            &rootfs_dir(&spec.dir),
        )?;
        let started = self.start_mounted(spec, stdio);
        if started.is_err() {
            let _ = self.cleanup(&Target {
                id: spec.id.clone(),
                dir: spec.dir.clone(),
                pid: None,
            });
        }
        started
    }

    fn exec(
        &self,
        target: &Target,
        process: &ProcessSpec,
        stdio: Stdio,
    ) -> Result<Box<dyn Process>, IsolationError> {
        require_root()?;
        let console = if process.terminal {
            Some(console::ConsoleSocket::bind(&target.id)?)
        } else {
            None
        };
        // The whole process goes to libcontainer as a process.json: its tenant builder
        // takes the terminal flag from nowhere else, and this keeps the container's
        // capabilities and no_new_privs from its spec.
        let config: serde_json::Value = std::fs::read(target.dir.join("bundle/config.json"))
            .map_err(|e| IsolationError::io("reading the container's runtime spec", e))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| IsolationError::runtime("reading the container's runtime spec", e))
            })?;
        let mut proc = config["process"].clone();
        proc["args"] = serde_json::json!(process.args);
        proc["env"] = serde_json::json!(process.env);
        proc["cwd"] = serde_json::json!(process.cwd);
        proc["terminal"] = serde_json::json!(process.terminal);
        proc["user"] = serde_json::json!({
            "uid": process.uid,
            "gid": process.gid,
            "additionalGids": process.additional_gids,
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let proc_file =
            runtime_dir(&target.dir).join(format!("exec-{}-{nanos}.json", std::process::id()));
        std::fs::write(&proc_file, serde_json::to_vec(&proc).unwrap_or_default())
            .map_err(|e| IsolationError::io("writing the exec process spec", e))?;
        let size = stdio.terminal_size;
        let built = builder(&target.id, &target.dir, stdio, console.as_ref()).and_then(|b| {
            b.as_tenant()
                .with_process(Some(&proc_file))
                .with_detach(process.terminal)
                .build()
                .map_err(|e| IsolationError::runtime("starting the process in the container", e))
        });
        let _ = std::fs::remove_file(&proc_file);
        let pid = built?;
        let pty = console.as_ref().map(|c| c.receive()).transpose()?;
        let process = ContainerProcess::new(pid.as_raw(), None, pty);
        if let Some((rows, cols)) = size {
            // The tenant already runs: as early as the runtime allows.
            process.resize(rows, cols)?;
        }
        Ok(Box::new(process))
    }

    fn signal(&self, target: &Target, signal: i32) -> Result<(), IsolationError> {
        let pid = target
            .pid
            .ok_or_else(|| IsolationError::runtime("signalling", "the container is not running"))?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } < 0 {
            return Err(IsolationError::io(
                "signalling the container",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn kill_now(&self, target: &Target) -> Result<(), IsolationError> {
        // Every process of the container's cgroup, the main one first: its end ends the
        // PID namespace, and with it everything a SIGKILL could not reach on its own.
        if let Some(pid) = target.pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        cgroup::kill_all(&target.id);
        Ok(())
    }

    fn cleanup(&self, target: &Target) -> Result<(), IsolationError> {
        let state = runtime_dir(&target.dir).join(&target.id);
        if state.join("state.json").exists() {
            match Container::load(state.clone()) {
                Ok(mut c) => {
                    if let Err(e) = c.delete(true) {
                        // Fall through to the manual cleanup below.
                        eprintln!("vessel: warning: runtime cleanup of {}: {e}", target.id);
                    }
                }
                Err(e) => eprintln!("vessel: warning: loading runtime state: {e}"),
            }
        }
        pasta::cleanup(&target.dir);
        cgroup::remove(&target.id);
        console::sweep_stale();
        overlay::unmount(&rootfs_dir(&target.dir))?;
        for d in [runtime_dir(&target.dir), target.dir.join("bundle")] {
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .map_err(|e| IsolationError::io(format!("removing {}", d.display()), e))?;
            }
        }
        Ok(())
    }
}

/// A process started by libcontainer; it is a child of this vessel process.
struct ContainerProcess {
    pid: i32,
    /// Set for a container's main process: its cgroup tells whether the OOM killer struck.
    container_id: Option<String>,
    pty: Mutex<Option<OwnedFd>>,
    /// Kept for resizes after the master was handed out.
    pty_control: Option<OwnedFd>,
}

impl ContainerProcess {
    fn new(pid: i32, container_id: Option<String>, pty: Option<OwnedFd>) -> Self {
        let pty_control = pty.as_ref().and_then(|p| p.try_clone().ok());
        ContainerProcess {
            pid,
            container_id,
            pty: Mutex::new(pty),
            pty_control,
        }
    }
}

impl Process for ContainerProcess {
    fn pid(&self) -> Option<i32> {
        Some(self.pid)
    }

    fn take_pty(&self) -> Option<OwnedFd> {
        self.pty.lock().ok()?.take()
    }

    fn signal(&self, signal: i32) -> Result<(), IsolationError> {
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(self.pid, signal) } < 0 {
            return Err(IsolationError::io(
                "signalling the process",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), IsolationError> {
        let Some(pty) = &self.pty_control else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(IsolationError::io(
                "resizing the terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn wait(&self) -> Result<Exit, IsolationError> {
        let status = loop {
            match waitpid(Pid::from_raw(self.pid), None) {
                Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break ExitStatus::Signaled(sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(IsolationError::runtime("waiting for the process", e)),
            }
        };
        let oom_killed = self.container_id.as_deref().is_some_and(cgroup::oom_killed);
        Ok(Exit { status, oom_killed })
    }
}
