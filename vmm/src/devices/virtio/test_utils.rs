//! Helpers shared by the virtio unit tests: real guest memory in two adjacent
//! regions, raw descriptors, and a driver-side view of a split queue.

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VirtioInterrupt;

/// Descriptor flag: another descriptor follows.
pub const NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const INDIRECT: u16 = 4;

/// End of the first region; the second starts here, so buffers can straddle it.
pub const REGION_SPLIT: u64 = 0x10_0000;
/// End of guest memory.
pub const MEM_END: u64 = 0x20_0000;
/// Where the mock queue's rings start.
pub const QUEUE_BASE: u64 = 0x1000;
/// A scratch area for request headers and buffers.
pub const DATA_BASE: u64 = 0x4_0000;

/// Two adjacent 1 MiB regions.
pub fn two_region_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (
            GuestAddress(REGION_SPLIT),
            (MEM_END - REGION_SPLIT) as usize,
        ),
    ])
    .unwrap()
}

/// A raw split descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// An interrupt with its eventfd, for asserting it fired.
pub fn interrupt() -> (VirtioInterrupt, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let copy = evt.try_clone().unwrap();
    (VirtioInterrupt::new(evt), copy)
}

/// The driver's side of a split queue, read and written directly in guest memory.
///
/// virtio-queue's `MockSplitQueue` places the used ring at `avail + 4 + size`
/// (element count, not bytes), which overlaps the avail ring for any queue bigger
/// than 2; tests that submit many requests would see their avail entries overwritten
/// by used entries. This lays the rings out without overlap (virtio 1.2, 2.7).
#[derive(Debug, Clone, Copy)]
pub struct DriverQueue {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl DriverQueue {
    /// The layout of a queue of `size` entries at `base`.
    pub fn layout(base: u64, size: u16) -> Self {
        let size64 = u64::from(size);
        let avail = base + 16 * size64;
        let used = (avail + 6 + 2 * size64 + 3) & !3;
        Self {
            size,
            desc: base,
            avail,
            used,
        }
    }

    /// Lays out a queue and zeroes its rings.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let q = Self::layout(base, size);
        let end = q.used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        q
    }

    /// The device-side queue for this layout, ready.
    pub fn device_queue(&self, _mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes `descs` at table index `start` and publishes `heads` in the avail ring.
    pub fn publish(
        &self,
        mem: &GuestMemoryMmap,
        start: u16,
        descs: &[RawDescriptor],
        heads: &[u16],
    ) {
        for (i, d) in descs.iter().enumerate() {
            let at = self.desc + 16 * u64::from(start.wrapping_add(i as u16) % self.size);
            mem.write_obj(*d, GuestAddress(at)).unwrap();
        }
        let idx: u16 = mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        for (i, h) in heads.iter().enumerate() {
            let slot = idx.wrapping_add(i as u16) % self.size;
            mem.write_obj(*h, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
                .unwrap();
        }
        self.set_avail_idx(mem, idx.wrapping_add(heads.len() as u16));
    }

    /// Overwrites the avail index (to simulate a hostile driver).
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Number of used entries the device published.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The `i`th used element as (descriptor head, length).
    pub fn used(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// Reads one byte of guest memory.
pub fn byte_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}
