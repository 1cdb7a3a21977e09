//! What one VM is made of, independent of the VMM that runs it.

use std::path::PathBuf;

/// Kernel, initramfs, disks, channel and log of one VM.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs with the agent.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The image's ext4, attached read-only (serial `vessel-image`, first disk).
    pub image_disk: PathBuf,
    /// The container's ext4, attached read-write (serial `vessel-container`, second disk).
    pub container_disk: PathBuf,
    /// The Unix socket the host listens on; the VMM connects its virtio-console to it.
    pub channel: PathBuf,
    /// Where the serial port (the kernel log) is written.
    pub console_log: PathBuf,
    /// virtio-fs devices: (tag, vhost-user socket of its virtiofsd).
    pub shares: Vec<(String, PathBuf)>,
    /// The network card: its stack's socket (passt's) and MAC address; `None`: no card.
    pub net: Option<(PathBuf, String)>,
}
