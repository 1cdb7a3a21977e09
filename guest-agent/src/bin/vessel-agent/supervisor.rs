//! Serving the host: dispatch its frames, run processes, stream their output, reap every
//! child (we are PID 1, so orphans land here too), report exits, and power off at the end.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vessel_agent::{ExitStatus, FrameReader, FrameWriter, Message, SpawnErrorKind, StreamId};

use crate::cgroup::Cgroup;
use crate::confine::{Entry, Privileges};
use crate::{log, power, process, rootfs};

/// After a process exits, how long its output may take to drain (a daemonised grandchild
/// can hold the pipe open forever; we do not wait for it).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// After the main process's exit is reported, how long to wait for the host's `Shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Output chunk size: well under the frame bound.
const CHUNK: usize = 32 * 1024;

type Writer = Arc<Mutex<FrameWriter<File>>>;

struct Proc {
    pid: u32,
    stdin: Option<Sender<Option<Vec<u8>>>>,
    tty: Option<File>,
    outputs_done: Receiver<()>,
    outputs: usize,
}

#[derive(Default)]
struct State {
    by_pid: HashMap<u32, StreamId>,
    procs: HashMap<StreamId, Proc>,
}

fn send(w: &Writer, msg: Message) {
    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = w.write(&msg) {
        log!("sending to the host: {e}");
    }
}

/// Runs until the host asks for shutdown, the main process ends, or the channel breaks.
pub fn serve(chan: File, cmdline: &str) -> Result<(), String> {
    let out = chan.try_clone().map_err(|e| e.to_string())?;
    let writer: Writer = Arc::new(Mutex::new(FrameWriter::new(out)));
    send(
        &writer,
        Message::Ready {
            kernel: kernel_release(),
        },
    );
    let state = Arc::new(Mutex::new(State::default()));
    {
        let (state, writer) = (state.clone(), writer.clone());
        std::thread::spawn(move || reap(state, writer));
    }
    let mut container: Option<Container> = None;
    let mut reader = FrameReader::new(chan);
    loop {
        let msg = match reader.read() {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the host closed the channel".into()),
            Err(e) => return Err(format!("bad frame from the host: {e}")),
        };
        match msg {
            Message::Start { stream, spec } => {
                if container.is_none() {
                    match Container::set_up(&spec, cmdline) {
                        Ok(c) => container = Some(c),
                        Err(message) => {
                            log!("{message}");
                            send(
                                &writer,
                                Message::SpawnError {
                                    stream,
                                    kind: SpawnErrorKind::Other,
                                    message,
                                },
                            );
                            continue;
                        }
                    }
                }
                let c = container.as_mut().expect("set up above");
                start(&state, &writer, c, stream, &spec);
            }
            Message::Stdin { stream, data } => {
                if let Some(tx) = state
                    .lock()
                    .unwrap()
                    .procs
                    .get(&stream)
                    .and_then(|p| p.stdin.as_ref())
                {
                    let _ = tx.send(Some(data));
                }
            }
            Message::StdinClose { stream } => {
                if let Some(p) = state.lock().unwrap().procs.get_mut(&stream) {
                    if let Some(tx) = p.stdin.take() {
                        let _ = tx.send(None);
                    }
                }
            }
            Message::Signal { stream, signal } => {
                let pid = state.lock().unwrap().procs.get(&stream).map(|p| p.pid);
                let result = match pid {
                    // SAFETY: kill takes plain integers.
                    Some(pid) if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 => 0,
                    Some(_) => std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EINVAL),
                    None => libc::ESRCH,
                };
                send(&writer, Message::Signaled { stream, result });
            }
            Message::Resize { stream, rows, cols } => {
                if let Some(t) = state
                    .lock()
                    .unwrap()
                    .procs
                    .get(&stream)
                    .and_then(|p| p.tty.as_ref())
                {
                    process::resize(t, rows, cols);
                }
            }
            Message::Shutdown => return Ok(()),
            other => log!(
                "ignoring unexpected {:?} frame from the host",
                kind_name(&other)
            ),
        }
    }
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Ready { .. } => "ready",
        Message::Started { .. } => "started",
        Message::Stdout { .. } => "stdout",
        Message::Stderr { .. } => "stderr",
        Message::Exit { .. } => "exit",
        Message::SpawnError { .. } => "spawn-error",
        Message::Signaled { .. } => "signaled",
        _ => "host",
    }
}

/// The container the agent runs: its root and how its processes are confined.
struct Container {
    root: PathBuf,
    /// The first process's way in (new namespaces), until it is used.
    first: Option<Arc<Entry>>,
    /// The guest pid of the first process's relay, whose only child (the container's
    /// PID 1) later processes join.
    first_pid: Option<u32>,
    /// The first start's confinement, applied to every process (an exec's own start
    /// cannot widen it).
    privileges: Option<Arc<Privileges>>,
    /// The cgroup every process of the container runs in.
    cgroup: Arc<Cgroup>,
}

impl Container {
    /// Assembles the root from the disks and prepares the namespaces (first start only).
    fn set_up(spec: &vessel_agent::ProcessSpec, cmdline: &str) -> Result<Container, String> {
        let Some(rootfs_spec) = spec.rootfs.as_ref() else {
            return Err("the first start must describe the root filesystem".into());
        };
        let root = rootfs::assemble(rootfs_spec, &spec.cwd, cmdline)
            .map_err(|e| format!("assembling the root filesystem: {e}"))?;
        let first = Entry::first(&root, rootfs_spec)
            .map_err(|e| format!("preparing the container's namespaces: {e}"))?;
        let privileges = spec
            .confinement
            .as_ref()
            .map(Privileges::new)
            .transpose()
            .map_err(|e| format!("preparing the container's privileges: {e}"))?;
        let cgroup = Cgroup::create(rootfs_spec.pids_limit)
            .map_err(|e| format!("the container's cgroup: {e}"))?;
        Ok(Container {
            root,
            first: Some(Arc::new(first)),
            first_pid: None,
            privileges: privileges.map(Arc::new),
            cgroup: Arc::new(cgroup),
        })
    }

    /// How the next process enters the container.
    fn entry(&mut self) -> Result<Arc<Entry>, String> {
        if let Some(e) = self.first.take() {
            return Ok(e);
        }
        let relay = self
            .first_pid
            .ok_or("the container's first process never started")?;
        let pid = child_of(relay).ok_or("the container's first process has ended")?;
        Entry::join(pid)
            .map(Arc::new)
            .map_err(|e| format!("entering the container (its first process has ended?): {e}"))
    }
}

/// The child of process `parent` (a relay has exactly one).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // The fields after the command name (which may hold spaces and parentheses).
        let ppid: u32 = stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

fn start(
    state: &Arc<Mutex<State>>,
    w: &Writer,
    container: &mut Container,
    stream: StreamId,
    spec: &vessel_agent::ProcessSpec,
) {
    // Held across the spawn so the reaper cannot see the pid before it is registered.
    let mut st = state.lock().unwrap();
    if st.procs.contains_key(&stream) {
        drop(st);
        send(
            w,
            Message::SpawnError {
                stream,
                kind: SpawnErrorKind::Other,
                message: format!("stream {stream} is already running a process"),
            },
        );
        return;
    }
    let entry = match container.entry() {
        Ok(e) => e,
        Err(message) => {
            drop(st);
            send(
                w,
                Message::SpawnError {
                    stream,
                    kind: SpawnErrorKind::Other,
                    message,
                },
            );
            return;
        }
    };
    let spawned = process::spawn(
        &container.root,
        spec,
        entry,
        container.cgroup.clone(),
        container.privileges.clone(),
    );
    if let Ok(s) = &spawned {
        container.first_pid.get_or_insert(s.pid);
    }
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            drop(st);
            send(
                w,
                Message::SpawnError {
                    stream,
                    kind: e.kind,
                    message: e.message,
                },
            );
            return;
        }
    };
    let (done_tx, done_rx) = mpsc::channel();
    let (stdin_tx, stdin_rx) = mpsc::channel();
    st.by_pid.insert(spawned.pid, stream);
    st.procs.insert(
        stream,
        Proc {
            pid: spawned.pid,
            stdin: Some(stdin_tx),
            tty: spawned.tty,
            outputs_done: done_rx,
            outputs: spawned.outputs.len(),
        },
    );
    // Started goes out before any output so the host sees frames in a sensible order.
    send(
        w,
        Message::Started {
            stream,
            pid: spawned.pid,
        },
    );
    drop(st);
    for (is_err, src) in spawned.outputs {
        let (w, done) = (w.clone(), done_tx.clone());
        std::thread::spawn(move || pump_output(w, stream, is_err, src, done));
    }
    let stdin = spawned.stdin;
    std::thread::spawn(move || pump_stdin(stdin, stdin_rx));
}

fn pump_output(w: Writer, stream: StreamId, is_err: bool, mut src: File, done: Sender<()>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match src.read(&mut buf) {
            // EIO is how a terminal master says the last slave closed.
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(n) => {
                let data = buf[..n].to_vec();
                let msg = if is_err {
                    Message::Stderr { stream, data }
                } else {
                    Message::Stdout { stream, data }
                };
                send(&w, msg);
            }
            Err(_) => break,
        }
    }
    let _ = done.send(());
}

fn pump_stdin(mut dst: File, rx: Receiver<Option<Vec<u8>>>) {
    while let Ok(Some(data)) = rx.recv() {
        if dst.write_all(&data).is_err() {
            // The process closed its stdin; drain the channel so the sender never blocks.
            while let Ok(Some(_)) = rx.recv() {}
            return;
        }
    }
}

fn reap(state: Arc<Mutex<State>>, w: Writer) {
    loop {
        // Peek first (WNOWAIT), reap later: a child whose exec failed is reaped by
        // `Command::spawn` itself, which panics if someone else got there first. Taking the
        // state lock (held across every spawn) before reaping lets an in-flight spawn finish.
        // SAFETY: siginfo_t is plain data that waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid siginfo_t pointer; P_ALL ignores the id.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc < 0 {
            // ECHILD: nothing to wait for yet.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let pid = unsafe { info.si_pid() };
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid int.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
            continue; // spawn reaped its own failed child meanwhile
        }
        let status = if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        };
        let Some(stream) = st.by_pid.remove(&(pid as u32)) else {
            continue; // an orphan reparented to us
        };
        let Some(proc) = st.procs.remove(&stream) else {
            continue;
        };
        drop(st);
        let w = w.clone();
        std::thread::spawn(move || finish(w, stream, proc, status));
    }
}

fn finish(w: Writer, stream: StreamId, proc: Proc, status: ExitStatus) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..proc.outputs {
        let left = deadline.saturating_duration_since(Instant::now());
        if proc.outputs_done.recv_timeout(left).is_err() {
            log!(
                "stream {stream}: output still open {DRAIN_TIMEOUT:?} after exit; reporting anyway"
            );
            break;
        }
    }
    send(&w, Message::Exit { stream, status });
    if stream == 0 {
        // The host answers with Shutdown; if it has gone, do not linger.
        std::thread::sleep(SHUTDOWN_TIMEOUT);
        log!("no shutdown from the host {SHUTDOWN_TIMEOUT:?} after the exit; powering off");
        power::off();
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
