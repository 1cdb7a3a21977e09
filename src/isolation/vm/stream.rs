//! The host's end of one guest process: where its output goes, and how it ended.
//!
//! The main process's frames arrive through the multiplexer; an exec session's through its
//! control-socket connection. Both feed [`StreamEnd::handle`]. Frames are from the guest
//! and so untrusted: anything unexpected is ignored or ends the stream with an error, and
//! output can only go to the files the caller handed over.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vessel_agent::{ExitStatus, Message, SpawnErrorKind, StreamId};

/// docker's status when the command does not exist.
const EXIT_NOT_FOUND: i32 = 127;
/// docker's status when the command cannot be executed.
const EXIT_CANNOT_INVOKE: i32 = 126;

#[derive(Debug, Clone)]
enum State {
    Starting,
    Running,
    Done(Result<ExitStatus, String>),
}

/// Output sinks and completion state of one process.
pub struct StreamEnd {
    stdout: Mutex<Option<File>>,
    stderr: Mutex<Option<File>>,
    state: Mutex<State>,
    changed: Condvar,
}

impl StreamEnd {
    /// A stream writing to these files.
    pub fn new(stdout: File, stderr: File) -> Self {
        Self {
            stdout: Mutex::new(Some(stdout)),
            stderr: Mutex::new(Some(stderr)),
            state: Mutex::new(State::Starting),
            changed: Condvar::new(),
        }
    }

    fn set(&self, s: State) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*st, State::Done(_)) {
            *st = s;
        }
        self.changed.notify_all();
    }

    fn finish(&self, r: Result<ExitStatus, String>) {
        // Dropping the sinks closes them, so readers of a pipe or terminal see the end.
        self.stdout.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.set(State::Done(r));
    }

    /// Applies one frame from the guest; returns true when the stream has ended.
    pub fn handle(&self, msg: Message) -> bool {
        match msg {
            Message::Started { .. } => self.set(State::Running),
            Message::Stdout { data, .. } => write(&self.stdout, &data),
            Message::Stderr { data, .. } => write(&self.stderr, &data),
            Message::Exit { status, .. } => {
                self.finish(Ok(status));
                return true;
            }
            Message::SpawnError { kind, message, .. } => {
                // As in container mode: the reason on the process's stderr, docker's code.
                let code = match kind {
                    SpawnErrorKind::NotFound => EXIT_NOT_FOUND,
                    SpawnErrorKind::NotExecutable => EXIT_CANNOT_INVOKE,
                    SpawnErrorKind::Other => {
                        self.finish(Err(message));
                        return true;
                    }
                };
                write(&self.stderr, format!("vessel: {message}\n").as_bytes());
                self.finish(Ok(ExitStatus::Code(code)));
                return true;
            }
            _ => {}
        }
        false
    }

    /// Ends the stream with an error (channel lost, VM gone).
    pub fn fail(&self, why: String) {
        self.finish(Err(why));
    }

    /// Waits until the process runs or has ended; `Err` if it could not start.
    pub fn wait_started(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*st {
                State::Running | State::Done(Ok(_)) => return Ok(()),
                State::Done(Err(e)) => return Err(e.clone()),
                State::Starting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the guest agent did not start the process within {timeout:?}"
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the process has ended.
    pub fn is_done(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            State::Done(_)
        )
    }

    /// Waits for the end.
    pub fn wait(&self) -> Result<ExitStatus, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let State::Done(r) = &*st {
                return r.clone();
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn write(sink: &Mutex<Option<File>>, data: &[u8]) {
    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = sink.as_mut() {
        // A reader that went away must not stop the process; drop its output.
        if f.write_all(data).is_err() {
            sink.take();
        }
    }
}

/// Copies `src` into stdin frames for `stream` until end of input, until `send` fails, or
/// until `done()` (the process ended): the source is then closed even though nobody wrote
/// to it, because a host terminal's slave held open here would keep its master from ever
/// reaching end of file.
pub fn pump_stdin(
    mut src: File,
    stream: StreamId,
    send: impl Fn(Message) -> bool,
    done: impl Fn() -> bool,
) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut pfd = libc::pollfd {
            fd: src.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if done() {
            return;
        }
        if n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted)
        {
            continue;
        }
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !send(Message::Stdin {
                    stream,
                    data: buf[..n].to_vec(),
                }) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    send(Message::StdinClose { stream });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    fn end() -> (StreamEnd, File, File) {
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let e = StreamEnd::new(out.try_clone().unwrap(), err.try_clone().unwrap());
        (e, out, err)
    }

    fn contents(mut f: File) -> String {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn output_goes_to_its_own_file_and_exit_ends_the_stream() {
        let (e, out, err) = end();
        assert!(!e.handle(Message::Started { stream: 0, pid: 7 }));
        e.wait_started(Duration::from_millis(1)).unwrap();
        e.handle(Message::Stdout {
            stream: 0,
            data: b"out".to_vec(),
        });
        e.handle(Message::Stderr {
            stream: 0,
            data: b"err".to_vec(),
        });
        assert!(e.handle(Message::Exit {
            stream: 0,
            status: ExitStatus::Signal(9)
        }));
        // Frames after the end change nothing.
        e.handle(Message::Stdout {
            stream: 0,
            data: b"late".to_vec(),
        });
        e.handle(Message::Exit {
            stream: 0,
            status: ExitStatus::Code(0),
        });
        assert_eq!(e.wait(), Ok(ExitStatus::Signal(9)));
        assert_eq!(contents(out), "out");
        assert_eq!(contents(err), "err");
    }

    #[test]
    fn spawn_errors_map_to_docker_codes() {
        let (e, _, err) = end();
        e.handle(Message::SpawnError {
            stream: 0,
            kind: SpawnErrorKind::NotFound,
            message: "exec nope: No such file".into(),
        });
        assert_eq!(e.wait(), Ok(ExitStatus::Code(127)));
        assert!(contents(err).contains("exec nope"));
        let (e, _, _) = end();
        e.handle(Message::SpawnError {
            stream: 0,
            kind: SpawnErrorKind::Other,
            message: "mount failed".into(),
        });
        assert_eq!(
            e.wait_started(Duration::from_millis(1)),
            Err("mount failed".into())
        );
    }

    #[test]
    fn a_silent_agent_times_out() {
        let (e, _, _) = end();
        assert!(e.wait_started(Duration::from_millis(20)).is_err());
        e.fail("channel closed".into());
        assert_eq!(e.wait(), Err("channel closed".into()));
    }
}
