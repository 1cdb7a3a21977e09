//! Supervising a container's main process (or an exec'd one) from start to end: streams,
//! terminal, signal forwarding, exit recording and cleanup. The foreground `run` does this
//! itself; `run -d` leaves it to a detached `vessel` child.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::termios::{self, SetArg, Termios};

use super::logs::{LogWriter, Stream};
use super::record::Records;
use super::signals::Signals;
use crate::isolation::{Backend, Exit, IsolationError, LaunchSpec, Process, Stdio, Target};

/// How a process's streams are connected.
#[derive(Debug, Clone)]
pub enum Attach {
    /// To vessel's own streams; stdin only when `interactive` (`-i`). With `log`, the
    /// output is also appended to the container's log.
    Foreground {
        /// Pass stdin.
        interactive: bool,
        /// The container's log file, if its output is kept.
        log: Option<PathBuf>,
    },
    /// To the container's log (detached).
    Log(PathBuf),
}

/// Why supervision failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The backend failed.
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    /// Setting up streams failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The container database failed.
    #[error(transparent)]
    Record(#[from] super::record::RecordError),
}

fn dev_null() -> Result<OwnedFd, SuperviseError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| SuperviseError::Io("opening /dev/null", e))
}

fn pipe() -> Result<(File, OwnedFd), SuperviseError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SuperviseError::Io("creating a pipe", e.into()))?;
    Ok((File::from(r), w))
}

/// Streams prepared before the start, and what to do with them after it.
struct Wiring {
    stdio: Stdio,
    log: Option<(LogWriter, Vec<(File, Stream)>)>,
}

fn open_log(path: &std::path::Path) -> Result<LogWriter, SuperviseError> {
    LogWriter::create(path).map_err(|e| SuperviseError::Io("opening the log", e))
}

/// Output pipes whose read ends feed `log`.
fn logged_pipes(log: LogWriter, stdin: Option<OwnedFd>) -> Result<Wiring, SuperviseError> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Wiring {
        stdio: Stdio {
            stdin,
            stdout: Some(out_w),
            stderr: Some(err_w),
            terminal_size: None,
        },
        log: Some((log, vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)])),
    })
}

fn wire(attach: &Attach, terminal: bool) -> Result<Wiring, SuperviseError> {
    let mut wiring = wire_streams(attach, terminal)?;
    if terminal && matches!(attach, Attach::Foreground { .. }) {
        wiring.stdio.terminal_size = terminal_size();
    }
    Ok(wiring)
}

fn wire_streams(attach: &Attach, terminal: bool) -> Result<Wiring, SuperviseError> {
    match attach {
        Attach::Foreground { interactive, log } => {
            let stdin = if *interactive || terminal {
                None
            } else {
                Some(dev_null()?)
            };
            match log {
                Some(path) if !terminal => logged_pipes(open_log(path)?, stdin),
                Some(path) => Ok(Wiring {
                    stdio: Stdio::default(),
                    log: Some((open_log(path)?, Vec::new())),
                }),
                None => Ok(Wiring {
                    stdio: Stdio {
                        stdin,
                        ..Stdio::default()
                    },
                    log: None,
                }),
            }
        }
        Attach::Log(path) => {
            let log = open_log(path)?;
            if terminal {
                return Ok(Wiring {
                    stdio: Stdio::default(),
                    log: Some((log, Vec::new())),
                });
            }
            logged_pipes(log, Some(dev_null()?))
        }
    }
}

/// Puts vessel's terminal in raw mode while a `-t` process runs, so keys (Ctrl-C
/// included) reach the container's terminal; restores it on drop.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// vessel's own terminal size, if its stdout or stdin is a terminal.
fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: winsize is plain data; TIOCGWINSZ writes into it and nothing else.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer is valid for the duration of the call.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

fn copy_thread(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// Copies vessel's stdin into a terminal's master side; at its end, types what a user
/// would to end the input: the terminal's EOF character (^D), twice when a line is
/// pending (the first only submits the partial line). Closing our copy of the master
/// would tell the process nothing: the master stays open for its output. Through a VM's
/// raw host terminal the ^D reaches the guest's terminal, which reads it the same way.
fn stdin_to_terminal(master: File) {
    std::thread::spawn(move || {
        let mut master = master;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        let mut at_line_start = true;
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if master.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    at_line_start = matches!(buf[n - 1], b'\n' | b'\r');
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let eof = termios::tcgetattr(master.as_fd())
            .map(|t| t.control_chars[libc::VEOF])
            .unwrap_or(4);
        let n = if at_line_start { 1 } else { 2 };
        let _ = master.write_all(&vec![eof; n]);
    });
}

/// Connects a started process to its streams and forwards signals; returns the threads
/// whose end means all output was delivered.
fn connect(
    process: &Arc<dyn Process>,
    attach: &Attach,
    interactive: bool,
    wiring_log: Option<(LogWriter, Vec<(File, Stream)>)>,
    mut signals: Signals,
) -> Result<(Vec<JoinHandle<()>>, Option<RawMode>), SuperviseError> {
    let mut outputs = Vec::new();
    let mut raw = None;
    if let Some(pty) = process.take_pty() {
        let master = File::from(pty);
        let input = master
            .try_clone()
            .map_err(|e| SuperviseError::Io("duplicating the terminal", e))?;
        let foreground = matches!(attach, Attach::Foreground { .. });
        if foreground {
            if let Some((rows, cols)) = terminal_size() {
                let _ = process.resize(rows, cols);
            }
            // As docker: only with -i do keys go to the container's terminal (raw mode);
            // with -t alone the terminal stays cooked, so Ctrl-C signals vessel, which
            // forwards it.
            if interactive {
                raw = Some(RawMode::enter());
                // Not joined: it blocks reading vessel's stdin until the user types.
                stdin_to_terminal(input);
            }
        }
        match (&wiring_log, foreground) {
            (Some((log, _)), true) => {
                outputs.push(log.pump(master, Stream::Stdout, Some(Box::new(std::io::stdout()))))
            }
            (Some((log, _)), false) => outputs.push(log.pump(master, Stream::Stdout, None)),
            (None, _) => outputs.push(copy_thread(master, std::io::stdout())),
        }
    } else if let Some((log, sources)) = wiring_log {
        let foreground = matches!(attach, Attach::Foreground { .. });
        for (src, stream) in sources {
            let echo: Option<Box<dyn Write + Send>> = match (foreground, stream) {
                (false, _) => None,
                (true, Stream::Stdout) => Some(Box::new(std::io::stdout())),
                (true, Stream::Stderr) => Some(Box::new(std::io::stderr())),
            };
            outputs.push(log.pump(src, stream, echo));
        }
    }

    let target = Arc::clone(process);
    std::thread::spawn(move || {
        while let Some(sig) = signals.next() {
            if sig == libc::SIGWINCH {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = target.resize(rows, cols);
                }
            } else {
                let _ = target.signal(sig);
            }
        }
    });
    Ok((outputs, raw))
}

/// Installs the forwarding handlers before the process starts: a process without a
/// terminal writes straight to vessel's stdout, so whoever reads that may signal vessel
/// (Ctrl-C, a resize) as soon as output appears, and must not meet the default action
/// that would kill vessel and orphan the container. Signals that arrive during the start
/// wait in the pipe and are forwarded once the process runs.
fn install_signals() -> Result<Signals, SuperviseError> {
    Signals::install().map_err(|e| SuperviseError::Io("installing signal handlers", e))
}

/// Starts the container's main process, records it, waits for its end, records that, and
/// releases what it held on the host. `started` learns whether the start worked (the
/// detached parent waits for it). Returns the exit; the caller removes `--rm` containers.
pub fn run_main(
    records: &Records,
    backend: &dyn Backend,
    spec: &LaunchSpec,
    attach: &Attach,
    started: &mut dyn FnMut(Result<(), String>),
) -> Result<Exit, SuperviseError> {
    let interactive = matches!(
        attach,
        Attach::Foreground {
            interactive: true,
            ..
        }
    );
    let wiring = wire(attach, spec.process.terminal)?;
    let signals = install_signals()?;
    let process: Arc<dyn Process> = match backend.start(spec, wiring.stdio) {
        Ok(p) => Arc::from(p),
        Err(e) => {
            started(Err(e.to_string()));
            return Err(e.into());
        }
    };
    records.set_running(&spec.id, process.pid())?;
    started(Ok(()));
    let (outputs, raw) = connect(&process, attach, interactive, wiring.log, signals)?;
    let exit = process.wait();
    for t in outputs {
        let _ = t.join();
    }
    drop(raw);
    let target = Target {
        id: spec.id.clone(),
        dir: spec.dir.clone(),
        pid: None,
    };
    let cleaned = backend.cleanup(&target);
    let (code, oom) = match &exit {
        Ok(e) => (Some(e.code()), e.oom_killed),
        Err(_) => (None, false),
    };
    records.set_exited(&spec.id, code, oom, super::now())?;
    cleaned?;
    Ok(exit?)
}

/// Runs `process` in a running container (`exec`) in the foreground and waits for it.
pub fn run_exec(
    backend: &dyn Backend,
    target: &Target,
    process_spec: &crate::container::process::ProcessSpec,
    interactive: bool,
) -> Result<Exit, SuperviseError> {
    let attach = Attach::Foreground {
        interactive,
        log: None,
    };
    let wiring = wire(&attach, process_spec.terminal)?;
    let signals = install_signals()?;
    let process: Arc<dyn Process> = Arc::from(backend.exec(target, process_spec, wiring.stdio)?);
    let (outputs, raw) = connect(&process, &attach, interactive, None, signals)?;
    let exit = process.wait();
    for t in outputs {
        let _ = t.join();
    }
    drop(raw);
    Ok(exit?)
}

/// Keeps a descriptor's number stable across exec (for the detached supervisor's
/// readiness pipe).
pub fn clear_cloexec(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own only changes its flags.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
