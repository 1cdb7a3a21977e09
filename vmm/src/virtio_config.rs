//! Builds the virtio devices a [`VmConfig`] asks for: one virtio-blk per disk, then
//! the virtio-console on its host channel (a Unix socket or inherited fds).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use crate::config::{ConsoleConfig, VmConfig};
use crate::devices::virtio::{Block, Console, ConsoleBackend, VirtioDevice};
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

fn console_backend(console: &ConsoleConfig) -> Result<Option<ConsoleBackend>, VmmError> {
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
            // Blocks until the peer connects: the agent channel is useless without it.
            let listener = UnixListener::bind(path)
                .map_err(|e| console_err(format!("bind {}: {e}", path.display())))?;
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

/// The virtio devices `config` asks for, in guest order: disks, then the console.
pub fn virtio_devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, VmmError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let block =
            Block::open(&disk.path, disk.read_only, &format!("vessel-disk{i}")).map_err(|e| {
                VmmError::Device(format!("virtio-blk {}", disk.path.display()), e.to_string())
            })?;
        devices.push(Box::new(block));
    }
    if let Some(backend) = console_backend(&config.console)? {
        devices.push(Box::new(Console::new(backend)));
    }
    Ok(devices)
}
