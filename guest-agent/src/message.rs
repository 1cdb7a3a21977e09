//! The messages of the host↔guest protocol and their payload encodings.
//!
//! Conversation: the agent boots, loads modules, opens the channel and sends `Ready`. The
//! host sends `Start` on stream 0 with a [`RootfsSpec`] (the agent mounts the disks, joins
//! them with overlayfs and sets the hostname), then `Stdin`/`StdinClose`/`Signal`/`Resize`
//! as the user acts. The agent answers `Started` or `SpawnError`, streams `Stdout`/`Stderr`,
//! and sends `Exit` once the process has exited and its output is drained. Further `Start`s
//! on other streams are exec sessions in the same root. After stream 0's `Exit` the host
//! sends `Shutdown` (or the agent gives up waiting) and the agent syncs and powers off.

use serde::{Deserialize, Serialize};

use crate::frame::FrameError;

/// Which process a frame is about: 0 is the container's main process, others are execs.
pub type StreamId = u32;

/// Frame kind bytes.
pub mod kind {
    /// Agent → host: the agent is up.
    pub const READY: u8 = 1;
    /// Host → agent: run a process.
    pub const START: u8 = 2;
    /// Agent → host: the process runs.
    pub const STARTED: u8 = 3;
    /// Host → agent: bytes for the process's stdin.
    pub const STDIN: u8 = 4;
    /// Host → agent: stdin reached its end.
    pub const STDIN_CLOSE: u8 = 5;
    /// Agent → host: bytes the process wrote to stdout (or the terminal).
    pub const STDOUT: u8 = 6;
    /// Host → agent: deliver a signal.
    pub const SIGNAL: u8 = 7;
    /// Host → agent: the terminal changed size.
    pub const RESIZE: u8 = 8;
    /// Agent → host: the process is gone.
    pub const EXIT: u8 = 9;
    /// Agent → host: bytes the process wrote to stderr.
    pub const STDERR: u8 = 10;
    /// Agent → host: the process could not be started.
    pub const SPAWN_ERROR: u8 = 11;
    /// Host → agent: power off now.
    pub const SHUTDOWN: u8 = 12;
    /// Agent → host: a signal was delivered (0) or could not be (an errno).
    pub const SIGNALED: u8 = 14;
    /// Host → agent: the leading part of a start request too large for one frame; the
    /// `START` frame that follows on the same stream carries the rest (frame layer only).
    pub const START_PART: u8 = 13;
}

/// How the container's root filesystem is assembled; sent with stream 0's `Start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The guest's hostname.
    pub hostname: String,
    /// Mount the overlay read-only (`--read-only`).
    pub readonly: bool,
    /// Paths hidden from the container (runc's: `/proc/kcore` and the like): a file gets
    /// `/dev/null` over it, a directory an empty read-only tmpfs.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths the container sees read-only (runc's: `/proc/sys` and the like).
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// `--tmpfs` mount points.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// `--pids-limit`: the most processes the container may have.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// Host directories shared over virtio-fs (`-v`), in mount order.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// The network card's address (the default network); `None`: loopback only.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    /// Files bound over the image's own (`/etc/hosts`, `/etc/resolv.conf`, ...), as docker
    /// binds them: writable, and gone with the container.
    #[serde(default)]
    pub files: Vec<FileSpec>,
}

/// The static address of the VM's network card; the host's network helper answers at the
/// gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The guest's IPv4 address.
    pub address: std::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default route's gateway.
    pub gateway: std::net::Ipv4Addr,
}

/// A file the container sees at `path` with `contents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Absolute path in the container.
    pub path: String,
    /// What it holds.
    pub contents: String,
}

/// One `-v HOST:CTR[:ro]` in a VM: a virtio-fs device (its tag) that shares a host
/// directory, and where it appears in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The virtio-fs tag the host gave the device.
    pub tag: String,
    /// Absolute path in the container.
    pub destination: String,
    /// Mounted read-only (writes fail with EROFS).
    pub read_only: bool,
    /// For a single-file bind: the file's name in the shared directory (its parent), which
    /// alone is bound at `destination`.
    #[serde(default)]
    pub file: Option<String>,
}

/// What confines a container's process, as container mode confines it on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// Capability numbers the process may hold (its bounding set); every other is dropped.
    pub capabilities: Vec<u32>,
    /// Set `no_new_privs` (setuid binaries then gain nothing).
    pub no_new_privs: bool,
    /// A seccomp program (`struct sock_filter` entries, 8 bytes each) to load right
    /// before exec; empty for none.
    pub seccomp: Vec<u8>,
}

/// A process to run, already resolved by the host from the image config and the flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; the program is looked up in the process's `PATH`.
    pub argv: Vec<String>,
    /// `KEY=value` entries, the whole environment.
    pub env: Vec<String>,
    /// Working directory inside the container, created if missing.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
    /// Give the process a pseudo-terminal (stdout and stderr then arrive as one stream).
    pub tty: bool,
    /// Present on the first start only: how to build the root filesystem.
    pub rootfs: Option<RootfsSpec>,
    /// Capabilities, no_new_privs and seccomp; without it the process runs with the
    /// agent's full privileges (only the codec's tests build such a spec).
    #[serde(default)]
    pub confinement: Option<Confinement>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Why a process could not be started; the host maps these to docker's 126/127/125.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnErrorKind {
    /// The program does not exist (127).
    NotFound,
    /// The program exists but cannot be executed (126).
    NotExecutable,
    /// Anything else: mounts, bad working directory, user switch (125).
    Other,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agent → host: the agent is up; carries the guest kernel release.
    Ready {
        /// `uname -r` inside the guest.
        kernel: String,
    },
    /// Host → agent: run a process on a stream.
    Start {
        /// Stream the process's frames will use.
        stream: StreamId,
        /// What to run (boxed: it is by far the largest message).
        spec: Box<ProcessSpec>,
    },
    /// Agent → host: the process runs with this guest pid.
    Started {
        /// The stream.
        stream: StreamId,
        /// Guest pid.
        pid: u32,
    },
    /// Host → agent: stdin bytes.
    Stdin {
        /// The stream.
        stream: StreamId,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Host → agent: no more stdin.
    StdinClose {
        /// The stream.
        stream: StreamId,
    },
    /// Agent → host: stdout (or terminal) bytes.
    Stdout {
        /// The stream.
        stream: StreamId,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Agent → host: stderr bytes.
    Stderr {
        /// The stream.
        stream: StreamId,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Host → agent: send a signal to the process.
    Signal {
        /// The stream.
        stream: StreamId,
        /// Signal number.
        signal: i32,
    },
    /// Agent → host: what became of a `Signal`: 0 when delivered, else the errno of
    /// `kill(2)` (`ESRCH`: the process is gone). Lets `vessel kill` report what happened
    /// rather than what it asked for.
    Signaled {
        /// The stream.
        stream: StreamId,
        /// 0, or an errno.
        result: i32,
    },
    /// Host → agent: resize the process's terminal.
    Resize {
        /// The stream.
        stream: StreamId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Agent → host: the process ended and its output is drained.
    Exit {
        /// The stream.
        stream: StreamId,
        /// How it ended.
        status: ExitStatus,
    },
    /// Agent → host: the process could not be started.
    SpawnError {
        /// The stream.
        stream: StreamId,
        /// Classification for the exit code.
        kind: SpawnErrorKind,
        /// Human-readable reason.
        message: String,
    },
    /// Host → agent: sync and power off.
    Shutdown,
}

#[derive(Serialize, Deserialize)]
struct SpawnErrorPayload {
    kind: SpawnErrorKind,
    message: String,
}

fn malformed(kind: &'static str, reason: impl ToString) -> FrameError {
    FrameError::Malformed {
        kind,
        reason: reason.to_string(),
    }
}

fn fixed<const N: usize>(name: &'static str, p: &[u8]) -> Result<[u8; N], FrameError> {
    p.try_into()
        .map_err(|_| malformed(name, format!("payload is {} bytes, expected {N}", p.len())))
}

fn json<T: serde::de::DeserializeOwned>(name: &'static str, p: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(p).map_err(|e| malformed(name, e))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, FrameError> {
    serde_json::to_vec(v).map_err(|e| malformed("outgoing", e))
}

impl Message {
    /// The stream this message belongs to (0 for channel-wide messages).
    pub fn stream(&self) -> StreamId {
        match self {
            Message::Ready { .. } | Message::Shutdown => 0,
            Message::Start { stream, .. }
            | Message::Started { stream, .. }
            | Message::Stdin { stream, .. }
            | Message::StdinClose { stream }
            | Message::Stdout { stream, .. }
            | Message::Stderr { stream, .. }
            | Message::Signal { stream, .. }
            | Message::Signaled { stream, .. }
            | Message::Resize { stream, .. }
            | Message::Exit { stream, .. }
            | Message::SpawnError { stream, .. } => *stream,
        }
    }

    /// Kind byte, stream and payload bytes.
    pub(crate) fn encode(&self) -> Result<(u8, StreamId, Vec<u8>), FrameError> {
        let stream = self.stream();
        Ok(match self {
            Message::Ready { kernel } => (kind::READY, stream, kernel.as_bytes().to_vec()),
            Message::Start { spec, .. } => (kind::START, stream, to_json(spec)?),
            Message::Started { pid, .. } => (kind::STARTED, stream, pid.to_le_bytes().to_vec()),
            Message::Stdin { data, .. } => (kind::STDIN, stream, data.clone()),
            Message::StdinClose { .. } => (kind::STDIN_CLOSE, stream, vec![]),
            Message::Stdout { data, .. } => (kind::STDOUT, stream, data.clone()),
            Message::Stderr { data, .. } => (kind::STDERR, stream, data.clone()),
            Message::Signal { signal, .. } => (kind::SIGNAL, stream, signal.to_le_bytes().to_vec()),
            Message::Signaled { result, .. } => {
                (kind::SIGNALED, stream, result.to_le_bytes().to_vec())
            }
            Message::Resize { rows, cols, .. } => {
                let mut p = rows.to_le_bytes().to_vec();
                p.extend_from_slice(&cols.to_le_bytes());
                (kind::RESIZE, stream, p)
            }
            Message::Exit { status, .. } => {
                let (tag, v) = match status {
                    ExitStatus::Code(c) => (0u8, *c),
                    ExitStatus::Signal(s) => (1u8, *s),
                };
                let mut p = vec![tag];
                p.extend_from_slice(&v.to_le_bytes());
                (kind::EXIT, stream, p)
            }
            Message::SpawnError { kind, message, .. } => {
                let payload = SpawnErrorPayload {
                    kind: *kind,
                    message: message.clone(),
                };
                (kind::SPAWN_ERROR, stream, to_json(&payload)?)
            }
            Message::Shutdown => (kind::SHUTDOWN, stream, vec![]),
        })
    }

    /// Decodes a frame body; every field is validated, nothing is trusted.
    pub(crate) fn decode(k: u8, stream: StreamId, p: &[u8]) -> Result<Message, FrameError> {
        Ok(match k {
            kind::READY => Message::Ready {
                kernel: String::from_utf8(p.to_vec()).map_err(|e| malformed("ready", e))?,
            },
            kind::START => Message::Start {
                stream,
                spec: Box::new(json("start", p)?),
            },
            kind::STARTED => Message::Started {
                stream,
                pid: u32::from_le_bytes(fixed("started", p)?),
            },
            kind::STDIN => Message::Stdin {
                stream,
                data: p.to_vec(),
            },
            kind::STDIN_CLOSE => {
                fixed::<0>("stdin-close", p)?;
                Message::StdinClose { stream }
            }
            kind::STDOUT => Message::Stdout {
                stream,
                data: p.to_vec(),
            },
            kind::STDERR => Message::Stderr {
                stream,
                data: p.to_vec(),
            },
            kind::SIGNAL => Message::Signal {
                stream,
                signal: i32::from_le_bytes(fixed("signal", p)?),
            },
            kind::SIGNALED => Message::Signaled {
                stream,
                result: i32::from_le_bytes(fixed("signaled", p)?),
            },
            kind::RESIZE => {
                let b: [u8; 4] = fixed("resize", p)?;
                Message::Resize {
                    stream,
                    rows: u16::from_le_bytes([b[0], b[1]]),
                    cols: u16::from_le_bytes([b[2], b[3]]),
                }
            }
            kind::EXIT => {
                let b: [u8; 5] = fixed("exit", p)?;
                let v = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                let status = match b[0] {
                    0 => ExitStatus::Code(v),
                    1 => ExitStatus::Signal(v),
                    t => return Err(malformed("exit", format!("unknown status tag {t}"))),
                };
                Message::Exit { stream, status }
            }
            kind::SPAWN_ERROR => {
                let e: SpawnErrorPayload = json("spawn-error", p)?;
                Message::SpawnError {
                    stream,
                    kind: e.kind,
                    message: e.message,
                }
            }
            kind::SHUTDOWN => {
                fixed::<0>("shutdown", p)?;
                Message::Shutdown
            }
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}
