//! The VM description a caller hands to the VMM: kernel, initramfs, command line,
//! vCPUs, memory, disks, the agent console channel and where the serial log goes.
//!
//! It is plain data with a JSON form (serde), so the CLI can write it to a file and
//! spawn `vessel-vmm --config FILE`, one process per VM.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bound on vCPUs: the MADT and the APIC ID space we lay out assume < 255.
pub const MAX_VCPUS: u8 = 64;
/// Smallest guest that can hold the boot structures and a kernel.
pub const MIN_MEMORY_MIB: u32 = 2;
/// Largest guest we lay out (1 TiB); well under the host's address space.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel image: a bzImage or an ELF vmlinux (detected), or a raw image.
    pub kernel: PathBuf,
    /// How to interpret `kernel`.
    #[serde(default)]
    pub kernel_format: KernelFormat,
    /// An initramfs (cpio, optionally compressed) handed to the kernel.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The virtio-console channel (the agent's `/dev/hvc0`).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Present the channel as a named generic port of a multiport virtio-console
    /// (`/dev/vport<N>p0`, named in `/sys/class/virtio-ports/*/name`) instead of the
    /// guest's console `hvc0`. Writes to a generic port block the guest's writer while
    /// the host is slow; writes to a console port spin the vCPU.
    #[serde(default)]
    pub console_port: Option<String>,
    /// virtio-fs devices, each a vhost-user frontend to a backend (virtiofsd) listening
    /// on a Unix socket. With any, guest memory is a shared memfd the backends map.
    #[serde(default)]
    pub filesystems: Vec<FsConfig>,
    /// A virtio-net card whose frames go to a user-mode network stack (passt) over a
    /// Unix stream socket, in QEMU's `-netdev stream` framing.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Where the 8250 serial port's output (the kernel log) goes.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Stop the VM after this many milliseconds (exit reason `Timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Also describe the virtio-mmio devices on the kernel command line
    /// (`virtio_mmio.device=SIZE@BASE:IRQ`), for kernels built with
    /// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` that boot without ACPI. The ACPI DSDT
    /// describes them either way; Debian's kernels only read that.
    #[serde(default)]
    pub virtio_mmio_cmdline: bool,
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory_mib() -> u32 {
    256
}

/// How the kernel file is loaded and entered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum KernelFormat {
    /// A Linux kernel: bzImage (64-bit boot protocol) or ELF (PVH entry when the ELF
    /// has a `XEN_ELFNOTE_PHYS32_ENTRY` note, else 64-bit entry at `e_entry`).
    #[default]
    Linux,
    /// A flat binary copied to `load_address` and entered at `entry` in `mode`.
    /// Meant for test guests and firmware-like payloads; no zero page is written.
    Raw {
        /// Guest physical address the file is copied to.
        load_address: u64,
        /// Guest physical address of the first instruction.
        entry: u64,
        /// CPU mode at entry.
        mode: EntryMode,
    },
}

/// CPU mode a raw image is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryMode {
    /// 16-bit real mode, CS = 0, so `entry` must be below 64 KiB.
    Real,
    /// 32-bit flat protected mode, paging off.
    Protected,
    /// 64-bit long mode with the VMM's identity page tables (first 1 GiB) and GDT.
    Long,
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The backing file (a raw disk image).
    pub path: PathBuf,
    /// Whether the guest may only read it (writes fail with an I/O error status).
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes; longer is
    /// cut). Default: `vessel-disk<N>`.
    #[serde(default)]
    pub id: Option<String>,
}

/// The host side of the virtio-console channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ConsoleConfig {
    /// No virtio-console device.
    #[default]
    None,
    /// A Unix stream socket: connect to `path`, or listen there and accept one peer
    /// when `listen` is true.
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Listen and accept instead of connecting.
        #[serde(default)]
        listen: bool,
    },
    /// File descriptors inherited from the parent process.
    Fds {
        /// Read end: bytes from it go to the guest.
        input: i32,
        /// Write end: bytes from the guest go to it.
        output: i32,
    },
}

/// One virtio-fs device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The vhost-user backend's socket (it listens; the VMM connects).
    pub socket: PathBuf,
    /// The tag the guest mounts it by (at most 36 bytes).
    pub tag: String,
}

/// The virtio-net card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The network stack's socket (it listens; the VMM connects). Each frame on it is
    /// preceded by its length, 4 bytes big-endian.
    pub socket: PathBuf,
    /// The card's MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

impl NetConfig {
    /// The MAC address as bytes, if it is well formed and unicast.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let mut out = [0u8; 6];
        let mut parts = self.mac.split(':');
        for b in out.iter_mut() {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        // A multicast address cannot be a card's own.
        (parts.next().is_none() && out[0] & 1 == 0).then_some(out)
    }
}

/// Where the serial port's output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SerialOutput {
    /// Discarded.
    #[default]
    None,
    /// The VMM's standard output.
    Stdout,
    /// Appended to a file (created if missing).
    File {
        /// The file.
        path: PathBuf,
    },
}

/// A configuration the VMM refuses before touching KVM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    /// Memory size out of range.
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u32),
    /// A raw image's entry point cannot be reached in the requested mode.
    #[error("raw image entry {entry:#x} is not reachable in {mode:?} mode")]
    RawEntry {
        /// Entry address.
        entry: u64,
        /// Requested mode.
        mode: EntryMode,
    },
    /// The network card's MAC address is not a unicast `xx:xx:xx:xx:xx:xx`.
    #[error("invalid MAC address {0:?} (want a unicast xx:xx:xx:xx:xx:xx)")]
    Mac(String),
    /// The JSON form did not parse.
    #[error("invalid VM config JSON: {0}")]
    Json(String),
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            kernel_format: KernelFormat::Linux,
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            disks: Vec::new(),
            console: ConsoleConfig::None,
            console_port: None,
            filesystems: Vec::new(),
            net: None,
            serial: SerialOutput::None,
            timeout_ms: None,
            virtio_mmio_cmdline: false,
        }
    }

    /// Parses the JSON form and validates it.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: VmConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The boot timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Checks ranges that do not need the filesystem or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let KernelFormat::Raw { entry, mode, .. } = self.kernel_format {
            let limit = match mode {
                EntryMode::Real => 0x1_0000,
                EntryMode::Protected => 1 << 32,
                EntryMode::Long => crate::boot::paging::IDENTITY_MAPPED_BYTES,
            };
            if entry >= limit {
                return Err(ConfigError::RawEntry { entry, mode });
            }
        }
        if let Some(net) = &self.net {
            if net.mac_bytes().is_none() {
                return Err(ConfigError::Mac(net.mac.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_defaults() {
        let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(c, VmConfig::new("/k"));
        let mut full = VmConfig::new("/boot/vmlinuz");
        full.initrd = Some("/i.cpio".into());
        full.disks.push(DiskConfig {
            path: "/d.ext4".into(),
            read_only: true,
            id: Some("vessel-image".into()),
        });
        full.console = ConsoleConfig::Socket {
            path: "/run/c.sock".into(),
            listen: false,
        };
        full.serial = SerialOutput::File {
            path: "/tmp/s.log".into(),
        };
        full.timeout_ms = Some(5000);
        full.net = Some(NetConfig {
            socket: "/run/passt.sock".into(),
            mac: "02:56:45:53:00:01".into(),
        });
        assert_eq!(VmConfig::from_json(&full.to_json()).unwrap(), full);
    }

    #[test]
    fn rejects_bad_ranges_and_unknown_fields() {
        assert_eq!(
            VmConfig::from_json(r#"{"kernel": "/k", "vcpus": 0}"#),
            Err(ConfigError::Vcpus(0))
        );
        assert_eq!(
            VmConfig::from_json(r#"{"kernel": "/k", "memory_mib": 1}"#),
            Err(ConfigError::Memory(1))
        );
        assert!(VmConfig::from_json(r#"{"kernel": "/k", "cpus": 2}"#).is_err());
        for mac in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "01:00:00:00:00:00",
            "2:0:0:0:0:0",
            "zz:00:00:00:00:00",
        ] {
            let json = format!(r#"{{"kernel": "/k", "net": {{"socket": "/s", "mac": "{mac}"}}}}"#);
            assert_eq!(
                VmConfig::from_json(&json),
                Err(ConfigError::Mac(mac.into())),
                "{mac}"
            );
        }
        let raw = r#"{"kernel": "/k", "kernel_format": {"type": "raw", "load_address": 0, "entry": 65536, "mode": "real"}}"#;
        assert!(matches!(
            VmConfig::from_json(raw),
            Err(ConfigError::RawEntry { .. })
        ));
    }
}
