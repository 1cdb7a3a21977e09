//! The container's processes as the lifecycle code sees them: the main process (which owns
//! the VM) and exec sessions (clients of the supervising process's control socket).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vessel_agent::{FrameReader, FrameWriter, Message};

use super::machine::{pid_file, Machine};
use super::mux::{control_socket, Mux};
use super::stream::StreamEnd;
use crate::isolation::{Exit, ExitStatus, IsolationError, Process};

/// How long the guest may take to power off after the main process's exit.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

fn exit_of(s: vessel_agent::ExitStatus) -> Exit {
    Exit {
        status: match s {
            vessel_agent::ExitStatus::Code(c) => ExitStatus::Exited(c),
            vessel_agent::ExitStatus::Signal(n) => ExitStatus::Signaled(n),
        },
        oom_killed: false,
    }
}

/// Stage timestamps of one VM run, printed with `--debug` or `$VESSEL_VM_TIMINGS=1` (which
/// scripts/bench-vm.sh uses: `--debug` also raises the guest's log level, and printing the
/// kernel log over an emulated serial port slows the boot it measures).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// `start` was called.
    pub begin: Instant,
    /// Kernel, initramfs and both disks are ready.
    pub assets_ready: Instant,
    /// The VMM process was started.
    pub vmm_started: Instant,
    /// CPU time its jail's set-up took (the process's, up to its exec).
    pub jail_cpu_ms: f64,
    /// The agent's ready frame arrived.
    pub agent_ready: Instant,
}

/// The container's main process; it owns the VM and ends it when the process ends.
pub struct VmProcess {
    pub(super) machine: Mutex<Machine>,
    pub(super) mux: Arc<Mux>,
    pub(super) end: Arc<StreamEnd>,
    pub(super) pty: Mutex<Option<OwnedFd>>,
    pub(super) dir: PathBuf,
    pub(super) debug: bool,
    pub(super) timings: Timings,
}

impl Process for VmProcess {
    fn pid(&self) -> Option<i32> {
        Some(self.machine.lock().unwrap_or_else(|p| p.into_inner()).pid() as i32)
    }

    fn take_pty(&self) -> Option<OwnedFd> {
        self.pty.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn signal(&self, signal: i32) -> Result<(), IsolationError> {
        if self.mux.signal_main(signal, None) {
            Ok(())
        } else {
            Err(IsolationError::runtime(
                "signalling the VM's process",
                "the VM is gone",
            ))
        }
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), IsolationError> {
        self.mux.send(&Message::Resize {
            stream: 0,
            rows,
            cols,
        });
        Ok(())
    }

    fn wait(&self) -> Result<Exit, IsolationError> {
        let result = self.end.wait();
        let done = Instant::now();
        self.mux.send(&Message::Shutdown);
        let mut machine = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        let vmm_status = machine.stop(POWER_OFF_GRACE);
        let gone = Instant::now();
        let _ = std::fs::remove_file(control_socket(&self.dir));
        let _ = std::fs::remove_file(pid_file(&self.dir));
        if self.debug || std::env::var_os("VESSEL_VM_TIMINGS").is_some_and(|v| v == "1") {
            let t = &self.timings;
            let ms = |a: Instant| a.duration_since(t.begin).as_secs_f64() * 1000.0;
            eprintln!(
                "vessel: vm timings (ms since start): assets-ready={:.1} vmm-started={:.1} agent-ready={:.1} process-done={:.1} vm-gone={:.1} jail-cpu={:.2}",
                ms(t.assets_ready),
                ms(t.vmm_started),
                ms(t.agent_ready),
                ms(done),
                ms(gone),
                t.jail_cpu_ms
            );
        }
        match result {
            Ok(s) => Ok(exit_of(s)),
            // `kill_now` ended the VM: as a SIGKILL of the process would have.
            Err(_) if super::killed_marker(&self.dir).exists() => Ok(Exit {
                status: ExitStatus::Signaled(libc::SIGKILL),
                oom_killed: false,
            }),
            Err(why) => {
                let why = match vmm_status {
                    Some(st) if !st.success() => format!("{why}; the VMM exited with {st}"),
                    _ => why,
                };
                Err(IsolationError::Runtime {
                    context: "the VM",
                    message: machine.failure(&why),
                })
            }
        }
    }
}

/// A process started in a running VM container from another vessel process (`exec`).
pub struct ExecProcess {
    writer: Mutex<FrameWriter<UnixStream>>,
    end: Arc<StreamEnd>,
    pty: Mutex<Option<OwnedFd>>,
}

impl ExecProcess {
    /// Connects to the container's control socket and starts `spec` there.
    pub fn start(
        dir: &std::path::Path,
        spec: vessel_agent::ProcessSpec,
        stdin: File,
        end: Arc<StreamEnd>,
        pty: Option<OwnedFd>,
    ) -> Result<ExecProcess, IsolationError> {
        let path = control_socket(dir);
        let short = super::socket_path::socket_path(dir, super::mux::CONTROL_SOCKET)
            .map_err(|e| IsolationError::io("naming the control socket", e))?;
        let conn = UnixStream::connect(&short.path).map_err(|e| {
            IsolationError::runtime(
                "exec",
                format!(
                    "the container's VM is not reachable at {} (is it running?): {e}",
                    path.display()
                ),
            )
        })?;
        let io = |e: std::io::Error| IsolationError::io("exec: the control socket", e);
        let mut writer = FrameWriter::new(conn.try_clone().map_err(io)?);
        writer
            .write(&Message::Start {
                stream: 0,
                spec: Box::new(spec),
            })
            .map_err(|e| IsolationError::runtime("exec", e))?;
        let reader = conn.try_clone().map_err(io)?;
        {
            let end = end.clone();
            std::thread::spawn(move || {
                let mut r = FrameReader::new(reader);
                loop {
                    match r.read() {
                        Ok(Some(m)) => {
                            if end.handle(m) {
                                return;
                            }
                        }
                        Ok(None) => return end.fail("the container's VM went away".into()),
                        Err(e) => {
                            return end.fail(format!("bad frame from the VM's supervisor: {e}"))
                        }
                    }
                }
            });
        }
        end.wait_started(Duration::from_secs(30))
            .map_err(|e| IsolationError::runtime("exec", e))?;
        let stdin_conn = conn.try_clone().map_err(io)?;
        {
            let end = end.clone();
            std::thread::spawn(move || {
                let w = Mutex::new(FrameWriter::new(stdin_conn));
                super::stream::pump_stdin(
                    stdin,
                    0,
                    |m| {
                        w.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .write(&m)
                            .is_ok()
                    },
                    || end.is_done(),
                );
            });
        }
        Ok(ExecProcess {
            writer: Mutex::new(writer),
            end,
            pty: Mutex::new(pty),
        })
    }

    fn send(&self, m: Message) -> Result<(), IsolationError> {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&m)
            .map_err(|e| IsolationError::runtime("exec", e))
    }
}

impl Process for ExecProcess {
    fn pid(&self) -> Option<i32> {
        None
    }

    fn take_pty(&self) -> Option<OwnedFd> {
        self.pty.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn signal(&self, signal: i32) -> Result<(), IsolationError> {
        self.send(Message::Signal { stream: 0, signal })
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), IsolationError> {
        self.send(Message::Resize {
            stream: 0,
            rows,
            cols,
        })
    }

    fn wait(&self) -> Result<Exit, IsolationError> {
        self.end
            .wait()
            .map(exit_of)
            .map_err(|e| IsolationError::runtime("exec", e))
    }
}
