//! Unix socket paths that fit in `sun_path` (108 bytes) however deep the state root is.
//!
//! A container directory under a long state root makes `<dir>/agent.sock` too long to
//! bind. The socket still lives in the directory, but is named through a short alias:
//! `/proc/<pid>/fd/<n>/agent.sock`, where `<n>` is a descriptor of the directory that this
//! process holds open. Another process (the VMM) can use the same alias while we hold it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest path `bind`/`connect` accept (sun_path minus the terminating NUL).
const MAX_SUN_PATH: usize = 107;

/// A socket path, with the directory handle that keeps its alias valid.
pub struct SocketPath {
    /// The path to pass to bind/connect (or to the VMM).
    pub path: PathBuf,
    _dir: Option<File>,
}

/// `dir/name` if it fits, else an alias through an open descriptor of `dir`.
pub fn socket_path(dir: &Path, name: &str) -> io::Result<SocketPath> {
    let direct = dir.join(name);
    if direct.as_os_str().len() <= MAX_SUN_PATH {
        return Ok(SocketPath {
            path: direct,
            _dir: None,
        });
    }
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}/{name}",
        std::process::id(),
        d.as_raw_fd()
    ));
    Ok(SocketPath {
        path,
        _dir: Some(d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_directories_still_get_a_bindable_socket() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let p = socket_path(&deep, "x.sock").unwrap();
        assert!(p.path.as_os_str().len() <= MAX_SUN_PATH);
        let l = std::os::unix::net::UnixListener::bind(&p.path).unwrap();
        // The socket is in the deep directory itself.
        assert!(deep.join("x.sock").exists());
        let again = socket_path(&deep, "x.sock").unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&again.path).unwrap();
        let _ = l.accept().unwrap();
    }
}
