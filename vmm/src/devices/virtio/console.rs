//! virtio-console with one port: the agent channel. Queue 0 (receiveq) carries
//! host→guest bytes, queue 1 (transmitq) guest→host bytes. As [`Console::new`] makes it,
//! the port is the guest's console (`hvc0`, no `VIRTIO_CONSOLE_F_MULTIPORT`); as
//! [`Console::with_port`] makes it, the device is multiport with queues 2 and 3 for the
//! control protocol ([`super::console_control`]) and the port is a named generic port
//! (`/dev/vport0p0`), which applies back-pressure to the guest's writer properly.
//!
//! The host side is a [`ConsoleBackend`]: a connected Unix stream socket, or an
//! input fd plus an output fd. Nothing here ever blocks the event loop:
//!
//! - Host input is read without blocking into a bounded pending buffer and copied
//!   into receive buffers as the driver posts them; when the buffer is full we stop
//!   reading the backend (its socket or pipe buffer then pushes back on the writer)
//!   and resume when the driver posts buffers.
//! - Guest output is copied into a bounded transmit buffer and written without
//!   blocking. When the host does not keep up, transmit chains are left in the ring
//!   until the output fd is writable again ([`VirtioDevice::backend_output_fd`],
//!   watched for EPOLLOUT), so a slow reader slows the guest, not the VMM.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::console_control::{PortControl, CONTROL_LEN, VIRTIO_CONSOLE_F_MULTIPORT};
use super::{
    notify_used, queue_err, read_config_bytes, BackendStatus, DeviceError, VirtioDevice,
    VirtioInterrupt, TYPE_CONSOLE, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Most host input bytes held while the driver has no receive buffers.
pub const MAX_PENDING: usize = 64 * 1024;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
// Multiport only: the control receive queue (device → driver) and transmit queue.
const CTRL_RX_QUEUE: usize = 2;
const CTRL_TX_QUEUE: usize = 3;
// Most bytes of a driver's control message looked at; the header is all that matters.
const MAX_CONTROL_IN: usize = 64;
// Chunk for copying guest output through a host buffer: bounds the allocation no
// matter what length a descriptor claims.
const TX_CHUNK: usize = 4096;
/// Guest output buffered for a slow host before transmit chains are left waiting.
pub const MAX_TX_PENDING: usize = 64 * 1024;
/// Most bytes taken from one transmit chain; Linux sends at most 32 KiB per chain,
/// so anything beyond this is a hostile driver and is dropped.
pub const MAX_TX_CHAIN: usize = 1024 * 1024;
// virtio_console_config: cols, rows, max_nr_ports, emerg_wr. Only max_nr_ports is ever
// set (1, when multiport): no other feature that uses them is offered.
const CONFIG_LEN: usize = 12;
const CONFIG_MAX_NR_PORTS: usize = 4;

/// The host end of the console.
#[derive(Debug)]
pub struct ConsoleBackend {
    input: Option<Endpoint>,
    output: Option<Endpoint>,
}

#[derive(Debug)]
struct Endpoint {
    fd: OwnedFd,
    is_socket: bool,
}

impl Endpoint {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let file = std::fs::File::from(fd);
        let is_socket = file.metadata()?.file_type().is_socket();
        Ok(Self {
            fd: OwnedFd::from(file),
            is_socket,
        })
    }

    // Never blocks: sockets use MSG_DONTWAIT (so the shared file description stays
    // blocking for writes), other fds were made O_NONBLOCK at construction.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let ptr = buf.as_mut_ptr().cast::<libc::c_void>();
        let n = if self.is_socket {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            unsafe { libc::recv(fd, ptr, buf.len(), libc::MSG_DONTWAIT) }
        } else {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            unsafe { libc::read(fd, ptr, buf.len()) }
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    // Writes what fits without blocking. Sockets use MSG_DONTWAIT (the description
    // is shared with the input side) and MSG_NOSIGNAL, so a vanished peer is an
    // EPIPE error rather than a SIGPIPE that kills the VMM; other fds were made
    // O_NONBLOCK at construction.
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let ptr = buf.as_ptr().cast::<libc::c_void>();
        let n = if self.is_socket {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
            unsafe { libc::send(fd, ptr, buf.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) }
        } else {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
            unsafe { libc::write(fd, ptr, buf.len()) }
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an open fd have no memory effects.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl ConsoleBackend {
    /// A backend on a connected Unix stream socket (both directions).
    pub fn from_stream(stream: UnixStream) -> io::Result<Self> {
        let input = stream.try_clone()?;
        Ok(Self {
            input: Some(Endpoint::new(OwnedFd::from(input))?),
            output: Some(Endpoint::new(OwnedFd::from(stream))?),
        })
    }

    /// A backend on separate fds. Each fd that is not a socket is switched to
    /// non-blocking mode; do not share its file description with a process that
    /// expects blocking I/O on it. Without `output`, guest output is discarded.
    pub fn from_fds(input: Option<OwnedFd>, output: Option<OwnedFd>) -> io::Result<Self> {
        let open = |fd: Option<OwnedFd>| -> io::Result<Option<Endpoint>> {
            let Some(fd) = fd else { return Ok(None) };
            let ep = Endpoint::new(fd)?;
            if !ep.is_socket {
                set_nonblocking(ep.fd.as_raw_fd())?;
            }
            Ok(Some(ep))
        };
        Ok(Self {
            input: open(input)?,
            output: open(output)?,
        })
    }
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<Queue>,
}

/// A single-port virtio console.
pub struct Console {
    backend: ConsoleBackend,
    pending: VecDeque<u8>,
    tx_pending: VecDeque<u8>,
    input_closed: bool,
    output_failed: bool,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    active: Option<Active>,
    /// The multiport control conversation, when the port is a named generic port.
    port: Option<PortControl>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("pending", &self.pending.len())
            .field("input_closed", &self.input_closed)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

// Writes buffered output until the backend would block; a broken backend
// discards output from then on.
fn flush_output(backend: &ConsoleBackend, failed: &mut bool, pending: &mut VecDeque<u8>) {
    let Some(out) = backend.output.as_ref().filter(|_| !*failed) else {
        // Nowhere to send it: guest output is discarded.
        pending.clear();
        return;
    };
    while !pending.is_empty() {
        let (front, _) = pending.as_slices();
        match out.write(front) {
            Ok(0) => break,
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                log::warn!("virtio-console: backend write failed: {e}; output dropped");
                *failed = true;
                pending.clear();
                break;
            }
        }
    }
}

impl Console {
    /// A console talking to `backend`: the guest's `hvc0`.
    pub fn new(backend: ConsoleBackend) -> Self {
        let input_closed = backend.input.is_none();
        Self {
            backend,
            pending: VecDeque::new(),
            tx_pending: VecDeque::new(),
            input_closed,
            output_failed: false,
            config: [0; CONFIG_LEN],
            acked_features: 0,
            active: None,
            port: None,
        }
    }

    /// A multiport device with one generic port called `name` talking to `backend`
    /// (`/dev/vport<N>p0` in the guest, named in `/sys/class/virtio-ports/*/name`).
    pub fn with_port(backend: ConsoleBackend, name: &str) -> Self {
        let mut c = Self::new(backend);
        c.config[CONFIG_MAX_NR_PORTS..CONFIG_MAX_NR_PORTS + 4].copy_from_slice(&1u32.to_le_bytes());
        let mut port = PortControl::new(name);
        if c.input_closed {
            port.host_closed();
        }
        c.port = Some(port);
        c
    }

    fn queue_count(&self) -> usize {
        if self.port.is_some() {
            4
        } else {
            2
        }
    }

    /// Delivers queued control messages into the driver's control receive buffers.
    /// Returns whether any chain was used.
    fn deliver_control(&mut self) -> Result<bool, DeviceError> {
        let (Some(active), Some(port)) = (self.active.as_mut(), self.port.as_mut()) else {
            return Ok(false);
        };
        let mem = &active.mem;
        let queue = &mut active.queues[CTRL_RX_QUEUE];
        let mut used_any = false;
        while let Some(msg) = port.front() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(queue_err(CTRL_RX_QUEUE)(e)),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain.writable() {
                let n = (msg.len() - written).min(desc.len() as usize);
                if n == 0
                    || mem
                        .write_slice(&msg[written..written + n], desc.addr())
                        .is_err()
                {
                    break;
                }
                written += n;
            }
            queue
                .add_used(mem, head, written as u32)
                .map_err(queue_err(CTRL_RX_QUEUE))?;
            port.pop();
            used_any = true;
        }
        Ok(used_any)
    }

    /// Reads the driver's control messages and answers them.
    fn process_control(&mut self) -> Result<(), DeviceError> {
        let (Some(active), Some(port)) = (self.active.as_mut(), self.port.as_mut()) else {
            return Ok(());
        };
        let mem = &active.mem;
        let queue = &mut active.queues[CTRL_TX_QUEUE];
        let mut used_any = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(queue_err(CTRL_TX_QUEUE)(e)),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut msg = [0u8; MAX_CONTROL_IN];
            let mut got = 0usize;
            for desc in chain.readable() {
                let n = (MAX_CONTROL_IN - got).min(desc.len() as usize);
                if n == 0 || mem.read_slice(&mut msg[got..got + n], desc.addr()).is_err() {
                    break;
                }
                got += n;
            }
            queue
                .add_used(mem, head, 0)
                .map_err(queue_err(CTRL_TX_QUEUE))?;
            used_any = true;
            if got >= CONTROL_LEN {
                port.from_driver(&msg[..got]);
            }
        }
        if used_any {
            self.notify_guest(CTRL_TX_QUEUE)?;
        }
        if self.deliver_control()? {
            self.notify_guest(CTRL_RX_QUEUE)?;
        }
        Ok(())
    }

    /// Host input bytes read from the backend but not yet delivered to the guest.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    /// Reads what the backend has, without blocking, up to the pending limit.
    fn fill_pending(&mut self) {
        let Some(input) = self.backend.input.as_ref().filter(|_| !self.input_closed) else {
            return;
        };
        let mut buf = [0u8; 4096];
        while self.pending.len() < MAX_PENDING {
            let want = buf.len().min(MAX_PENDING - self.pending.len());
            match input.read(&mut buf[..want]) {
                Ok(0) => {
                    self.input_closed = true;
                    return;
                }
                Ok(n) => self.pending.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("virtio-console: backend read failed: {e}; input closed");
                    self.input_closed = true;
                    return;
                }
            }
        }
    }

    /// Moves pending bytes into receive buffers. Returns whether any chain was used.
    fn deliver_rx(&mut self) -> Result<bool, DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX_QUEUE];
        let mut used_any = false;
        while !self.pending.is_empty() {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(queue_err(RX_QUEUE)(e)),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut written: u32 = 0;
            for desc in chain.writable() {
                if self.pending.is_empty() {
                    break;
                }
                let n = self.pending.len().min(desc.len() as usize);
                let bytes = &self.pending.make_contiguous()[..n];
                if mem.write_slice(bytes, desc.addr()).is_err() {
                    // A buffer outside guest memory ends this chain; the bytes stay
                    // pending for the next one.
                    break;
                }
                self.pending.drain(..n);
                written = written.saturating_add(n as u32);
            }
            queue
                .add_used(mem, head, written)
                .map_err(queue_err(RX_QUEUE))?;
            used_any = true;
        }
        Ok(used_any)
    }

    /// Guest output not yet accepted by the host.
    pub fn pending_output(&self) -> usize {
        self.tx_pending.len()
    }

    /// Writes buffered output until the backend would block.
    fn flush_tx(&mut self) {
        flush_output(&self.backend, &mut self.output_failed, &mut self.tx_pending);
    }

    /// Moves transmit chains into the output buffer while it has room. Returns
    /// whether any chain was used.
    fn process_tx(&mut self) -> Result<bool, DeviceError> {
        self.flush_tx();
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX_QUEUE];
        let mut used_any = false;
        let mut buf = vec![0u8; TX_CHUNK];
        while self.tx_pending.len() < MAX_TX_PENDING {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(queue_err(TX_QUEUE)(e)),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut taken = 0usize;
            'descs: for desc in chain.readable() {
                let len = desc.len() as usize;
                let mut done = 0usize;
                while done < len && taken < MAX_TX_CHAIN {
                    let n = (len - done).min(TX_CHUNK).min(MAX_TX_CHAIN - taken);
                    let Some(addr) = desc.addr().checked_add(done as u64) else {
                        break 'descs;
                    };
                    if mem.read_slice(&mut buf[..n], addr).is_err() {
                        // A buffer outside guest memory ends the chain.
                        break 'descs;
                    }
                    self.tx_pending.extend(&buf[..n]);
                    done += n;
                    taken += n;
                }
            }
            queue.add_used(mem, head, 0).map_err(queue_err(TX_QUEUE))?;
            used_any = true;
            // Push it out now so the buffer only grows while the host is slow.
            flush_output(&self.backend, &mut self.output_failed, &mut self.tx_pending);
        }
        Ok(used_any)
    }

    fn notify_guest(&mut self, queue_index: usize) -> Result<(), DeviceError> {
        match self.active.as_mut() {
            Some(a) => notify_used(
                &mut a.queues[queue_index],
                queue_index,
                &a.mem,
                &a.interrupt,
            ),
            None => Ok(()),
        }
    }

    // Delivers pending input and refills from the backend until either the driver
    // runs out of buffers or the backend runs dry. Bounded: each round either
    // delivers bytes or stops.
    fn pump_rx(&mut self) -> Result<(), DeviceError> {
        let mut used_any = false;
        loop {
            used_any |= self.deliver_rx()?;
            if !self.pending.is_empty() || self.input_closed {
                break;
            }
            self.fill_pending();
            if self.pending.is_empty() {
                break;
            }
        }
        if used_any {
            self.notify_guest(RX_QUEUE)?;
        }
        // The host's end of a named port closes once the guest has everything it sent:
        // the guest's reads then see the end of the stream.
        if self.input_closed && self.pending.is_empty() {
            if let Some(port) = self.port.as_mut() {
                port.host_closed();
                if self.deliver_control()? {
                    self.notify_guest(CTRL_RX_QUEUE)?;
                }
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4][..self.queue_count()]
    }

    fn features(&self) -> u64 {
        let multiport = if self.port.is_some() {
            1u64 << VIRTIO_CONSOLE_F_MULTIPORT
        } else {
            0
        };
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_INDIRECT_DESC) | multiport
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, which is not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), DeviceError> {
        if queues.len() != self.queue_count() {
            return Err(DeviceError::QueueCount {
                expected: self.queue_count(),
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        match index {
            RX_QUEUE => self.pump_rx(),
            TX_QUEUE => {
                if self.process_tx()? {
                    self.notify_guest(TX_QUEUE)?;
                }
                Ok(())
            }
            CTRL_RX_QUEUE if self.port.is_some() => {
                if self.deliver_control()? {
                    self.notify_guest(CTRL_RX_QUEUE)?;
                }
                Ok(())
            }
            CTRL_TX_QUEUE if self.port.is_some() => self.process_control(),
            _ => Err(DeviceError::NoSuchQueue(index)),
        }
    }

    fn reset(&mut self) {
        // Pending host input survives a driver reset: it is still owed to the guest.
        self.active = None;
        self.acked_features = 0;
        if let Some(port) = self.port.as_mut() {
            port.reset();
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        self.backend.input.as_ref().map(|ep| ep.fd.as_raw_fd())
    }

    fn backend_output_fd(&self) -> Option<RawFd> {
        self.backend.output.as_ref().map(|ep| ep.fd.as_raw_fd())
    }

    fn process_backend(&mut self) -> Result<BackendStatus, DeviceError> {
        // Either direction may have become ready: resume output held back by a slow
        // host, then take new input.
        if self.process_tx()? {
            self.notify_guest(TX_QUEUE)?;
        }
        if !self.input_closed {
            self.fill_pending();
        }
        self.pump_rx()?;
        Ok(if self.input_closed {
            BackendStatus::Closed
        } else {
            BackendStatus::Open
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use std::io::{Read, Write};
    use std::time::Duration;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    const QSIZE: u16 = 16;
    const RXQ: u64 = QUEUE_BASE;
    const TXQ: u64 = QUEUE_BASE + 0x1000;

    struct Fixture {
        mem: GuestMemoryMmap,
        console: Console,
        host: UnixStream,
        rx: DriverQueue,
        tx: DriverQueue,
        irq: EventFd,
    }

    fn fixture() -> Fixture {
        let mem = two_region_mem();
        let (host, guest_side) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut console = Console::new(ConsoleBackend::from_stream(guest_side).unwrap());
        let rx = DriverQueue::new(&mem, RXQ, QSIZE);
        let tx = DriverQueue::new(&mem, TXQ, QSIZE);
        let (interrupt, irq) = interrupt();
        console
            .activate(
                mem.clone(),
                interrupt,
                vec![rx.device_queue(&mem), tx.device_queue(&mem)],
            )
            .unwrap();
        Fixture {
            mem,
            console,
            host,
            rx,
            tx,
            irq,
        }
    }

    #[test]
    fn transmit_reaches_the_host() {
        let mut fx = fixture();
        fx.mem
            .write_slice(b"hello, ", GuestAddress(DATA_BASE))
            .unwrap();
        // The second buffer straddles the two memory regions.
        let straddle = REGION_SPLIT - 3;
        fx.mem
            .write_slice(b"world", GuestAddress(straddle))
            .unwrap();
        fx.tx.publish(
            &fx.mem,
            0,
            &[
                desc(DATA_BASE, 7, NEXT, 1),
                desc(straddle, 5, 0, 0),
                desc(DATA_BASE + 0x100, 0, 0, 0),
            ],
            &[0, 2],
        );
        fx.console.process_queue(1).unwrap();
        let mut got = [0u8; 12];
        fx.host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello, world");
        assert_eq!(fx.tx.used_idx(&fx.mem), 2);
        assert_eq!(fx.tx.used(&fx.mem, 0), (0, 0));
        assert_eq!(fx.tx.used(&fx.mem, 1), (2, 0));
        assert_eq!(fx.irq.read().unwrap(), 1);
    }

    #[test]
    fn transmit_skips_bad_buffers_without_crashing() {
        let mut fx = fixture();
        fx.mem.write_slice(b"ok", GuestAddress(DATA_BASE)).unwrap();
        fx.tx.publish(
            &fx.mem,
            0,
            &[
                // Claims 4 GiB starting near the end of memory.
                desc(MEM_END - 16, u32::MAX, 0, 0),
                // Device-writable buffers are not output.
                desc(DATA_BASE, 2, WRITE, 0),
                desc(DATA_BASE, 2, 0, 0),
            ],
            &[0, 1, 2],
        );
        fx.console.process_queue(1).unwrap();
        assert_eq!(fx.tx.used_idx(&fx.mem), 3);
        // The oversized buffer is dropped (its first chunk already leaves guest
        // memory), the writable one is not output, the good one is.
        let mut got = [0u8; 2];
        fx.host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        fx.host.set_nonblocking(true).unwrap();
        assert!(
            fx.host.read(&mut [0u8; 1]).is_err(),
            "nothing else was sent"
        );
    }

    #[test]
    fn receive_waits_for_buffers_then_delivers() {
        let mut fx = fixture();
        fx.host.write_all(b"ping from host").unwrap();
        // No receive buffers yet: the bytes are held, nothing is used.
        assert_eq!(fx.console.process_backend().unwrap(), BackendStatus::Open);
        assert_eq!(fx.console.pending_input(), 14);
        assert_eq!(fx.rx.used_idx(&fx.mem), 0);
        // Two small buffers: the input is split across them.
        fx.rx.publish(
            &fx.mem,
            0,
            &[
                desc(DATA_BASE, 4, WRITE, 0),
                desc(DATA_BASE + 0x100, 64, WRITE, 0),
            ],
            &[0, 1],
        );
        fx.console.process_queue(0).unwrap();
        assert_eq!(fx.rx.used_idx(&fx.mem), 2);
        assert_eq!(fx.rx.used(&fx.mem, 0), (0, 4));
        assert_eq!(fx.rx.used(&fx.mem, 1), (1, 10));
        let mut a = [0u8; 4];
        let mut b = [0u8; 10];
        fx.mem.read_slice(&mut a, GuestAddress(DATA_BASE)).unwrap();
        fx.mem
            .read_slice(&mut b, GuestAddress(DATA_BASE + 0x100))
            .unwrap();
        assert_eq!(&a, b"ping");
        assert_eq!(&b, b" from host");
        assert_eq!(fx.console.pending_input(), 0);
        assert!(fx.irq.read().unwrap() >= 1);

        // With a buffer already posted, new input goes straight in.
        fx.rx
            .publish(&fx.mem, 2, &[desc(DATA_BASE + 0x200, 64, WRITE, 0)], &[2]);
        fx.host.write_all(b"again").unwrap();
        fx.console.process_backend().unwrap();
        assert_eq!(fx.rx.used(&fx.mem, 2), (2, 5));
    }

    #[test]
    fn pending_input_is_bounded() {
        let mut fx = fixture();
        let chunk = vec![b'x'; 16 * 1024];
        let writer = {
            let mut host = fx.host.try_clone().unwrap();
            std::thread::spawn(move || {
                // More than MAX_PENDING; the socket buffer absorbs part, the rest
                // blocks until the guest reads.
                for _ in 0..8 {
                    if host.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..10 {
            fx.console.process_backend().unwrap();
            assert!(fx.console.pending_input() <= MAX_PENDING);
        }
        assert_eq!(fx.console.pending_input(), MAX_PENDING);
        // The guest drains it: 16 posted 4 KiB buffers, each re-posted once used.
        let descs: Vec<_> = (0..QSIZE)
            .map(|i| desc(DATA_BASE + u64::from(i) * 0x1000, 0x1000, WRITE, 0))
            .collect();
        let heads: Vec<u16> = (0..QSIZE).collect();
        fx.rx.publish(&fx.mem, 0, &descs, &heads);
        let mut total = 0usize;
        let mut seen = 0u16;
        for _ in 0..1000 {
            fx.console.process_queue(0).unwrap();
            let now = fx.rx.used_idx(&fx.mem);
            while seen != now {
                let (id, len) = fx.rx.used(&fx.mem, seen);
                total += len as usize;
                fx.rx.publish(&fx.mem, 0, &[], &[id as u16]);
                seen = seen.wrapping_add(1);
            }
            if total == 8 * 16 * 1024 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            fx.console.process_backend().unwrap();
            assert!(fx.console.pending_input() <= MAX_PENDING);
        }
        writer.join().unwrap();
        assert_eq!(total, 8 * 16 * 1024);
    }

    #[test]
    fn slow_host_holds_transmit_chains_instead_of_blocking() {
        let mut fx = fixture();
        const CHAIN: u32 = 32 * 1024;
        let descs: Vec<_> = (0..QSIZE)
            .map(|i| {
                let addr = DATA_BASE + u64::from(i) * u64::from(CHAIN);
                fx.mem
                    .write_slice(&vec![i as u8; CHAIN as usize], GuestAddress(addr))
                    .unwrap();
                desc(addr, CHAIN, 0, 0)
            })
            .collect();
        let heads: Vec<u16> = (0..QSIZE).collect();
        fx.tx.publish(&fx.mem, 0, &descs, &heads);
        // The host reads nothing: this must return, with chains left in the ring.
        fx.console.process_queue(1).unwrap();
        let used_now = fx.tx.used_idx(&fx.mem);
        assert!(
            used_now < QSIZE,
            "all {used_now} chains taken despite a full socket"
        );
        assert!(fx.console.pending_output() <= MAX_TX_PENDING + CHAIN as usize);

        // The host drains; each EPOLLOUT (here: a direct call) resumes transmission.
        let total = QSIZE as usize * CHAIN as usize;
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 64 * 1024];
        fx.host.set_nonblocking(true).unwrap();
        for _ in 0..10_000 {
            match fx.host.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            fx.console.process_backend().unwrap();
            if got.len() == total {
                break;
            }
        }
        assert_eq!(got.len(), total);
        assert_eq!(fx.tx.used_idx(&fx.mem), QSIZE);
        // Order and content survive the stop-and-go.
        for (i, chunk) in got.chunks(CHAIN as usize).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "chain {i} corrupted");
        }
    }

    #[test]
    fn backend_eof_closes_input_cleanly() {
        let mut fx = fixture();
        fx.host.write_all(b"last words").unwrap();
        fx.host.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(fx.console.process_backend().unwrap(), BackendStatus::Closed);
        assert_eq!(fx.console.pending_input(), 10);
        // Still delivered after EOF.
        fx.rx
            .publish(&fx.mem, 0, &[desc(DATA_BASE, 64, WRITE, 0)], &[0]);
        fx.console.process_queue(0).unwrap();
        assert_eq!(fx.rx.used(&fx.mem, 0), (0, 10));
        assert_eq!(fx.console.process_backend().unwrap(), BackendStatus::Closed);
    }

    #[test]
    fn vanished_host_does_not_kill_the_vmm() {
        let mut fx = fixture();
        drop(std::mem::replace(
            &mut fx.host,
            UnixStream::pair().unwrap().0,
        ));
        fx.mem
            .write_slice(b"anyone?", GuestAddress(DATA_BASE))
            .unwrap();
        fx.tx.publish(&fx.mem, 0, &[desc(DATA_BASE, 7, 0, 0)], &[0]);
        // EPIPE without SIGPIPE (MSG_NOSIGNAL): the chain is still returned.
        fx.console.process_queue(1).unwrap();
        assert_eq!(fx.tx.used_idx(&fx.mem), 1);
        assert!(fx.console.output_failed);
        assert_eq!(fx.console.process_backend().unwrap(), BackendStatus::Closed);
    }

    #[test]
    fn fd_pair_backend_and_reset() {
        let (in_r, mut in_w) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut pipe = [0i32; 2];
        // SAFETY: pipe() fills the two-element array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: both fds were just created and are owned here only.
        let (out_r, out_w) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(pipe[0]),
                OwnedFd::from_raw_fd(pipe[1]),
            )
        };
        let backend = ConsoleBackend::from_fds(Some(OwnedFd::from(in_r)), Some(out_w)).unwrap();
        let mut console = Console::new(backend);
        assert_eq!(console.device_type(), TYPE_CONSOLE);
        assert!(console.backend_fd().is_some());
        let mem = two_region_mem();
        let rx = DriverQueue::new(&mem, RXQ, QSIZE);
        let tx = DriverQueue::new(&mem, TXQ, QSIZE);
        assert!(matches!(
            console.activate(mem.clone(), interrupt().0, vec![rx.device_queue(&mem)]),
            Err(DeviceError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        console
            .activate(
                mem.clone(),
                interrupt().0,
                vec![rx.device_queue(&mem), tx.device_queue(&mem)],
            )
            .unwrap();
        mem.write_slice(b"out", GuestAddress(DATA_BASE)).unwrap();
        tx.publish(&mem, 0, &[desc(DATA_BASE, 3, 0, 0)], &[0]);
        console.process_queue(1).unwrap();
        let mut got = [0u8; 3];
        let mut out_r = out_r;
        out_r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"out");
        assert!(console.process_queue(2).is_err());

        // After reset nothing is processed, and input stays pending for the next
        // driver.
        console.reset();
        in_w.write_all(b"queued").unwrap();
        console.process_backend().unwrap();
        tx.publish(&mem, 1, &[desc(DATA_BASE, 3, 0, 0)], &[1]);
        console.process_queue(1).unwrap();
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(console.pending_input(), 6);
        let mut cfg = [0xffu8; 12];
        console.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 12]);
    }
    #[test]
    fn multiport_names_the_port_carries_data_and_says_when_the_host_left() {
        use super::super::console_control::{decode, encode, event};
        let mem = two_region_mem();
        let (mut host, guest_side) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut c = Console::with_port(
            ConsoleBackend::from_stream(guest_side).unwrap(),
            "vessel.agent",
        );
        assert_eq!(c.queue_max_sizes().len(), 4);
        assert_ne!(c.features() & (1 << VIRTIO_CONSOLE_F_MULTIPORT), 0);
        let mut cfg = [0u8; 4];
        c.read_config(4, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), 1, "max_nr_ports");
        let qs: Vec<DriverQueue> = (0..4)
            .map(|i| DriverQueue::new(&mem, QUEUE_BASE + i * 0x1000, QSIZE))
            .collect();
        let (interrupt, _irq) = interrupt();
        c.activate(
            mem.clone(),
            interrupt,
            qs.iter().map(|q| q.device_queue(&mem)).collect(),
        )
        .unwrap();
        // The driver posts control receive buffers, then says it is ready.
        let ctrl_in: Vec<_> = (0..8u64)
            .map(|i| desc(DATA_BASE + 0x1000 + i * 0x100, 0x100, WRITE, 0))
            .collect();
        qs[2].publish(&mem, 0, &ctrl_in, &(0..8).collect::<Vec<u16>>());
        let mut sent = 0u16;
        let mut say = |c: &mut Console, ev: u16, value: u16| {
            let at = DATA_BASE + u64::from(sent) * 0x10;
            mem.write_slice(&encode(0, ev, value, &[]), GuestAddress(at))
                .unwrap();
            qs[3].publish(&mem, sent, &[desc(at, 8, 0, 0)], &[sent]);
            sent += 1;
            c.process_queue(3).unwrap();
        };
        let read_ctrl = |i: u16| {
            let (id, len) = qs[2].used(&mem, i);
            let mut m = vec![0u8; len as usize];
            mem.read_slice(
                &mut m,
                GuestAddress(DATA_BASE + 0x1000 + u64::from(id) * 0x100),
            )
            .unwrap();
            m
        };
        say(&mut c, event::DEVICE_READY, 1);
        assert_eq!(decode(&read_ctrl(0)).unwrap(), (0, event::DEVICE_ADD, 0));
        say(&mut c, event::PORT_READY, 1);
        let name = read_ctrl(1);
        assert_eq!(decode(&name).unwrap(), (0, event::PORT_NAME, 1));
        assert_eq!(&name[8..], b"vessel.agent");
        assert_eq!(decode(&read_ctrl(2)).unwrap(), (0, event::PORT_OPEN, 1));
        say(&mut c, event::PORT_OPEN, 1);
        assert!(c.port.as_ref().unwrap().guest_open());

        // Data on the port's own queues, as in the single-port console.
        mem.write_slice(b"to host", GuestAddress(DATA_BASE + 0x800))
            .unwrap();
        qs[1].publish(&mem, 0, &[desc(DATA_BASE + 0x800, 7, 0, 0)], &[0]);
        c.process_queue(1).unwrap();
        let mut got = [0u8; 7];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to host");
        host.write_all(b"bye").unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        c.process_backend().unwrap();
        // Input still pending: the host's end is not closed yet.
        assert_eq!(qs[2].used_idx(&mem), 3);
        qs[0].publish(&mem, 0, &[desc(DATA_BASE + 0x900, 64, WRITE, 0)], &[0]);
        c.process_queue(0).unwrap();
        assert_eq!(qs[0].used(&mem, 0), (0, 3));
        assert_eq!(qs[2].used_idx(&mem), 4);
        assert_eq!(decode(&read_ctrl(3)).unwrap(), (0, event::PORT_OPEN, 0));
        assert!(c.process_queue(4).is_err());
    }
}
