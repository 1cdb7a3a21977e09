//! The length-prefixed frame codec.
//!
//! Wire layout of one frame (all integers little-endian):
//!
//! ```text
//! u32 length   -- bytes that follow: 5 + payload length, at most 5 + MAX_PAYLOAD
//! u8  kind     -- which message (see message::Kind)
//! u32 stream   -- 0 = the container's main process, 1.. = exec sessions
//! [u8] payload
//! ```
//!
//! A reader never allocates more than the bound before it has validated the length, so a
//! hostile peer cannot make the other side allocate unbounded memory.
//!
//! A start request (argv and environment) may be larger than one frame: container mode
//! takes whatever the kernel's `ARG_MAX` allows (2 MiB by default), so a VM must too. The
//! writer sends its JSON as `START_PART` frames followed by one `START` frame with the
//! rest, in a single write; the reader joins them, up to [`MAX_START`] in all. Everything
//! above the codec sees one [`Message::Start`].

use std::io::{self, Read, Write};

use crate::message::{kind, Message, StreamId};

/// Largest payload a frame may carry. Data chunks are split to fit; a larger start request
/// is split across frames by the codec itself.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Largest start request (its JSON: argv, environment and the rest) the codec carries:
/// four times the kernel's default `ARG_MAX`, which bounds argv plus environment at exec.
pub const MAX_START: usize = 8 << 20;

/// Bytes of kind + stream that every frame carries after its length.
const HEADER: usize = 5;

/// What can go wrong reading or decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying channel failed.
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The channel closed in the middle of a frame.
    #[error("channel closed in the middle of a frame")]
    Truncated,
    /// The length field is smaller than a header or larger than the bound.
    #[error("bad frame length {0} (allowed {min}..={max})", min = HEADER, max = HEADER + MAX_PAYLOAD)]
    BadLength(u32),
    /// The kind byte names no message.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The payload does not decode as its kind requires.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// The frame's kind, by name.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A message to send does not fit in one frame.
    #[error("{0}-byte payload exceeds the {MAX_PAYLOAD}-byte frame bound")]
    TooLarge(usize),
    /// A start request is larger than [`MAX_START`].
    #[error("the command and environment take {0} bytes encoded; a VM takes at most {MAX_START}")]
    StartTooLarge(usize),
}

/// Reads frames from a byte stream, one message at a time.
pub struct FrameReader<R> {
    inner: R,
    /// The leading parts of a start request being joined: its stream and bytes so far.
    start: Option<(StreamId, Vec<u8>)>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        Self { inner, start: None }
    }

    /// The next message, or `None` at a clean end of stream (between frames).
    pub fn read(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let mut len = [0u8; 4];
            if !read_exact_or_eof(&mut self.inner, &mut len)? {
                if self.start.is_some() {
                    return Err(FrameError::Truncated);
                }
                return Ok(None);
            }
            let len = u32::from_le_bytes(len);
            if (len as usize) < HEADER || len as usize > HEADER + MAX_PAYLOAD {
                return Err(FrameError::BadLength(len));
            }
            let mut body = vec![0u8; len as usize];
            if !read_exact_or_eof(&mut self.inner, &mut body)? {
                return Err(FrameError::Truncated);
            }
            let (k, stream) = (
                body[0],
                u32::from_le_bytes([body[1], body[2], body[3], body[4]]),
            );
            let payload = &body[HEADER..];
            match (k, self.start.take()) {
                (kind::START_PART, None) => self.start = Some((stream, payload.to_vec())),
                (kind::START_PART | kind::START, Some((s, mut joined))) if s == stream => {
                    joined.extend_from_slice(payload);
                    if joined.len() > MAX_START {
                        return Err(FrameError::StartTooLarge(joined.len()));
                    }
                    if k == kind::START {
                        return Message::decode(k, stream, &joined).map(Some);
                    }
                    self.start = Some((s, joined));
                }
                (_, Some(_)) => {
                    return Err(FrameError::Malformed {
                        kind: "start-part",
                        reason: "not followed by the rest of its start request".into(),
                    })
                }
                (_, None) => return Message::decode(k, stream, payload).map(Some),
            }
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Fills `buf`; `Ok(false)` if the stream ended before the first byte, `Truncated` if later.
fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Writes messages to a byte stream, one frame per message, each in a single `write_all`.
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a byte stream.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Encodes and sends one message.
    pub fn write(&mut self, msg: &Message) -> Result<(), FrameError> {
        let buf = encode(msg)?;
        self.inner.write_all(&buf)?;
        self.inner.flush()?;
        Ok(())
    }
}

fn push_frame(buf: &mut Vec<u8>, kind: u8, stream: StreamId, payload: &[u8]) {
    buf.extend_from_slice(&((HEADER + payload.len()) as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&stream.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// One message as the bytes of its frames: one frame, or for a large start request its
/// `START_PART` frames and the closing `START`.
pub fn encode(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let (k, stream, payload) = msg.encode()?;
    if k == kind::START && payload.len() > MAX_START {
        return Err(FrameError::StartTooLarge(payload.len()));
    }
    if k != kind::START && payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut buf =
        Vec::with_capacity(payload.len() + (4 + HEADER) * (1 + payload.len() / MAX_PAYLOAD));
    let mut rest = &payload[..];
    while rest.len() > MAX_PAYLOAD {
        let (part, tail) = rest.split_at(MAX_PAYLOAD);
        push_frame(&mut buf, kind::START_PART, stream, part);
        rest = tail;
    }
    push_frame(&mut buf, k, stream, rest);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ExitStatus, ProcessSpec, RootfsSpec, SpawnErrorKind};

    fn roundtrip(msg: Message) {
        let buf = encode(&msg).unwrap();
        let mut r = FrameReader::new(&buf[..]);
        assert_eq!(r.read().unwrap(), Some(msg));
        assert_eq!(r.read().unwrap(), None);
    }

    #[test]
    fn every_message_roundtrips() {
        let spec = ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![10, 20],
            tty: true,
            rootfs: Some(RootfsSpec {
                hostname: "box".into(),
                readonly: true,
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                tmpfs: vec!["/scratch".into()],
                pids_limit: Some(64),
                volumes: vec![crate::message::VolumeSpec {
                    tag: "vessel-vol0".into(),
                    destination: "/data".into(),
                    read_only: true,
                    file: Some("f.txt".into()),
                }],
                network: Some(crate::message::NetworkSpec {
                    address: std::net::Ipv4Addr::new(10, 0, 2, 100),
                    prefix_len: 24,
                    gateway: std::net::Ipv4Addr::new(10, 0, 2, 2),
                }),
                files: vec![crate::message::FileSpec {
                    path: "/etc/hosts".into(),
                    contents: "127.0.0.1\tlocalhost\n".into(),
                }],
            }),
            confinement: Some(crate::message::Confinement {
                capabilities: vec![0, 5, 21],
                no_new_privs: true,
                seccomp: vec![6, 0, 0, 0, 0, 0, 0xff, 0x7f],
            }),
        };
        for msg in [
            Message::Ready {
                kernel: "6.1.0".into(),
            },
            Message::Start {
                stream: 0,
                spec: Box::new(spec),
            },
            Message::Started { stream: 3, pid: 42 },
            Message::Stdin {
                stream: 1,
                data: b"abc".to_vec(),
            },
            Message::StdinClose { stream: 1 },
            Message::Stdout {
                stream: 0,
                data: vec![0, 255, 10],
            },
            Message::Stderr {
                stream: 7,
                data: vec![],
            },
            Message::Signal {
                stream: 0,
                signal: 15,
            },
            Message::Signaled {
                stream: 2,
                result: 3,
            },
            Message::Resize {
                stream: 0,
                rows: 24,
                cols: 80,
            },
            Message::Exit {
                stream: 0,
                status: ExitStatus::Code(3),
            },
            Message::Exit {
                stream: 2,
                status: ExitStatus::Signal(9),
            },
            Message::SpawnError {
                stream: 0,
                kind: SpawnErrorKind::NotFound,
                message: "nope: not found".into(),
            },
            Message::Shutdown,
        ] {
            roundtrip(msg);
        }
    }

    #[test]
    fn frames_concatenate_on_one_stream() {
        let mut buf = encode(&Message::Shutdown).unwrap();
        buf.extend(encode(&Message::StdinClose { stream: 9 }).unwrap());
        let mut r = FrameReader::new(&buf[..]);
        assert_eq!(r.read().unwrap(), Some(Message::Shutdown));
        assert_eq!(r.read().unwrap(), Some(Message::StdinClose { stream: 9 }));
        assert_eq!(r.read().unwrap(), None);
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        buf.extend([0u8; 16]);
        assert!(matches!(
            FrameReader::new(&buf[..]).read(),
            Err(FrameError::BadLength(u32::MAX))
        ));
        let short = 3u32.to_le_bytes();
        assert!(matches!(
            FrameReader::new(&short[..]).read(),
            Err(FrameError::BadLength(3))
        ));
    }

    #[test]
    fn truncated_frame_is_an_error_not_eof() {
        let buf = encode(&Message::Stdout {
            stream: 0,
            data: b"hello".to_vec(),
        })
        .unwrap();
        for cut in 1..buf.len() {
            let r = FrameReader::new(&buf[..cut]).read();
            assert!(
                matches!(r, Err(FrameError::Truncated)),
                "cut at {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn unknown_kind_and_bad_payloads_are_errors() {
        let mut f = vec![5, 0, 0, 0, 0xee, 0, 0, 0, 0];
        assert!(matches!(
            FrameReader::new(&f[..]).read(),
            Err(FrameError::UnknownKind(0xee))
        ));
        // A signal frame with a 2-byte payload.
        f = vec![7, 0, 0, 0, crate::message::kind::SIGNAL, 0, 0, 0, 0, 1, 2];
        assert!(matches!(
            FrameReader::new(&f[..]).read(),
            Err(FrameError::Malformed { .. })
        ));
        // A start frame whose JSON is garbage.
        let mut g = vec![0u8; 4];
        g.push(crate::message::kind::START);
        g.extend([0, 0, 0, 0]);
        g.extend(b"{not json");
        let n = (g.len() - 4) as u32;
        g[..4].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(
            FrameReader::new(&g[..]).read(),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // A fixed xorshift sequence: deterministic, no extra dependency.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            let n = (x % 64) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            // Keep lengths plausible half of the time so decoding paths are reached.
            if buf.len() >= 5 && x.is_multiple_of(2) {
                let l = (buf.len() - 4) as u32;
                buf[..4].copy_from_slice(&l.to_le_bytes());
                buf[4] %= 16;
            }
            let mut r = FrameReader::new(&buf[..]);
            while let Ok(Some(_)) = r.read() {}
        }
    }

    fn big_start(bytes: usize) -> Message {
        Message::Start {
            stream: 4,
            spec: Box::new(ProcessSpec {
                argv: vec!["echo".into(), "x".repeat(bytes)],
                env: vec![format!("BIG={}", "y".repeat(bytes / 2))],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                groups: vec![],
                tty: false,
                rootfs: None,
                confinement: None,
            }),
        }
    }

    #[test]
    fn a_large_start_is_split_and_joined() {
        let msg = big_start(700 * 1024);
        let mut buf = encode(&msg).unwrap();
        assert!(buf.len() > 3 * MAX_PAYLOAD, "{}", buf.len());
        buf.extend(encode(&Message::Shutdown).unwrap());
        let mut r = FrameReader::new(&buf[..]);
        assert_eq!(r.read().unwrap(), Some(msg));
        assert_eq!(r.read().unwrap(), Some(Message::Shutdown));
        assert_eq!(r.read().unwrap(), None);
        // Cut anywhere inside, it is truncated, never a shorter start.
        let buf = encode(&big_start(300 * 1024)).unwrap();
        for cut in [4, MAX_PAYLOAD, MAX_PAYLOAD + 9, buf.len() - 1] {
            assert!(matches!(
                FrameReader::new(&buf[..cut]).read(),
                Err(FrameError::Truncated)
            ));
        }
    }

    #[test]
    fn start_parts_are_bounded_and_must_be_followed_by_their_start() {
        assert!(matches!(
            encode(&big_start(MAX_START)),
            Err(FrameError::StartTooLarge(_))
        ));
        // A hostile peer's endless parts stop at the bound.
        let part = vec![b' '; MAX_PAYLOAD];
        let mut buf = Vec::new();
        for _ in 0..=MAX_START / MAX_PAYLOAD {
            push_frame(&mut buf, kind::START_PART, 1, &part);
        }
        assert!(matches!(
            FrameReader::new(&buf[..]).read(),
            Err(FrameError::StartTooLarge(_))
        ));
        // A part, then something else (or another stream's start) is malformed.
        for (k, stream) in [(kind::STDIN, 1), (kind::START, 2)] {
            let mut buf = Vec::new();
            push_frame(&mut buf, kind::START_PART, 1, b"{");
            push_frame(&mut buf, k, stream, b"x");
            assert!(matches!(
                FrameReader::new(&buf[..]).read(),
                Err(FrameError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn too_large_payload_is_refused_on_send() {
        let msg = Message::Stdout {
            stream: 0,
            data: vec![0; MAX_PAYLOAD + 1],
        };
        assert!(matches!(encode(&msg), Err(FrameError::TooLarge(_))));
    }
}
