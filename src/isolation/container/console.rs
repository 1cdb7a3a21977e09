//! `-t`: receiving the pseudo-terminal master that libcontainer's init sends over a unix
//! socket (the OCI console-socket protocol).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::isolation::IsolationError;

/// A listening console socket. Its path is short and under /tmp because socket paths are
/// limited to 108 bytes, which a state root path can exceed.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a fresh socket for container `id`.
    pub fn bind(id: &str) -> Result<Self, IsolationError> {
        let short: String = id.chars().take(12).collect();
        let path = std::env::temp_dir().join(format!(
            "vessel-console-{short}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| IsolationError::io("binding the console socket", e))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// Where the runtime connects.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Accepts the runtime's connection and takes the terminal master from it.
    pub fn receive(&self) -> Result<OwnedFd, IsolationError> {
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| IsolationError::io("accepting on the console socket", e))?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| IsolationError::runtime("receiving the terminal", e))?;
        for cmsg in msg
            .cmsgs()
            .map_err(|e| IsolationError::runtime("receiving the terminal", e))?
        {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor in our table for us;
                    // nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(IsolationError::runtime(
            "receiving the terminal",
            "the runtime sent no file descriptor",
        ))
    }
}

/// Removes console sockets left by vessel processes that died before dropping them.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix("vessel-console-")
            .and_then(|rest| rest.strip_suffix(".sock"))
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
