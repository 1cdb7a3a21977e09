//! The control protocol of a multiport virtio-console (`VIRTIO_CONSOLE_F_MULTIPORT`), for
//! the one named port vessel gives a guest: virtio 1.x §5.3.6.2.
//!
//! Why a port rather than the console (`hvc0`): Linux writes to a console port with the
//! vCPU spinning, interrupts off, until the host takes the buffer, so a slow host reader
//! stalls the whole guest, and QEMU's console drops what its host socket cannot take at
//! once (a slow `vessel run | reader` lost output and desynchronised the frame stream). A
//! generic port blocks only the writing process until the host drains its queue:
//! back-pressure from the guest's writer to the host's reader, with nothing dropped.
//!
//! The conversation: the driver says `DEVICE_READY`; the device adds port 0
//! (`PORT_ADD`); the driver says `PORT_READY`; the device names it (`PORT_NAME`) and says
//! the host side is open (`PORT_OPEN`), or closed when the host goes away. The driver
//! reports its own opens and closes with `PORT_OPEN`. Everything the driver sends is
//! hostile input: short, unknown or out-of-order messages are ignored.

use std::collections::VecDeque;

/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
/// Size of `struct virtio_console_control`: id (u32), event (u16), value (u16).
pub const CONTROL_LEN: usize = 8;
/// The longest port name sent: Linux reads a name into a page-sized control buffer.
pub const MAX_NAME: usize = 255;

/// Control events (virtio 1.x §5.3.6.2).
pub mod event {
    /// Driver → device: the driver is ready (value 1) or failed (0).
    pub const DEVICE_READY: u16 = 0;
    /// Device → driver: a port was added.
    pub const DEVICE_ADD: u16 = 1;
    /// Driver → device: a port is ready (value 1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Device → driver: the port is a console.
    pub const CONSOLE_PORT: u16 = 4;
    /// Both ways: the port was opened (value 1) or closed (0) on the sender's side.
    pub const PORT_OPEN: u16 = 6;
    /// Device → driver: the port's name follows the header.
    pub const PORT_NAME: u16 = 7;
}

/// One control message: the 8-byte header and, for `PORT_NAME`, the name.
pub fn encode(id: u32, ev: u16, value: u16, tail: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN + tail.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&ev.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(tail);
    m
}

/// The header of a driver's control message, if it has one.
pub fn decode(msg: &[u8]) -> Option<(u32, u16, u16)> {
    let h = msg.get(..CONTROL_LEN)?;
    Some((
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        u16::from_le_bytes([h[4], h[5]]),
        u16::from_le_bytes([h[6], h[7]]),
    ))
}

/// The device side of the control conversation for port 0.
#[derive(Debug)]
pub struct PortControl {
    name: Vec<u8>,
    /// Messages for the driver, waiting for receive buffers on the control queue.
    outbox: VecDeque<Vec<u8>>,
    added: bool,
    ready: bool,
    host_open: bool,
    guest_open: bool,
}

impl PortControl {
    /// Control for one port called `name` (truncated to [`MAX_NAME`] bytes).
    pub fn new(name: &str) -> Self {
        let mut name = name.as_bytes().to_vec();
        name.truncate(MAX_NAME);
        Self {
            name,
            outbox: VecDeque::new(),
            added: false,
            ready: false,
            host_open: true,
            guest_open: false,
        }
    }

    /// Handles one message from the driver.
    pub fn from_driver(&mut self, msg: &[u8]) {
        let Some((id, ev, value)) = decode(msg) else {
            return;
        };
        match ev {
            event::DEVICE_READY if value == 1 && !self.added => {
                self.added = true;
                self.outbox.push_back(encode(0, event::DEVICE_ADD, 0, &[]));
            }
            event::PORT_READY if id == 0 && value == 1 && self.added && !self.ready => {
                self.ready = true;
                self.outbox
                    .push_back(encode(0, event::PORT_NAME, 1, &self.name));
                if self.host_open {
                    self.outbox.push_back(encode(0, event::PORT_OPEN, 1, &[]));
                }
            }
            event::PORT_OPEN if id == 0 => self.guest_open = value == 1,
            _ => {}
        }
    }

    /// The host side went away: tell the driver, so the guest's reads see the end.
    pub fn host_closed(&mut self) {
        if self.host_open {
            self.host_open = false;
            if self.ready {
                self.outbox.push_back(encode(0, event::PORT_OPEN, 0, &[]));
            }
        }
    }

    /// The next message for the driver, if any.
    pub fn front(&self) -> Option<&[u8]> {
        self.outbox.front().map(Vec::as_slice)
    }

    /// Drops the message [`PortControl::front`] returned, once delivered.
    pub fn pop(&mut self) {
        self.outbox.pop_front();
    }

    /// Messages waiting for the driver.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Whether the guest has the port open.
    pub fn guest_open(&self) -> bool {
        self.guest_open
    }

    /// Back to the state before the driver's first message (driver reset).
    pub fn reset(&mut self) {
        self.outbox.clear();
        self.added = false;
        self.ready = false;
        self.guest_open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(c: &mut PortControl) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = c.front() {
            let (id, ev, v) = decode(m).unwrap();
            out.push((id, ev, v, m[CONTROL_LEN..].to_vec()));
            c.pop();
        }
        out
    }

    #[test]
    fn the_port_is_added_named_and_opened_in_order() {
        let mut c = PortControl::new("vessel.agent");
        // Out of order: a port can't be ready before the device is.
        c.from_driver(&encode(0, event::PORT_READY, 1, &[]));
        assert_eq!(c.queued(), 0);
        c.from_driver(&encode(0, event::DEVICE_READY, 1, &[]));
        assert_eq!(drain(&mut c), vec![(0, event::DEVICE_ADD, 0, vec![])]);
        c.from_driver(&encode(0, event::PORT_READY, 1, &[]));
        assert_eq!(
            drain(&mut c),
            vec![
                (0, event::PORT_NAME, 1, b"vessel.agent".to_vec()),
                (0, event::PORT_OPEN, 1, vec![]),
            ]
        );
        // Repeats add nothing.
        c.from_driver(&encode(0, event::DEVICE_READY, 1, &[]));
        c.from_driver(&encode(0, event::PORT_READY, 1, &[]));
        assert_eq!(c.queued(), 0);
        c.from_driver(&encode(0, event::PORT_OPEN, 1, &[]));
        assert!(c.guest_open());
        c.from_driver(&encode(0, event::PORT_OPEN, 0, &[]));
        assert!(!c.guest_open());
        c.host_closed();
        c.host_closed();
        assert_eq!(drain(&mut c), vec![(0, event::PORT_OPEN, 0, vec![])]);
    }

    #[test]
    fn hostile_messages_are_ignored() {
        let mut c = PortControl::new(&"n".repeat(1000));
        for m in [
            vec![],
            vec![0; 7],
            encode(0, 0xffff, 1, &[]),
            encode(7, event::PORT_READY, 1, &[]),
            encode(0, event::DEVICE_READY, 0, &[]),
        ] {
            c.from_driver(&m);
        }
        assert_eq!(c.queued(), 0);
        c.from_driver(&encode(0, event::DEVICE_READY, 1, &[1, 2, 3]));
        c.from_driver(&encode(0, event::PORT_READY, 1, &[]));
        let msgs = drain(&mut c);
        assert_eq!(msgs[1].3.len(), MAX_NAME);
        // A host that closed before the port was ready is never announced as open.
        let mut c = PortControl::new("x");
        c.host_closed();
        c.from_driver(&encode(0, event::DEVICE_READY, 1, &[]));
        c.from_driver(&encode(0, event::PORT_READY, 1, &[]));
        let evs: Vec<u16> = drain(&mut c).iter().map(|m| m.1).collect();
        assert_eq!(evs, vec![event::DEVICE_ADD, event::PORT_NAME]);
        c.reset();
        assert_eq!(c.queued(), 0);
    }
}
