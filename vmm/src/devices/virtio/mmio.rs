//! The virtio-mmio transport, version 2 (virtio 1.x "modern" only).
//!
//! Register layout and the status handshake follow the virtio 1.2 specification,
//! section 4.2.2. The transport refuses `FEATURES_OK` when the driver accepts a
//! feature the device did not offer or omits `VIRTIO_F_VERSION_1`, validates every
//! queue against guest memory before the device sees it, and answers a device
//! failure with `DEVICE_NEEDS_RESET` plus a configuration-change interrupt.

use std::io;
use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{BackendStatus, DeviceError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Size of one virtio-mmio window (registers plus config space).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register: the core registers each queue's eventfd as
/// an ioeventfd at `base + MMIO_NOTIFY_OFFSET` with datamatch = queue index (4 bytes).
pub const MMIO_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("VSSL").
pub const VENDOR_ID: u32 = 0x4c53_5356;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = MMIO_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 0x02;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u32 = 0x04;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 0x08;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: VirtioInterrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    // Set when the driver writes a feature bit in a selector page beyond the 64 bits
    // we track: such a bit was never offered, so FEATURES_OK must be refused.
    driver_features_invalid: bool,
    queue_sel: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`. Creates the interrupt eventfd (for an irqfd) and one notify
    /// eventfd per queue (for ioeventfds).
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> io::Result<Self> {
        let interrupt = VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK)?);
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            let q = Queue::new(max).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad queue size {max}: {e}"),
                )
            })?;
            queues.push(q);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_invalid: false,
            queue_sel: 0,
            activated: false,
        })
    }

    /// The virtio device type behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The interrupt eventfd, to register as an irqfd on this window's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// One notify eventfd per queue, index = queue index, to register as ioeventfds at
    /// `base + MMIO_NOTIFY_OFFSET` (4 bytes, datamatch = index).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register as the guest sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver completed the handshake and the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Called by the event loop when queue `index`'s notify eventfd fires.
    pub fn handle_queue_event(&mut self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            // Drain the counter; a spurious wakeup (EAGAIN) is harmless.
            let _ = evt.read();
        }
        self.notify(index);
    }

    /// A host fd the event loop should watch (readable, edge-triggered), if the device
    /// has a backend that produces input.
    pub fn backend_fd(&self) -> Option<RawFd> {
        self.device.backend_fd()
    }

    /// Called by the event loop when [`MmioTransport::backend_fd`] is ready. Returns
    /// `Closed` when the fd should no longer be watched.
    pub fn handle_backend_event(&mut self) -> BackendStatus {
        if !self.activated {
            // Input waits in the backend until the driver is up; the device reads it
            // once its receive queue is notified.
            return BackendStatus::Open;
        }
        match self.device.process_backend() {
            Ok(status) => status,
            Err(e) => {
                self.fail(e);
                BackendStatus::Open
            }
        }
    }

    fn notify(&mut self, index: usize) {
        // A notification for a queue that does not exist is meaningless, not fatal.
        if index >= self.queues.len()
            || !self.activated
            || self.status & STATUS_DEVICE_NEEDS_RESET != 0
        {
            return;
        }
        if let Err(e) = self.device.process_queue(index) {
            self.fail(e);
        }
    }

    // A driver that breaks the ring protocol gets DEVICE_NEEDS_RESET and a config
    // interrupt (virtio 1.2, 2.1.2); the device stops processing until reset.
    fn fail(&mut self, e: DeviceError) {
        log::warn!(
            "virtio-mmio device type {}: {e}; device needs reset",
            self.device.device_type()
        );
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            log::error!("cannot raise virtio config interrupt: {e}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_invalid = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        !self.driver_features_invalid
            && self.driver_features & !offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The device owns DEVICE_NEEDS_RESET; the driver may only add bits, in order.
        let value = (value & !STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET);
        if value & old != old {
            log::warn!("virtio-mmio: driver cleared status bits ({old:#x} -> {value:#x}); ignored");
            return;
        }
        let added = value & !old;
        let ack_driver = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        if added & STATUS_DRIVER != 0 && value & STATUS_ACKNOWLEDGE == 0 {
            return;
        }
        if added & STATUS_FEATURES_OK != 0 {
            if value & ack_driver != ack_driver || !self.features_acceptable() {
                // Leaving FEATURES_OK clear tells the driver the subset is refused.
                self.status = value & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        if added & STATUS_DRIVER_OK != 0 {
            if value & STATUS_FEATURES_OK == 0 {
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                self.fail(DeviceError::QueueNotReady(index));
                return;
            }
            match copy_queue(q) {
                Ok(copy) => queues.push(copy),
                Err(source) => {
                    self.fail(DeviceError::Queue { index, source });
                    return;
                }
            }
        }
        match self
            .device
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
        {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(e),
        }
    }

    fn queue_config_writable(&self) -> bool {
        // Queue layout is fixed once the driver is running or the queue is enabled.
        !self.activated
            && self.status & STATUS_FEATURES_OK != 0
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length all-ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                let negotiating =
                    self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
                if !negotiating {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ if value != 0 => self.driver_features_invalid = true,
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if self.queue_config_writable() => {
                let size = u16::try_from(value).unwrap_or(0);
                if let Some(q) = self.selected_queue() {
                    if let Err(e) = q.try_set_size(size) {
                        log::warn!("virtio-mmio: rejected queue size {value}: {e}");
                    }
                }
            }
            REG_QUEUE_READY => self.write_queue_ready(value),
            REG_QUEUE_DESC_LOW if self.queue_config_writable() => {
                self.with_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            REG_QUEUE_DESC_HIGH if self.queue_config_writable() => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            REG_QUEUE_DRIVER_LOW if self.queue_config_writable() => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            REG_QUEUE_DRIVER_HIGH if self.queue_config_writable() => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            REG_QUEUE_DEVICE_LOW if self.queue_config_writable() => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            REG_QUEUE_DEVICE_HIGH if self.queue_config_writable() => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            REG_QUEUE_NOTIFY => {
                // The value is the queue index (no VIRTIO_F_NOTIFICATION_DATA).
                self.notify(value as usize)
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if self.activated || self.status & STATUS_FEATURES_OK == 0 {
            return;
        }
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            return;
        };
        match value {
            0 => q.set_ready(false),
            1 => {
                q.set_ready(true);
                // Rings must lie in guest RAM before the device will ever touch them.
                if !q.is_valid(&mem) {
                    log::warn!("virtio-mmio: queue rings outside guest memory; not enabled");
                    q.set_ready(false);
                }
            }
            _ => {}
        }
    }
}

// The transport keeps its own copy of the queue registers (the guest may read them
// back); the device gets a fresh queue with the same layout.
fn copy_queue(q: &Queue) -> Result<Queue, virtio_queue::Error> {
    let mut copy = Queue::new(q.max_size())?;
    copy.try_set_size(q.size())?;
    copy.try_set_desc_table_address(vm_memory::GuestAddress(q.desc_table()))?;
    copy.try_set_avail_ring_address(vm_memory::GuestAddress(q.avail_ring()))?;
    copy.try_set_used_ring_address(vm_memory::GuestAddress(q.used_ring()))?;
    copy.set_ready(true);
    Ok(copy)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        // Registers are 32 bits wide and 32-bit aligned; other accesses read as 0.
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            // Config writes are only meaningful while the driver is negotiating or
            // running; the device decides which fields are writable.
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, value);
    }
}
