//! A container's log: its stdout and stderr, interleaved in arrival order, as
//! frames `[stream: u8][length: u32 LE][bytes]` so `logs` can send each to the right stream.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which stream a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (also a terminal's output).
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

/// Appends frames to a container's log; shared by the threads that read its streams.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<File>>,
}

impl LogWriter {
    /// Creates (or appends to) the log file.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one frame.
    pub fn write(&self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(5 + data.len());
        frame.push(stream as u8);
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame.extend_from_slice(data);
        let mut f = self
            .file
            .lock()
            .map_err(|_| io::Error::other("log lock poisoned"))?;
        f.write_all(&frame)
    }

    /// Copies everything read from `source` into the log until end of file (or EIO, which
    /// is how a terminal master reports that the other side closed), and into `echo` too
    /// when given (a foreground run shows its output and logs it).
    pub fn pump(
        &self,
        mut source: impl Read + Send + 'static,
        stream: Stream,
        mut echo: Option<Box<dyn Write + Send>>,
    ) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(w) = echo.as_mut() {
                            // A closed terminal must not stop the logging.
                            if w.write_all(&buf[..n]).and_then(|_| w.flush()).is_err() {
                                echo = None;
                            }
                        }
                        if log.write(stream, &buf[..n]).is_err() && echo.is_none() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
    }
}

/// Decodes the complete frames at the front of `pending`, writes them out, and drops them.
fn drain_frames(pending: &mut Vec<u8>, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<()> {
    let mut used = 0;
    while pending.len() - used >= 5 {
        let len = u32::from_le_bytes(pending[used + 1..used + 5].try_into().expect("four bytes"))
            as usize;
        if pending.len() - used - 5 < len {
            break;
        }
        let data = &pending[used + 5..used + 5 + len];
        if pending[used] == Stream::Stderr as u8 {
            err.write_all(data)?;
        } else {
            out.write_all(data)?;
        }
        used += 5 + len;
    }
    pending.drain(..used);
    out.flush()?;
    err.flush()
}

/// Writes the log at `path` to `out` and `err`. With `follow`, keeps reading new frames
/// until `running()` turns false and the log is drained.
pub fn copy_out(
    path: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
    follow: bool,
    running: &mut dyn FnMut() -> bool,
) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // Ask before reading, so output written just before the exit is still read.
        let still_running = follow && running();
        file.read_to_end(&mut pending)?;
        drain_frames(&mut pending, out, err)?;
        if !still_running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_to_their_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let w = LogWriter::create(&path).unwrap();
        w.write(Stream::Stdout, b"out1\n").unwrap();
        w.write(Stream::Stderr, b"err1\n").unwrap();
        w.write(Stream::Stdout, b"out2\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_out(&path, &mut out, &mut err, false, &mut || false).unwrap();
        assert_eq!(out, b"out1\nout2\n");
        assert_eq!(err, b"err1\n");
    }
}
