//! One running VM as the host sees it: the VMM process, the agent channel, the kernel log.
//!
//! Booting is bounded: the VMM must connect the channel and the agent must announce itself
//! before a deadline, and a VMM that exits early (a kernel panic with `panic=-1` powers the
//! VM off at once) ends the wait immediately. Failures carry the last kernel log lines.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vessel_agent::{FrameReader, Message};

use super::choice::Vmm;
use super::jail::{self, Bind, JailSpec, Jailed};
use super::machine_spec::MachineSpec;
use super::{builtin, qemu};

/// How many kernel log lines a failure report carries.
const LOG_TAIL: usize = 12;

/// A booted VM whose agent has said it is ready.
pub struct Machine {
    child: Jailed,
    /// The virtiofsd daemons of the VM's volumes.
    daemons: Vec<super::virtiofs::Daemon>,
    /// The network card's passt.
    passt: Option<super::passt::Passt>,
    /// The channel to the agent.
    pub channel: UnixStream,
    /// The guest kernel's release, as the agent reported it.
    pub kernel_release: String,
    /// The serial log.
    pub console_log: PathBuf,
    /// The VMM's own stderr.
    pub vmm_log: PathBuf,
    /// When the VMM process had exec'd in its jail.
    pub started_at: Instant,
    /// CPU time the VMM's process had used by then: the jail's set-up and the exec.
    pub jail_cpu_ms: f64,
    /// When the agent's ready frame arrived.
    pub ready_at: Instant,
}

/// What confines a VM's host processes besides the jail's fixed parts.
#[derive(Debug, Clone)]
pub struct HostConfinement {
    /// The VM's uid and gid ([`jail::uid_for`]).
    pub uid: u32,
    /// The `cgroup.procs` files of the VM's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
}

/// The VM's files as the jailed VMM sees them (short fixed paths under
/// [`jail::VM_DIR`]), and the binds that put them there.
fn inside_jail(spec: &MachineSpec) -> (MachineSpec, Vec<Bind>) {
    let mut binds = Vec::new();
    let mut put = |host: &Path, name: &str, writable: bool| {
        let inside = Path::new(jail::VM_DIR).join(name);
        binds.push(Bind {
            host: host.to_path_buf(),
            inside: inside.clone(),
            writable,
        });
        inside
    };
    let inside = MachineSpec {
        kernel: put(&spec.kernel, "kernel", false),
        initrd: put(&spec.initrd, "initrd", false),
        image_disk: put(&spec.image_disk, "image.ext4", false),
        container_disk: put(&spec.container_disk, "container.ext4", true),
        channel: put(&spec.channel, "agent.sock", true),
        console_log: put(&spec.console_log, "console.log", true),
        shares: spec
            .shares
            .iter()
            .enumerate()
            .map(|(i, (tag, socket))| (tag.clone(), put(socket, &format!("fs-{i}.sock"), true)))
            .collect(),
        net: spec
            .net
            .as_ref()
            .map(|(socket, mac)| (put(socket, "net.sock", true), mac.clone())),
        cmdline: spec.cmdline.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
    };
    (inside, binds)
}

/// Gives the VM's uid the files its VMM writes or connects to.
fn hand_over(spec: &MachineSpec, uid: u32) -> Result<(), String> {
    File::create(&spec.console_log)
        .map_err(|e| format!("creating {}: {e}", spec.console_log.display()))?;
    let sockets = spec.shares.iter().map(|(_, s)| s);
    for f in [&spec.container_disk, &spec.console_log, &spec.channel]
        .into_iter()
        .chain(sockets)
    {
        std::os::unix::fs::chown(f, Some(uid), Some(uid))
            .map_err(|e| format!("handing {} to the VM's uid: {e}", f.display()))?;
    }
    Ok(())
}

/// The directories of the host `program` needs at their own paths in its jail, besides
/// the libraries: QEMU's firmware.
fn system_dirs(vmm: Vmm) -> Vec<PathBuf> {
    match vmm {
        Vmm::Qemu { .. } => ["/usr/share/qemu", "/usr/share/seabios"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        Vmm::Builtin => Vec::new(),
    }
}

/// `VESSEL_VMM_UNCONFINED=1`: the VMM without its jail and seccomp filters, the baseline
/// the benchmarks measure their cost against. Never the default; said on stderr.
fn unconfined() -> bool {
    let on = std::env::var_os("VESSEL_VMM_UNCONFINED").is_some_and(|v| v == "1");
    if on {
        eprintln!(
            "vessel: warning: VESSEL_VMM_UNCONFINED=1: the VMM runs without its jail and seccomp filters (for benchmarks only)"
        );
    }
    on
}

/// `name` itself if it is a path, else the first match on `PATH`.
fn resolve(name: &std::ffi::OsStr) -> Result<PathBuf, String> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return Ok(p.to_path_buf());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(p))
                .find(|c| c.is_file())
        })
        .ok_or_else(|| format!("{} is not installed (not found on PATH)", p.display()))
}

/// Where the VMM's pid is kept, so any vessel process can find it for cleanup.
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("vmm.pid")
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    let mut lines: Vec<String> = BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines.drain(..start);
    lines
}

/// `summary` (with the kernel's panic reason, if it panicked), then the kernel's and the
/// VMM's last words, indented. A panic's own lines are shown rather than its stack trace.
pub fn failure(summary: &str, console_log: &Path, vmm_log: &Path) -> String {
    let mut msg = summary.to_string();
    if let Some(call) = seccomp_violation(vmm_log) {
        msg.push_str(&format!(
            ": the VMM's seccomp filter killed it (forbidden system call {call})"
        ));
    }
    let all = log_tail(console_log, 2000);
    let panic_at = all
        .iter()
        .position(|l| l.contains("Kernel panic - not syncing"));
    let shown: &[String] = match panic_at {
        Some(p) => {
            let reason = all[p]
                .split("Kernel panic - not syncing")
                .nth(1)
                .unwrap_or_default()
                .trim_start_matches(':')
                .trim();
            msg.push_str(&format!(": kernel panic: {reason}"));
            &all[p.saturating_sub(LOG_TAIL - 1)..=p]
        }
        None => &all[all.len().saturating_sub(LOG_TAIL)..],
    };
    if shown.is_empty() {
        msg.push_str("\n  (the kernel printed nothing on the serial console)");
    } else {
        msg.push_str(&format!(
            "\n  last kernel messages ({}):",
            console_log.display()
        ));
        for l in shown {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
    }
    for l in log_tail(vmm_log, 4) {
        msg.push_str("\n  vmm: ");
        msg.push_str(&l);
    }
    msg
}

/// The system call (number, and name where libseccomp knows it) that `vessel-vmm`'s
/// seccomp filter ended the VMM for, from the line its SIGSYS handler leaves in its log.
fn seccomp_violation(vmm_log: &Path) -> Option<String> {
    const MARK: &str = "seccomp: forbidden system call ";
    log_tail(vmm_log, 20).iter().rev().find_map(|l| {
        let rest = &l[l.find(MARK)? + MARK.len()..];
        let nr: i32 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        Some(
            match libseccomp::ScmpSyscall::from_raw_syscall(nr).get_name() {
                Ok(name) => format!("{nr}, {name}"),
                Err(_) => nr.to_string(),
            },
        )
    })
}

impl Machine {
    /// Starts the VMM and waits (at most `timeout`) for the agent's ready frame.
    pub fn boot(
        spec: &MachineSpec,
        vmm: Vmm,
        dir: &Path,
        timeout: Duration,
        mut daemons: Vec<super::virtiofs::Daemon>,
        mut passt: Option<super::passt::Passt>,
        confine: &HostConfinement,
    ) -> Result<Machine, String> {
        let vmm_log = dir.join("vmm.log");
        let _ = std::fs::remove_file(&spec.channel);
        let _ = std::fs::remove_file(&spec.console_log);
        let listener = UnixListener::bind(&spec.channel)
            .map_err(|e| format!("listening on {}: {e}", spec.channel.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let unconfined = unconfined();
        let (mut inside, mut binds) = inside_jail(spec);
        let config = Path::new(jail::VM_DIR).join("vmm.json");
        if unconfined {
            inside = spec.clone();
        }
        let cmd: Command = match vmm {
            Vmm::Qemu { kvm } => qemu::command(&inside, kvm, !unconfined),
            Vmm::Builtin => {
                binds.push(Bind {
                    host: dir.join("vmm.json"),
                    inside: config.clone(),
                    writable: false,
                });
                let arg = if unconfined {
                    dir.join("vmm.json")
                } else {
                    config
                };
                builtin::command(&inside, &dir.join("vmm.json"), &arg, !unconfined)?
            }
        };
        hand_over(spec, confine.uid)?;
        let root = dir.join("jail");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let jail = JailSpec {
            root,
            binds,
            system_dirs: system_dirs(vmm),
            kvm: !matches!(vmm, Vmm::Qemu { kvm: false }),
            program_dir: matches!(vmm, Vmm::Qemu { .. }),
            uid: confine.uid,
            cgroup_procs: confine.cgroup_procs.clone(),
            mode: if unconfined {
                jail::Mode::Off
            } else {
                jail::Mode::Full
            },
        };
        let program = resolve(cmd.get_program())?;
        let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let log: OwnedFd = File::create(&vmm_log)
            .map_err(|e| format!("creating {}: {e}", vmm_log.display()))?
            .into();
        // The jail puts the VMM in a session of its own (Ctrl-C, or `timeout`'s SIGTERM to
        // the terminal's process group, reaches vessel, which passes it to the container's
        // process, instead of killing the VM under it) and makes it die with its supervisor
        // (the thread that spawned it), so a killed vessel leaves no VM running.
        let mut child = jail::spawn(&jail, &program, &args, &log, &log)
            .map_err(|e| format!("starting the VMM ({vmm}): {e}"))?;
        // The process has exec'd: what it ran until now was the jail's set-up.
        let started_at = Instant::now();
        let jail_cpu_ms = cpu_ms(child.id());
        let _ = std::fs::write(pid_file(dir), child.id().to_string());
        let deadline = started_at + timeout;
        let mut fail = |child: &mut Jailed, what: String| -> String {
            let _ = child.kill();
            let _ = child.wait();
            super::virtiofs::stop(&mut daemons);
            if let Some(p) = passt.as_mut() {
                p.stop();
            }
            let _ = std::fs::remove_file(&spec.channel);
            failure(&what, &spec.console_log, &vmm_log)
        };
        // 1. The VMM connects the virtio-console backend to our socket.
        let channel = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(&mut child, format!("accepting the VM channel: {e}"))),
            }
            if let Ok(Some(st)) = child.try_wait() {
                let _ = std::fs::remove_file(&spec.channel);
                return Err(failure(
                    &format!("the VMM ({vmm}) exited ({st}) before connecting the agent channel"),
                    &spec.console_log,
                    &vmm_log,
                ));
            }
            if Instant::now() > deadline {
                return Err(fail(
                    &mut child,
                    format!("the VMM did not connect the agent channel within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let _ = std::fs::remove_file(&spec.channel);
        channel.set_nonblocking(false).map_err(|e| e.to_string())?;
        // 2. The agent announces itself. A panicking kernel powers off (panic=-1 with
        //    -no-reboot), which closes the channel, so this does not wait for the deadline.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        channel
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(&channel);
        let kernel_release = match reader.read() {
            Ok(Some(Message::Ready { kernel })) => kernel,
            Ok(Some(other)) => {
                return Err(fail(
                    &mut child,
                    format!("the guest agent sent {other:?} instead of ready"),
                ));
            }
            Ok(None) => {
                // Give the VMM a moment to exit so its status is part of the report.
                let st = wait_briefly(&mut child);
                let what = match st {
                    Some(st) => format!("the VM stopped ({st}) before its agent started (kernel panic or bad command line?)"),
                    None => "the VM closed the agent channel before its agent started".into(),
                };
                return Err(fail(&mut child, what));
            }
            Err(vessel_agent::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(fail(
                    &mut child,
                    format!("the guest agent did not start within {timeout:?} (kernel hung?)"),
                ));
            }
            Err(e) => {
                return Err(fail(
                    &mut child,
                    format!("reading the agent's ready frame: {e}"),
                ))
            }
        };
        channel.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok(Machine {
            child,
            daemons,
            passt,
            channel,
            kernel_release,
            console_log: spec.console_log.clone(),
            vmm_log,
            started_at,
            jail_cpu_ms,
            ready_at: Instant::now(),
        })
    }

    /// The VMM's host pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `grace` for the VMM to exit by itself (the guest powers off), then kills it.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        super::virtiofs::stop(&mut self.daemons);
        if let Some(p) = self.passt.as_mut() {
            p.stop();
        }
        status
    }

    /// A failure report with this VM's logs.
    pub fn failure(&self, summary: &str) -> String {
        failure(summary, &self.console_log, &self.vmm_log)
    }
}

/// CPU time `pid` has used, from its scheduler statistics (nanosecond resolution).
fn cpu_ms(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(f64::NAN, |ns| ns as f64 / 1e6)
}

fn wait_briefly(child: &mut Jailed) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seccomp_kill_is_named_in_the_first_line() {
        let t = tempfile::tempdir().unwrap();
        let vmm_log = t.path().join("vmm.log");
        std::fs::write(
            &vmm_log,
            "vessel-vmm: seccomp: forbidden system call 110; the VM is ended\n",
        )
        .unwrap();
        let msg = failure("the VM stopped", &t.path().join("none"), &vmm_log);
        let first = msg.lines().next().unwrap();
        assert_eq!(
            first,
            "the VM stopped: the VMM's seccomp filter killed it (forbidden system call 110, getppid)"
        );
        std::fs::write(&vmm_log, "vessel-vmm: something else\n").unwrap();
        let msg = failure("the VM stopped", &t.path().join("none"), &vmm_log);
        assert_eq!(msg.lines().next().unwrap(), "the VM stopped");
    }
}
