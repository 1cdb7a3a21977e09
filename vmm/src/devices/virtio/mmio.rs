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

    /// The features the driver has written so far (accepted by the device only
    /// once `FEATURES_OK` reads back set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device.features()
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

    /// A host fd the event loop should watch for EPOLLOUT (edge-triggered), if the
    /// device's output can be held back by a slow host; when it fires, call
    /// [`MmioTransport::handle_backend_event`].
    pub fn backend_output_fd(&self) -> Option<RawFd> {
        self.device.backend_output_fd()
    }

    /// Called by the event loop when [`MmioTransport::backend_fd`] or
    /// [`MmioTransport::backend_output_fd`] is ready. Returns `Closed` when the
    /// input fd should no longer be watched.
    pub fn handle_backend_event(&mut self) -> BackendStatus {
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            // Input waits in the backend until the driver is up (again); the device
            // reads it once its receive queue is notified.
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
        // Also when activation failed: the device may hold acked features.
        self.device.reset();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::{self, Block};
    use crate::devices::virtio::test_utils::*;
    use crate::devices::virtio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress};

    const QSIZE: u16 = 16;

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn block_transport(mem: &GuestMemoryMmap) -> (MmioTransport, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x42; 4096]).unwrap();
        let blk = Block::open(f.path(), false, "t").unwrap();
        (MmioTransport::new(mem.clone(), Box::new(blk)).unwrap(), f)
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        r(t, REG_STATUS) & STATUS_FEATURES_OK != 0
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, q: DriverQueue) {
        w(t, REG_QUEUE_SEL, index);
        w(t, REG_QUEUE_NUM, u32::from(q.size));
        w(t, REG_QUEUE_DESC_LOW, q.desc as u32);
        w(t, REG_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        w(t, REG_QUEUE_DRIVER_LOW, q.avail as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, (q.avail >> 32) as u32);
        w(t, REG_QUEUE_DEVICE_LOW, q.used as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, (q.used >> 32) as u32);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    fn version_1() -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    #[test]
    fn identification_registers() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 2);
        assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), u32::from(block::QUEUE_SIZE));
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "queue 1 does not exist");
        // Features, page by page.
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        let low = r(&mut t, REG_DEVICE_FEATURES);
        assert_ne!(low & (1 << block::VIRTIO_BLK_F_FLUSH), 0);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
        // Config space: capacity = 8 sectors, readable at any width.
        let mut cap = [0u8; 8];
        t.read(CONFIG_SPACE, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut one = [0u8; 1];
        t.read(CONFIG_SPACE, &mut one);
        assert_eq!(one[0], 8);
        // Narrow and misaligned register reads are 0, not a partial register.
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        t.read(REG_MAGIC + 1, &mut four);
        assert_eq!(four, [0; 4]);
    }

    #[test]
    fn feature_negotiation_refuses_unoffered_bits_and_legacy_drivers() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        // A bit the device never offered (VIRTIO_BLK_F_RO on a writable disk).
        assert!(!negotiate(
            &mut t,
            version_1() | (1 << block::VIRTIO_BLK_F_RO)
        ));
        assert_eq!(r(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_STATUS, 0);
        // No VIRTIO_F_VERSION_1: a legacy driver.
        assert!(!negotiate(&mut t, 1 << block::VIRTIO_BLK_F_FLUSH));
        w(&mut t, REG_STATUS, 0);
        // A bit in a feature page beyond 64.
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 2);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        assert!(!negotiate(&mut t, version_1()));
        w(&mut t, REG_STATUS, 0);
        // FEATURES_OK before DRIVER: refused.
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_STATUS, 0);
        // A proper subset is accepted.
        assert!(negotiate(
            &mut t,
            version_1() | (1 << block::VIRTIO_BLK_F_FLUSH)
        ));
        // Features are frozen after FEATURES_OK.
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 1 << block::VIRTIO_BLK_F_RO);
        assert_eq!(t.driver_features & (1 << block::VIRTIO_BLK_F_RO), 0);
        // Clearing bits other than by reset is ignored.
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_rings_outside_memory_are_not_enabled() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        assert!(negotiate(&mut t, version_1()));
        // Used ring past the end of guest memory.
        let mut q = DriverQueue::layout(QUEUE_BASE, QSIZE);
        q.used = MEM_END - 8;
        setup_queue(&mut t, 0, q);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        // Queue sizes that are not powers of two, or too big, are refused.
        w(&mut t, REG_QUEUE_NUM, 3);
        assert_eq!(t.queues[0].size(), QSIZE);
        w(&mut t, REG_QUEUE_NUM, 512);
        assert_eq!(t.queues[0].size(), QSIZE);
        // DRIVER_OK with the queue not ready: the device asks for a reset.
        let (irq_before, _) = (t.interrupt.status(), ());
        assert_eq!(irq_before, 0);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(!t.is_activated());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(t.interrupt_evt().read().unwrap(), 1);
        // Reset recovers.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn full_probe_then_request_via_ioeventfd_and_mmio_notify() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        assert!(negotiate(&mut t, version_1()));
        let q = DriverQueue::new(&mem, QUEUE_BASE, QSIZE);
        setup_queue(&mut t, 0, q);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(t.is_activated());
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
        // Queue registers are frozen once running.
        w(&mut t, REG_QUEUE_DESC_LOW, 0x8000);
        assert_eq!(t.queues[0].desc_table(), q.desc);

        // A GET_ID request, signalled through the queue's eventfd as KVM would.
        let hdr = DATA_BASE;
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&block::VIRTIO_BLK_T_GET_ID.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        q.publish(
            &mem,
            0,
            &[
                desc(hdr, 16, NEXT, 1),
                desc(hdr + 0x100, 20, NEXT | WRITE, 2),
                desc(hdr + 0x200, 1, WRITE, 0),
            ],
            &[0],
        );
        t.queue_evts()[0].write(1).unwrap();
        t.handle_queue_event(0);
        assert_eq!(q.used_idx(&mem), 1);
        assert_eq!(q.used(&mem, 0), (0, 21));
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        assert_eq!(t.interrupt_evt().read().unwrap(), 1);
        w(&mut t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);

        // The same through a plain MMIO write to QueueNotify.
        q.publish(&mem, 0, &[], &[0]);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(q.used_idx(&mem), 2);
        // Notifying a queue that does not exist is ignored.
        w(&mut t, REG_QUEUE_NOTIFY, 9);
        t.handle_queue_event(9);
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
    }

    #[test]
    fn reset_clears_queues_and_stops_the_device() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        assert!(negotiate(&mut t, version_1()));
        let q = DriverQueue::new(&mem, QUEUE_BASE, QSIZE);
        setup_queue(&mut t, 0, q);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(t.is_activated());

        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, REG_STATUS), 0);
        w(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(t.driver_features, 0);
        // A notification after reset does nothing.
        q.publish(
            &mem,
            0,
            &[
                desc(DATA_BASE, 16, NEXT, 1),
                desc(DATA_BASE + 0x200, 1, WRITE, 0),
            ],
            &[0],
        );
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(q.used_idx(&mem), 0);

        // And the device can be brought up again.
        assert!(negotiate(&mut t, version_1()));
        let q2 = DriverQueue::new(&mem, QUEUE_BASE + 0x2000, QSIZE);
        setup_queue(&mut t, 0, q2);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(t.is_activated());
    }

    #[test]
    fn hostile_avail_index_leads_to_needs_reset() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        assert!(negotiate(&mut t, version_1()));
        let q = DriverQueue::new(&mem, QUEUE_BASE, QSIZE);
        setup_queue(&mut t, 0, q);
        w(&mut t, REG_STATUS, ALL_OK);
        q.set_avail_idx(&mem, 1000);
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
        // The driver cannot clear NEEDS_RESET by writing status; only reset does.
        w(&mut t, REG_STATUS, ALL_OK);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn console_round_trip_through_the_transport() {
        use crate::devices::virtio::{BackendStatus, Console, ConsoleBackend};
        use std::io::Read;
        use std::os::unix::net::UnixStream;

        let mem = two_region_mem();
        let (mut host, guest) = UnixStream::pair().unwrap();
        let console = Console::new(ConsoleBackend::from_stream(guest).unwrap());
        let mut t = MmioTransport::new(mem.clone(), Box::new(console)).unwrap();
        assert_eq!(r(&mut t, REG_DEVICE_ID), 3);
        assert_eq!(t.queue_evts().len(), 2);
        assert!(t.backend_fd().is_some());
        assert!(t.backend_output_fd().is_some());
        // Input that arrives before the driver is up waits.
        host.write_all(b"early").unwrap();
        assert_eq!(t.handle_backend_event(), BackendStatus::Open);

        assert!(negotiate(&mut t, version_1()));
        let rx = DriverQueue::new(&mem, QUEUE_BASE, QSIZE);
        let tx = DriverQueue::new(&mem, QUEUE_BASE + 0x1000, QSIZE);
        setup_queue(&mut t, 0, rx);
        setup_queue(&mut t, 1, tx);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(t.is_activated());

        // Guest -> host through a plain MMIO notify of queue 1.
        mem.write_slice(b"hello host", GuestAddress(DATA_BASE))
            .unwrap();
        tx.publish(&mem, 0, &[desc(DATA_BASE, 10, 0, 0)], &[0]);
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        let mut got = [0u8; 10];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello host");
        assert_eq!(tx.used_idx(&mem), 1);

        // Host -> guest: the early bytes plus new ones, once a buffer is posted.
        host.write_all(b" and late").unwrap();
        rx.publish(&mem, 0, &[desc(DATA_BASE + 0x100, 64, WRITE, 0)], &[0]);
        t.queue_evts()[0].write(1).unwrap();
        t.handle_queue_event(0);
        let (_, len) = rx.used(&mem, 0);
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, GuestAddress(DATA_BASE + 0x100))
            .unwrap();
        assert_eq!(&buf, b"early and late");
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING, 0);

        drop(host);
        assert_eq!(t.handle_backend_event(), BackendStatus::Closed);
    }

    #[test]
    fn arbitrary_register_writes_do_not_panic() {
        let mem = two_region_mem();
        let (mut t, _f) = block_transport(&mem);
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let off = (seed >> 8) % 0x140;
            let val = (seed >> 20) as u32;
            let width = [1usize, 2, 4, 8][(seed & 3) as usize];
            let bytes = u64::from(val).to_le_bytes();
            if seed & 0x10 == 0 {
                t.write(off & !3, &bytes[..width]);
            } else {
                let mut buf = [0u8; 8];
                t.read(off, &mut buf[..width]);
            }
        }
        t.write(u64::MAX, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        t.read(u64::MAX - 1, &mut b);
    }
}
