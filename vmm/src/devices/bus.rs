//! An address-range bus: maps `[base, base + len)` windows to devices.
//!
//! The same type serves the MMIO bus and the port-I/O bus. vCPU threads share one
//! `Bus` (it is `Sync`); each device sits behind its own mutex so that accesses to
//! different devices do not serialise on each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::BusDevice;

/// A device shared between the bus and whoever else drives it (the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A window of length zero, or one that wraps past the end of the address space.
    #[error("invalid bus window: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// Start of the rejected window.
        base: u64,
        /// Length of the rejected window.
        len: u64,
    },
    /// The window overlaps one that is already on the bus.
    #[error("bus window {base:#x}+{len:#x} overlaps an existing device at {existing:#x}")]
    Overlap {
        /// Start of the rejected window.
        base: u64,
        /// Length of the rejected window.
        len: u64,
        /// Start of the window it collides with.
        existing: u64,
    },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Address-range to device map.
#[derive(Default)]
pub struct Bus {
    // Keyed by window start; windows never overlap, so the entry with the greatest
    // start <= addr is the only candidate for addr.
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let windows: Vec<(u64, u64)> = self.devices.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("windows", &windows).finish()
    }
}

/// Locks a device, ignoring poisoning: a device that panicked once must not take the
/// whole VMM down on the next access (devices are written not to panic at all).
pub fn lock_device<T: ?Sized>(device: &Mutex<T>) -> MutexGuard<'_, T> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        if let Some((&prev_base, prev)) = self.devices.range(..end).next_back() {
            // prev_base < end; it overlaps unless it ends at or before `base`.
            if prev_base + prev.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    existing: prev_base,
                });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Finds the device whose window holds `addr`, with `addr`'s offset in that window.
    pub fn get(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((&entry.device, offset))
    }

    /// Dispatches a guest read. Returns false (and leaves `data` untouched) when no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.get(addr) {
            Some((device, offset)) => {
                lock_device(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.get(addr) {
            Some((device, offset)) => {
                lock_device(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn insert_rejects_overlaps_and_empty_windows() {
        let mut bus = Bus::new();
        bus.insert(dev(), 0x1000, 0x100).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10ff, 1),
            Err(BusError::Overlap {
                existing: 0x1000,
                ..
            })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf00, 0x101),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x10000),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(dev(), 0x2000, 0),
            Err(BusError::InvalidRange {
                base: 0x2000,
                len: 0
            })
        );
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        // Adjacent windows on both sides are fine.
        bus.insert(dev(), 0x1100, 0x100).unwrap();
        bus.insert(dev(), 0xf00, 0x100).unwrap();
    }

    #[test]
    fn lookup_returns_device_and_offset() {
        let mut bus = Bus::new();
        let a = dev();
        let b = dev();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0xd000_0000, 0x1000).unwrap();

        assert!(bus.get(0x3f7).is_none());
        assert_eq!(bus.get(0x3f8).unwrap().1, 0);
        assert_eq!(bus.get(0x3ff).unwrap().1, 7);
        assert!(bus.get(0x400).is_none());

        let mut data = [0u8; 4];
        assert!(bus.read(0xd000_0050, &mut data));
        assert_eq!(data, [0x50; 4]);
        assert!(bus.write(0x3fa, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((2, vec![7])));
        assert!(b.lock().unwrap().last_write.is_none());
        assert!(!bus.write(0xd000_1000, &[1]));
        let mut untouched = [9u8; 1];
        assert!(!bus.read(0, &mut untouched));
        assert_eq!(untouched, [9]);
    }
}
