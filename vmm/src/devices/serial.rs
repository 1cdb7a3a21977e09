//! The 8250/16550 UART on COM1, emulated by vm-superio.
//!
//! Output goes to any `Write` sink (a file, stdout, a pipe). The interrupt is an
//! `EventFd` the core registers as an irqfd on [`COM1_IRQ`].

use std::io::{self, Write};
use std::ops::Deref;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Port-I/O base of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports a UART decodes.
pub const COM1_LEN: u64 = 8;
/// The legacy IRQ (and IOAPIC GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// An `EventFd` usable as vm-superio's interrupt line.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps an eventfd.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;

    fn deref(&self) -> &EventFd {
        &self.0
    }
}

/// The output sink of a serial port.
pub type SerialOutput = Box<dyn Write + Send>;

/// A COM port on the port-I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialOutput>,
    // Output errors are reported once, not per byte, so that a closed sink cannot
    // flood the log.
    output_failed: bool,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that signals `interrupt` and writes what the guest transmits to `out`.
    pub fn new(interrupt: EventFd, out: SerialOutput) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger::new(interrupt), out),
            output_failed: false,
        }
    }

    /// The interrupt eventfd (for registering as an irqfd).
    pub fn interrupt_evt(&self) -> &EventFd {
        self.serial.interrupt_evt()
    }

    /// Queues host input for the guest to read; returns how many bytes fitted in the
    /// receive FIFO (the rest should be offered again later).
    pub fn enqueue_input(&mut self, input: &[u8]) -> io::Result<usize> {
        let room = self.serial.fifo_capacity();
        let n = input.len().min(room);
        if n == 0 {
            return Ok(0);
        }
        self.serial
            .enqueue_raw_bytes(&input[..n])
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The UART has byte-wide registers only.
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_LEN {
            return;
        }
        if let Err(e) = self.serial.write(offset as u8, data[0]) {
            if !self.output_failed {
                log::warn!("serial output failed: {e:?}");
                self.output_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_raises_thre_interrupt() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let buf = SharedBuf::default();
        let mut dev = SerialDevice::new(evt.try_clone().unwrap(), Box::new(buf.clone()));
        // Enable the THR-empty interrupt (IER bit 1), as the 8250 driver does.
        dev.write(1, &[0x02]);
        assert_eq!(
            evt.read().unwrap(),
            1,
            "enabling THRE with an empty THR interrupts"
        );
        // Reading IIR acknowledges it, so the next transmit can interrupt again.
        let mut iir = [0u8];
        dev.read(2, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x02);
        for b in b"Linux version" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"Linux version");
        assert!(evt.read().unwrap() >= 1);
    }

    #[test]
    fn odd_widths_and_offsets_are_harmless() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let buf = SharedBuf::default();
        let mut dev = SerialDevice::new(evt, Box::new(buf.clone()));
        dev.write(0, &[1, 2]);
        dev.write(8, &[1]);
        dev.write(u64::MAX, &[1]);
        let mut wide = [0xffu8; 4];
        dev.read(5, &mut wide);
        assert_eq!(wide, [0; 4]);
        assert!(buf.0.lock().unwrap().is_empty());
        // LSR reports an empty transmitter.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(evt, Box::new(io::sink()));
        assert_eq!(dev.enqueue_input(b"hi").unwrap(), 2);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'h');
        dev.read(0, &mut b);
        assert_eq!(b[0], b'i');
    }
}
