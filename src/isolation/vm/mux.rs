//! Sharing the one agent channel among the container's main process and exec sessions.
//!
//! The supervising vessel process owns the channel. Guest frames are routed by stream: the
//! main process's to its [`StreamEnd`], an exec session's to that session's connection on
//! the control socket (`<container dir>/vm.sock`), renumbered to stream 0 for the client.
//! The control socket speaks the same frame protocol: a client's first frame is either a
//! `Start` (an exec session: the frames that follow are its stdin, signals and resizes) or
//! a `Signal` for the main process (`vessel kill`/`stop` from another process), which is
//! answered with the agent's `Signaled` (delivered, or the errno) once the agent has it.
//! The agent acknowledges every signal of a stream in order, so the acks of the main
//! process's signals are paired with their senders first in, first out.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vessel_agent::{FrameReader, FrameWriter, Message, StreamId};

use super::stream::StreamEnd;

enum Route {
    Local(Arc<StreamEnd>),
    Remote(Arc<Mutex<FrameWriter<UnixStream>>>),
}

/// The host side of the agent channel.
pub struct Mux {
    to_guest: Mutex<FrameWriter<UnixStream>>,
    routes: Mutex<HashMap<StreamId, Route>>,
    next_stream: AtomicU32,
    closed: AtomicBool,
    /// Who waits for the agent's answer to each signal sent to the main process, in the
    /// order they were sent (`None`: nobody, e.g. a forwarded Ctrl-C).
    signal_waiters: Mutex<VecDeque<Option<Sender<i32>>>>,
    /// Why the channel ended, once it has.
    pub end_reason: Mutex<Option<String>>,
}

impl Mux {
    /// Takes over the channel and starts routing guest frames.
    pub fn start(channel: UnixStream) -> std::io::Result<Arc<Mux>> {
        let reader = channel.try_clone()?;
        let mux = Arc::new(Mux {
            to_guest: Mutex::new(FrameWriter::new(channel)),
            routes: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            signal_waiters: Mutex::new(VecDeque::new()),
            end_reason: Mutex::new(None),
        });
        let m = mux.clone();
        std::thread::spawn(move || m.route_guest_frames(reader));
        Ok(mux)
    }

    /// Sends a frame to the agent; false once the channel is gone.
    pub fn send(&self, msg: &Message) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        self.to_guest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(msg)
            .is_ok()
    }

    /// Sends `signal` to the main process; the agent's answer (0 or an errno) goes to
    /// `answer`, if given. False once the channel is gone.
    pub fn signal_main(&self, signal: i32, answer: Option<Sender<i32>>) -> bool {
        // Held across the send, so that the waiters are in the order the frames went out.
        let mut waiters = self
            .signal_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.send(&Message::Signal { stream: 0, signal }) {
            return false;
        }
        waiters.push_back(answer);
        true
    }

    /// Routes `stream`'s guest frames to a local end.
    pub fn attach_local(&self, stream: StreamId, end: Arc<StreamEnd>) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, Route::Local(end));
    }

    fn route_guest_frames(&self, channel: UnixStream) {
        let mut reader = FrameReader::new(channel);
        let why = loop {
            match reader.read() {
                Ok(Some(msg)) => self.route(msg),
                Ok(None) => break "the VM closed the agent channel".to_string(),
                Err(e) => break format!("the guest sent a bad frame: {e}"),
            }
        };
        self.closed.store(true, Ordering::SeqCst);
        *self.end_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        for (_, r) in self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            match r {
                Route::Local(end) => end.fail(why.clone()),
                Route::Remote(w) => {
                    let _ =
                        w.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .write(&Message::SpawnError {
                                stream: 0,
                                kind: vessel_agent::SpawnErrorKind::Other,
                                message: why.clone(),
                            });
                }
            }
        }
    }

    fn route(&self, msg: Message) {
        if let Message::Signaled { stream: 0, result } = msg {
            let waiter = self
                .signal_waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some(Some(tx)) = waiter {
                let _ = tx.send(result);
            }
            return;
        }
        let stream = msg.stream();
        let ends = matches!(msg, Message::Exit { .. } | Message::SpawnError { .. });
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        match routes.get(&stream) {
            Some(Route::Local(end)) => {
                let end = end.clone();
                drop(routes);
                if end.handle(msg) {
                    self.routes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&stream);
                }
            }
            Some(Route::Remote(w)) => {
                let w = w.clone();
                if ends {
                    routes.remove(&stream);
                }
                drop(routes);
                let _ = w
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(&renumber(msg, 0));
            }
            // Frames for no live stream (a late frame after a client left): dropped.
            None => {}
        }
    }

    /// Serves the control socket at `path` until the channel closes.
    pub fn serve_control(self: &Arc<Self>, dir: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(control_socket(dir));
        let short = super::socket_path::socket_path(dir, CONTROL_SOCKET)?;
        let listener = UnixListener::bind(&short.path)?;
        let mux = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if mux.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let m = mux.clone();
                std::thread::spawn(move || m.serve_client(conn));
            }
        });
        Ok(())
    }

    fn serve_client(&self, conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(writer) = conn.try_clone() else { return };
        let writer = Arc::new(Mutex::new(FrameWriter::new(writer)));
        let mut reader = FrameReader::new(conn);
        let stream = match reader.read() {
            Ok(Some(Message::Signal { signal, .. })) => {
                let (tx, rx) = mpsc::channel();
                if self.signal_main(signal, Some(tx)) {
                    if let Ok(result) = rx.recv_timeout(SIGNAL_ANSWER_TIMEOUT) {
                        let _ = writer
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .write(&Message::Signaled { stream: 0, result });
                    }
                }
                return;
            }
            Ok(Some(Message::Start { spec, .. })) => {
                let stream = self.next_stream.fetch_add(1, Ordering::SeqCst);
                self.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(stream, Route::Remote(writer.clone()));
                if !self.send(&Message::Start { stream, spec }) {
                    return;
                }
                stream
            }
            _ => return,
        };
        let _ = reader.get_ref().set_read_timeout(None);
        // The client's stdin, signals and resizes, until it hangs up.
        while let Ok(Some(msg)) = reader.read() {
            if matches!(
                msg,
                Message::Stdin { .. }
                    | Message::StdinClose { .. }
                    | Message::Signal { .. }
                    | Message::Resize { .. }
            ) && !self.send(&renumber(msg, stream))
            {
                break;
            }
        }
        self.send(&Message::StdinClose { stream });
    }
}

/// How long a `kill` client's signal may wait for the agent's answer.
pub const SIGNAL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// File name of the control socket in a container directory.
pub const CONTROL_SOCKET: &str = "vm.sock";

/// The control socket of a container directory.
pub fn control_socket(dir: &Path) -> PathBuf {
    dir.join(CONTROL_SOCKET)
}

/// The same message on another stream.
pub fn renumber(msg: Message, to: StreamId) -> Message {
    match msg {
        Message::Start { spec, .. } => Message::Start { stream: to, spec },
        Message::Started { pid, .. } => Message::Started { stream: to, pid },
        Message::Stdin { data, .. } => Message::Stdin { stream: to, data },
        Message::StdinClose { .. } => Message::StdinClose { stream: to },
        Message::Stdout { data, .. } => Message::Stdout { stream: to, data },
        Message::Stderr { data, .. } => Message::Stderr { stream: to, data },
        Message::Signal { signal, .. } => Message::Signal { stream: to, signal },
        Message::Signaled { result, .. } => Message::Signaled { stream: to, result },
        Message::Resize { rows, cols, .. } => Message::Resize {
            stream: to,
            rows,
            cols,
        },
        Message::Exit { status, .. } => Message::Exit { stream: to, status },
        Message::SpawnError { kind, message, .. } => Message::SpawnError {
            stream: to,
            kind,
            message,
        },
        m @ (Message::Ready { .. } | Message::Shutdown) => m,
    }
}
