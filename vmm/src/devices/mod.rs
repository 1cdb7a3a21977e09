//! Emulated devices and the contract between them and the VM core.
//!
//! The VM core (memory, vCPUs, event loop) owns the buses and the KVM file
//! descriptors; devices own their registers and queues. A device never sees KVM:
//! it is handed guest memory, an interrupt `EventFd` (registered by the core as an
//! irqfd) and, for virtio devices, the queue-notify `EventFd`s it exposes (registered
//! by the core as ioeventfds). Everything a device reads from the guest is hostile.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusError};

/// A device on the guest's MMIO or port-I/O bus.
///
/// `offset` is relative to the start of the device's window, and `data.len()` is the
/// access width the guest used (1, 2, 4 or 8). Devices must tolerate any offset and
/// width: unknown reads return zeroes, unknown writes are ignored.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
