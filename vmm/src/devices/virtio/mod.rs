//! Virtio devices on the virtio-mmio transport.
//!
//! [`MmioTransport`] implements the register interface (virtio 1.x, "version 2")
//! and drives a [`VirtioDevice`]: it negotiates features, collects the queue
//! configuration, validates it against guest memory and hands the queues to the
//! device at `DRIVER_OK`. Devices then only see descriptor chains.

pub mod block;
pub mod console;
pub mod console_control;
pub mod fs;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use block::{Block, BlockError};
pub use console::{Console, ConsoleBackend};
pub use fs::Fs;
pub use mmio::{MmioTransport, MMIO_NOTIFY_OFFSET, MMIO_WINDOW_SIZE};
pub use net::Net;

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type of a console.
pub const TYPE_CONSOLE: u32 = 3;

/// `VIRTIO_F_VERSION_1`: the device is a modern (1.x) device. Required.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;

/// Interrupt status bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the device configuration (or status) changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Errors a device reports to its transport. Any of them puts the device in
/// `DEVICE_NEEDS_RESET`: they mean the driver broke the ring protocol (or the host
/// failed) so that the device cannot go on safely.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver's queue state is unusable (bad avail index, ring outside memory).
    #[error("virtio queue {index}: {source}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// The device was given the wrong number of queues at activation.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Number the device needs.
        expected: usize,
        /// Number it was given.
        got: usize,
    },
    /// A queue was not enabled, or its rings lie outside guest memory, at `DRIVER_OK`.
    #[error("queue {0} not ready or outside guest memory at DRIVER_OK")]
    QueueNotReady(usize),
    /// A notification for a queue the device does not have.
    #[error("no queue {0}")]
    NoSuchQueue(usize),
    /// Signalling the guest failed.
    #[error("cannot raise the interrupt: {0}")]
    Interrupt(io::Error),
    /// A vhost-user backend refused the device's set-up.
    #[error("vhost-user backend: {0}")]
    Backend(String),
}

/// Whether a backend is still usable after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStatus {
    /// Keep watching the backend fd.
    Open,
    /// The backend hit EOF or an error: stop watching its fd.
    Closed,
}

/// The interrupt line a transport gives its device: an interrupt status word (read
/// by the guest through the transport) and the irqfd that raises the GSI.
#[derive(Debug, Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl VirtioInterrupt {
    /// An interrupt that signals `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Sets `bits` in the interrupt status and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Tells the guest a used ring has new entries.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.trigger(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the guest the configuration or device status changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.trigger(VIRTIO_MMIO_INT_CONFIG)
    }

    /// The current interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A virtio device, as driven by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (2 = block, 3 = console, ...).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The features the driver accepted, once the transport has checked them against
    /// [`VirtioDevice::features`] (at `FEATURES_OK`).
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with validated queues (one per [`VirtioDevice::queue_max_sizes`]).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), DeviceError>;
    /// Handles a driver notification for queue `index`.
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError>;
    /// Stops the device and drops its queues (driver wrote 0 to the status register).
    fn reset(&mut self);
    /// A host fd the event loop should watch for readability (EPOLLIN, edge-triggered),
    /// if any.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// A host fd the event loop should watch for writability (EPOLLOUT,
    /// edge-triggered), if any: output held back because the host was slow resumes
    /// when it fires. May be a different fd number for the same socket as
    /// [`VirtioDevice::backend_fd`]; epoll keeps the two registrations apart.
    fn backend_output_fd(&self) -> Option<RawFd> {
        None
    }
    /// Handles readiness of [`VirtioDevice::backend_fd`] or
    /// [`VirtioDevice::backend_output_fd`].
    fn process_backend(&mut self) -> Result<BackendStatus, DeviceError> {
        Ok(BackendStatus::Open)
    }
}

/// Maps a virtio-queue error on queue `index` to the device error that resets the device.
pub(crate) fn queue_err(index: usize) -> impl FnOnce(virtio_queue::Error) -> DeviceError {
    move |source| DeviceError::Queue { index, source }
}

/// Raises the used-ring interrupt for queue `index` unless the driver has suppressed it.
pub(crate) fn notify_used(
    queue: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
) -> Result<(), DeviceError> {
    if queue.needs_notification(mem).map_err(queue_err(index))? {
        interrupt
            .signal_used_queue()
            .map_err(DeviceError::Interrupt)?;
    }
    Ok(())
}

/// Copies the bytes of a device's config space that fall in `[offset, offset + len)`
/// into `data`, zero-filling the rest; never indexes out of bounds.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
