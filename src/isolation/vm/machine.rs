//! One running VM as the host sees it: the VMM process, the agent channel, the kernel log.
//!
//! Booting is bounded: the VMM must connect the channel and the agent must announce itself
//! before a deadline, and a VMM that exits early (a kernel panic with `panic=-1` powers the
//! VM off at once) ends the wait immediately. Failures carry the last kernel log lines.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vessel_agent::{FrameReader, Message};

use super::choice::Vmm;
use super::machine_spec::MachineSpec;
use super::{builtin, qemu};

/// How many kernel log lines a failure report carries.
const LOG_TAIL: usize = 12;

/// A booted VM whose agent has said it is ready.
pub struct Machine {
    child: Child,
    /// The virtiofsd daemons of the VM's volumes.
    daemons: Vec<super::virtiofs::Daemon>,
    /// The channel to the agent.
    pub channel: UnixStream,
    /// The guest kernel's release, as the agent reported it.
    pub kernel_release: String,
    /// The serial log.
    pub console_log: PathBuf,
    /// The VMM's own stderr.
    pub vmm_log: PathBuf,
    /// When the VMM process was started.
    pub started_at: Instant,
    /// When the agent's ready frame arrived.
    pub ready_at: Instant,
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
    ) -> Result<Machine, String> {
        let vmm_log = dir.join("vmm.log");
        let _ = std::fs::remove_file(&spec.channel);
        let _ = std::fs::remove_file(&spec.console_log);
        let listener = UnixListener::bind(&spec.channel)
            .map_err(|e| format!("listening on {}: {e}", spec.channel.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut cmd: Command = match vmm {
            Vmm::Qemu { kvm } => qemu::command(spec, kvm),
            Vmm::Builtin => builtin::command(spec, &dir.join("vmm.json"))?,
        };
        let log =
            File::create(&vmm_log).map_err(|e| format!("creating {}: {e}", vmm_log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        // SAFETY: setsid, prctl and close_range are async-signal-safe system calls on no
        // memory. A session of its own puts the VMM outside the terminal's process group:
        // Ctrl-C, or `timeout`'s SIGTERM to the group, reaches vessel, which passes it to
        // the container's process, instead of killing the VM under it. PDEATHSIG makes the
        // VMM die with its supervisor (the thread that spawned it), so a killed vessel
        // leaves no VM running. Marking every inherited descriptor close-on-exec keeps the
        // VMM from holding the caller's pipes open (a detached run's readiness pipe, a
        // test's stdout), which would hang whoever waits for EOF.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Best effort: kernels before 5.11 lack CLOSE_RANGE_CLOEXEC.
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let started_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting the VMM ({vmm}): {e}"))?;
        let _ = std::fs::write(pid_file(dir), child.id().to_string());
        let deadline = started_at + timeout;
        let mut fail = |child: &mut Child, what: String| -> String {
            let _ = child.kill();
            let _ = child.wait();
            super::virtiofs::stop(&mut daemons);
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
            channel,
            kernel_release,
            console_log: spec.console_log.clone(),
            vmm_log,
            started_at,
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
        status
    }

    /// A failure report with this VM's logs.
    pub fn failure(&self, summary: &str) -> String {
        failure(summary, &self.console_log, &self.vmm_log)
    }
}

fn wait_briefly(child: &mut Child) -> Option<std::process::ExitStatus> {
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
