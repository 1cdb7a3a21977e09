//! virtio-fs (device type 26) as a vhost-user frontend: the file system itself is served by
//! a virtiofsd backend process over a Unix socket; this device gives the guest the
//! virtio-mmio face (features, the config space with the tag, queue set-up) and hands the
//! backend what it needs to process the queues on its own: the guest memory (as file
//! descriptors: it must be shared memory, `VmConfig::filesystems` makes it a memfd), the
//! rings' addresses, and two kinds of eventfd.
//!
//! Kicks and interrupts pass through the VMM, as Firecracker's vhost-user devices on MMIO
//! do: the guest's queue notification reaches [`VirtioDevice::process_queue`], which kicks
//! the backend's eventfd for that queue; the backend signals one "call" eventfd, the event
//! loop sees it ([`VirtioDevice::backend_fd`]) and this device raises the interrupt with
//! `VIRTIO_MMIO_INT_VRING` set, which an MMIO guest reads to know why it was interrupted
//! (an irqfd handed straight to the backend would raise the line with no status bit).
//!
//! The guest's descriptors are never parsed here: the backend parses them, in its own
//! sandbox. What the guest controls on this side is the config space (read-only) and the
//! queue layout, which the transport validates against guest memory before activation.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, BackendStatus, DeviceError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// virtio device type of a file system.
pub const TYPE_FS: u32 = 26;
/// The tag's room in the config space.
pub const TAG_LEN: usize = 36;
/// `VIRTIO_RING_F_EVENT_IDX`.
const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// The hiprio queue and one request queue.
const QUEUES: usize = 2;
/// Each queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, never offered to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Failures setting the device up (reported when the VM is built).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space.
    #[error("virtio-fs tag {0:?} is empty or longer than {TAG_LEN} bytes")]
    BadTag(String),
    /// Talking to the backend failed.
    #[error("vhost-user backend at {path}: {what}: {source}")]
    Backend {
        /// Its socket.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: vhost::Error,
    },
    /// An eventfd could not be made.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The backend lacks `VIRTIO_F_VERSION_1`.
    #[error("the vhost-user backend at {0} does not offer VIRTIO_F_VERSION_1")]
    NotModern(String),
}

/// A virtio-fs device backed by a vhost-user backend.
pub struct Fs {
    frontend: Frontend,
    socket: String,
    config: [u8; TAG_LEN + 4],
    /// What the backend offers, less the vhost-user-only bit.
    backend_features: u64,
    protocol_features: bool,
    acked: u64,
    /// The backend's kick eventfd per queue, written on each guest notification.
    kicks: Vec<EventFd>,
    /// The one eventfd the backend signals for every queue.
    call: EventFd,
    interrupt: Option<VirtioInterrupt>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("socket", &self.socket)
            .field("active", &self.interrupt.is_some())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the backend at `socket` and asks what it supports.
    pub fn connect(socket: &Path, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::BadTag(tag.to_string()));
        }
        let path = socket.display().to_string();
        let backend = |what| {
            let path = path.clone();
            move |source| FsError::Backend { path, what, source }
        };
        let mut frontend =
            Frontend::connect(socket, QUEUES as u64).map_err(backend("connecting"))?;
        frontend.set_owner().map_err(backend("SET_OWNER"))?;
        let features = frontend.get_features().map_err(backend("GET_FEATURES"))?;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NotModern(path));
        }
        let protocol_features = features & PROTOCOL_FEATURES != 0;
        if protocol_features {
            let offered = frontend
                .get_protocol_features()
                .map_err(backend("GET_PROTOCOL_FEATURES"))?;
            // Nothing beyond the basics is used: one request queue, no config messages.
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::MQ)
                .map_err(backend("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        // num_request_queues.
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let kicks = (0..QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Fs {
            frontend,
            socket: path,
            config,
            backend_features: features & !PROTOCOL_FEATURES,
            protocol_features,
            acked: 0,
            kicks,
            call: EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd)?,
            interrupt: None,
        })
    }

    fn start_backend(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), String> {
        let err = |what: &str| {
            let socket = self.socket.clone();
            let what = what.to_string();
            move |e: vhost::Error| format!("{socket}: {what}: {e}")
        };
        let mut features = self.acked;
        if self.protocol_features {
            features |= PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(features)
            .map_err(err("SET_FEATURES"))?;
        let mut regions = Vec::new();
        for r in mem.iter() {
            let Some(file) = r.file_offset() else {
                return Err(
                    "guest memory is not shared (no memfd): the backend cannot map it".into(),
                );
            };
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: file.start(),
                mmap_handle: file.file().as_raw_fd(),
            });
        }
        self.frontend
            .set_mem_table(&regions)
            .map_err(err("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            // The transport checked the rings lie in guest memory; the backend is given
            // their addresses in this process, which it translates through the table.
            let hva = |gpa: u64| -> Result<u64, String> {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|e| format!("queue {i} at {gpa:#x}: {e}"))
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(q.desc_table())?,
                used_ring_addr: hva(q.used_ring())?,
                avail_ring_addr: hva(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &ring)
                .map_err(err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.call)
                .map_err(err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(err("SET_VRING_KICK"))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        // Only what needs nothing from this side: the rings are the backend's.
        let ours = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX);
        self.backend_features & ours
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The tag and queue count are read-only.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), DeviceError> {
        if queues.len() != QUEUES {
            return Err(DeviceError::QueueCount {
                expected: QUEUES,
                got: queues.len(),
            });
        }
        if let Err(e) = self.start_backend(&mem, &queues) {
            log::error!("virtio-fs: {e}");
            return Err(DeviceError::Backend(e));
        }
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let kick = self
            .kicks
            .get(index)
            .ok_or(DeviceError::NoSuchQueue(index))?;
        kick.write(1).map_err(DeviceError::Interrupt)
    }

    fn reset(&mut self) {
        // Stops the rings: the backend answers GET_VRING_BASE once it no longer uses them.
        if self.interrupt.take().is_some() {
            for i in 0..QUEUES {
                let _ = self.frontend.get_vring_base(i);
            }
        }
        self.acked = 0;
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.call.as_raw_fd())
    }

    fn process_backend(&mut self) -> Result<BackendStatus, DeviceError> {
        // Drain the counter, then tell the guest; a spurious wakeup (EAGAIN) is harmless.
        if self.call.read().is_ok() {
            if let Some(i) = &self.interrupt {
                i.signal_used_queue().map_err(DeviceError::Interrupt)?;
            }
        }
        Ok(BackendStatus::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real virtiofsd on a temporary socket, if one is installed.
    fn virtiofsd(dir: &Path) -> Option<(std::process::Child, std::path::PathBuf)> {
        let bin = ["/usr/local/bin/virtiofsd", "/usr/lib/qemu/virtiofsd"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let sock = dir.join("fs.sock");
        let child = std::process::Command::new(bin)
            .arg(format!("--shared-dir={}", dir.display()))
            .arg(format!("--socket-path={}", sock.display()))
            .args(["--sandbox", "none"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..200 {
            if sock.exists() {
                return Some((child, sock));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn negotiates_with_a_real_backend_and_shows_the_tag() {
        assert!(matches!(
            Fs::connect(Path::new("/nonexistent.sock"), ""),
            Err(FsError::BadTag(_))
        ));
        assert!(matches!(
            Fs::connect(Path::new("/nonexistent.sock"), &"t".repeat(TAG_LEN + 1)),
            Err(FsError::BadTag(_))
        ));
        assert!(Fs::connect(Path::new("/nonexistent.sock"), "t").is_err());
        let dir = tempfile::tempdir().unwrap();
        let Some((mut child, sock)) = virtiofsd(dir.path()) else {
            eprintln!("SKIP: no virtiofsd (scripts/setup.sh installs it) or not root");
            return;
        };
        let mut fs = Fs::connect(&sock, "vessel-vol0").unwrap();
        assert_eq!(fs.device_type(), TYPE_FS);
        assert_ne!(fs.features() & (1 << VIRTIO_F_VERSION_1), 0);
        assert_eq!(
            fs.features() & PROTOCOL_FEATURES,
            0,
            "a vhost-user bit offered"
        );
        let mut cfg = [0u8; TAG_LEN + 4];
        fs.read_config(0, &mut cfg);
        assert_eq!(&cfg[..11], b"vessel-vol0");
        assert_eq!(&cfg[11..TAG_LEN], &[0u8; TAG_LEN - 11][..]);
        assert_eq!(u32::from_le_bytes(cfg[TAG_LEN..].try_into().unwrap()), 1);
        fs.write_config(0, b"evil");
        fs.read_config(0, &mut cfg);
        assert_eq!(&cfg[..4], b"vess");
        // Without shared memory, activation is refused, not half done.
        let mem = crate::memory::create_guest_memory(16).unwrap();
        let (interrupt, _) = super::super::test_utils::interrupt();
        let q = || Queue::new(QUEUE_SIZE).unwrap();
        assert!(matches!(
            fs.activate(mem, interrupt, vec![q(), q()]),
            Err(DeviceError::Backend(_))
        ));
        assert!(fs.process_queue(2).is_err());
        drop(fs);
        let _ = child.kill();
        let _ = child.wait();
    }
}
