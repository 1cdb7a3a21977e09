//! Builds the virtio devices a [`VmConfig`] asks for: one virtio-blk per disk, the
//! virtio-console on its host channel (a Unix socket or inherited fds), the virtio-fs
//! devices and the virtio-net card.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::virtio::{Block, Console, ConsoleBackend, Fs, Net, VirtioDevice};
use crate::error::VmmError;

fn console_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Device("virtio-console".into(), e.to_string())
}

/// Takes ownership of an fd the parent passed us, after checking it is open.
fn inherited_fd(fd: i32) -> Result<OwnedFd, VmmError> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(console_err(format!("fd {fd} is not open")));
    }
    // SAFETY: the config hands this fd to the VMM; it is open (checked above) and
    // nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable (a listener: a peer is connecting), for at most
/// `timeout` (forever when `None`).
fn wait_readable(fd: &impl AsRawFd, timeout: Option<Duration>) -> std::io::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no peer connected before the VM's timeout",
                    ));
                }
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
            None => -1,
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn console_backend(
    console: &ConsoleConfig,
    timeout: Option<Duration>,
) -> Result<Option<ConsoleBackend>, VmmError> {
    let backend = match console {
        ConsoleConfig::None => return Ok(None),
        ConsoleConfig::Socket {
            path,
            listen: false,
        } => {
            let stream = UnixStream::connect(path)
                .map_err(|e| console_err(format!("connect {}: {e}", path.display())))?;
            ConsoleBackend::from_stream(stream)
        }
        ConsoleConfig::Socket { path, listen: true } => {
            // Waits for the peer before the guest starts: the agent channel is
            // useless without it. Bounded by the VM's timeout, if it has one.
            let listener = UnixListener::bind(path)
                .map_err(|e| console_err(format!("bind {}: {e}", path.display())))?;
            wait_readable(&listener, timeout)
                .map_err(|e| console_err(format!("waiting on {}: {e}", path.display())))?;
            let (stream, _) = listener
                .accept()
                .map_err(|e| console_err(format!("accept on {}: {e}", path.display())))?;
            ConsoleBackend::from_stream(stream)
        }
        ConsoleConfig::Fds { input, output } => {
            let input_fd = inherited_fd(*input)?;
            let output_fd = if input == output {
                input_fd.try_clone().map_err(console_err)?
            } else {
                inherited_fd(*output)?
            };
            ConsoleBackend::from_fds(Some(input_fd), Some(output_fd))
        }
    };
    backend.map(Some).map_err(console_err)
}

/// The virtio devices `config` asks for, in guest order: disks, the console, the
/// filesystems, then the network card.
pub fn virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, VmmError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let id = disk.id.clone().unwrap_or_else(|| format!("vessel-disk{i}"));
        let block = Block::open(&disk.path, disk.read_only, &id).map_err(|e| {
            VmmError::Device(format!("virtio-blk {}", disk.path.display()), e.to_string())
        })?;
        devices.push(Box::new(block));
    }
    if let Some(backend) = console_backend(&config.console, config.timeout())? {
        devices.push(Box::new(match &config.console_port {
            Some(name) => Console::with_port(backend, name),
            None => Console::new(backend),
        }));
    }
    for fs in &config.filesystems {
        let dev = Fs::connect(&fs.socket, &fs.tag)
            .map_err(|e| VmmError::Device(format!("virtio-fs {}", fs.tag), e.to_string()))?;
        devices.push(Box::new(dev));
    }
    if let Some(net) = &config.net {
        let err = |e: String| VmmError::Device(format!("virtio-net {}", net.socket.display()), e);
        let mac = net
            .mac_bytes()
            .ok_or_else(|| err(format!("invalid MAC address {:?}", net.mac)))?;
        let dev = Net::connect(&net.socket, mac).map_err(|e| err(format!("connect: {e}")))?;
        devices.push(Box::new(dev));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_console_gives_up_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let console = ConsoleConfig::Socket {
            path: path.clone(),
            listen: true,
        };
        let start = Instant::now();
        let Err(err) = console_backend(&console, Some(Duration::from_millis(100))) else {
            panic!("no peer: must fail");
        };
        assert!(err.to_string().contains("timeout"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
        std::fs::remove_file(&path).unwrap();
        let console2 = console.clone();
        let t =
            std::thread::spawn(move || console_backend(&console2, Some(Duration::from_secs(5))));
        // The path appears at bind(), a moment before listen(): retry the connect.
        let _peer = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        assert!(t.join().unwrap().unwrap().is_some());
    }

    #[test]
    fn closed_inherited_fd_is_an_error() {
        let console = ConsoleConfig::Fds {
            input: 987_654,
            output: 987_654,
        };
        assert!(console_backend(&console, None).is_err());
    }
}
