//! virtio-net on a stream backend: the guest's Ethernet frames go to a user-mode network
//! stack (passt, or anything that speaks QEMU's `-netdev stream` framing) over a connected
//! Unix stream socket, each frame preceded by its length as a 4-byte big-endian integer,
//! and the stack's frames come back the same way. Queue 0 is receiveq, queue 1 transmitq.
//!
//! No offloads are offered (no checksum, TSO or mergeable buffers), so every frame is one
//! plain Ethernet frame of at most [`MAX_FRAME`] bytes behind a 12-byte `virtio_net_hdr`
//! the device fills with zeroes (and `num_buffers = 1`) and ignores on transmit.
//!
//! Everything the guest hands over is hostile input: descriptor chains are walked with
//! vm-memory's checked accesses, copies go through a bounded buffer, and a frame longer
//! than [`MAX_FRAME`] is dropped. The backend is trusted no more: a length prefix past
//! [`MAX_FRAME`] ends the connection. Nothing blocks the event loop:
//!
//! - Frames from the backend are read ahead of the driver's receive buffers into a queue
//!   of at most [`MAX_RX_QUEUED`] bytes, as QEMU's network queue holds them: passt drops a
//!   frame it cannot write at once and resends it only from its own timer, so a device
//!   that read only while a buffer waited starved the guest (measured: a fifth of QEMU's
//!   receive rate). With the queue full, the socket's buffer pushes back on the stack.
//! - Guest frames go into a bounded output buffer written without blocking; when the host
//!   side is slow, transmit chains stay in the ring until the socket is writable again.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::{
    notify_used, queue_err, read_config_bytes, BackendStatus, DeviceError, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// The largest Ethernet frame either side may send (passt's 65520-byte MTU plus the
/// Ethernet header fits).
pub const MAX_FRAME: usize = 65_550;
/// The smallest frame worth passing on: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Guest frames buffered for a slow backend before transmit chains are left waiting.
pub const MAX_TX_PENDING: usize = 256 * 1024;
/// Backend frames read ahead of the driver's receive buffers, in bytes.
pub const MAX_RX_QUEUED: usize = 1 << 20;
// The backend's bytes are read in chunks of up to this size; it holds a whole frame.
const RX_CHUNK: usize = 256 * 1024;
/// `virtio_net_hdr` with `VIRTIO_F_VERSION_1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const NET_HDR_LEN: usize = 12;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
// Length prefix of the stream framing.
const PREFIX: usize = 4;
// Chunk for copying guest frames through a host buffer.
const TX_CHUNK: usize = 4096;
/// `VIRTIO_NET_F_MAC`: the device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// `VIRTIO_NET_F_STATUS`: the config space has a link status.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
// virtio_net_config: mac[6], status (u16).
const CONFIG_LEN: usize = 8;
const CONFIG_STATUS: usize = 6;

// Never blocks, never raises SIGPIPE: the event loop must go on whatever the peer does.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

// Whether the driver has posted a receive buffer the device has not taken yet.
fn has_rx_buffer(active: &Active) -> bool {
    let queue = &active.queues[RX_QUEUE];
    queue
        .avail_idx(&active.mem, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

// Writes `data` at byte `offset` of the buffer the descriptors (address, length) make
// together; false if it does not fit or a part lies outside guest memory.
fn scatter(
    mem: &GuestMemoryMmap,
    buffers: &[(vm_memory::GuestAddress, usize)],
    mut offset: usize,
    mut data: &[u8],
) -> bool {
    for &(addr, len) in buffers {
        if data.is_empty() {
            return true;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(data.len());
        let Some(at) = addr.checked_add(offset as u64) else {
            return false;
        };
        if mem.write_slice(&data[..n], at).is_err() {
            return false;
        }
        data = &data[n..];
        offset = 0;
    }
    data.is_empty()
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queues: Vec<Queue>,
}

/// What the device has counted, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames passed from the guest to the backend.
    pub tx_frames: u64,
    /// Guest frames dropped: too short, too long, or unreadable.
    pub tx_dropped: u64,
    /// Frames passed from the backend to the guest.
    pub rx_frames: u64,
    /// Backend frames dropped: the driver's buffer was too small for them.
    pub rx_dropped: u64,
}

/// A virtio network card whose other end is a stream socket.
pub struct Net {
    // The socket, read from; `output` is a second descriptor of it, written to, so the
    // event loop can watch each direction on its own registration.
    stream: Option<UnixStream>,
    output: Option<UnixStream>,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    active: Option<Active>,
    // Bytes read from the backend and not yet taken as frames: `rx_buf[rx_start..rx_end]`.
    // Read in large chunks, not a frame at a time: two system calls per frame cost more
    // than the frame's copy.
    rx_buf: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    // Whole frames read from the backend, waiting for receive buffers, and their bytes.
    rx_frames: VecDeque<Vec<u8>>,
    rx_queued: usize,
    // Length-prefixed guest frames not yet accepted by the backend.
    tx_pending: VecDeque<u8>,
    counters: NetCounters,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("connected", &self.stream.is_some())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A card with address `mac` on a connected stream socket.
    pub fn new(stream: UnixStream, mac: [u8; 6]) -> io::Result<Self> {
        let output = stream.try_clone()?;
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[CONFIG_STATUS..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Ok(Self {
            stream: Some(stream),
            output: Some(output),
            mac,
            config,
            acked_features: 0,
            active: None,
            rx_buf: vec![0u8; RX_CHUNK],
            rx_start: 0,
            rx_end: 0,
            rx_frames: VecDeque::new(),
            rx_queued: 0,
            tx_pending: VecDeque::new(),
            counters: NetCounters::default(),
        })
    }

    /// Connects to the stack listening at `path`.
    pub fn connect(path: &std::path::Path, mac: [u8; 6]) -> io::Result<Self> {
        Self::new(UnixStream::connect(path)?, mac)
    }

    /// What has been passed and dropped so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Bytes of guest frames waiting for the backend.
    pub fn pending_output(&self) -> usize {
        self.tx_pending.len()
    }

    /// Bytes of backend frames waiting for receive buffers.
    pub fn pending_input(&self) -> usize {
        self.rx_queued
    }

    /// Whether the backend is still connected.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    // The backend is gone or broke the framing: stop using it, and tell the driver the
    // link is down so that it stops queueing frames it can never send.
    fn disconnect(&mut self, why: &str) {
        self.output = None;
        if self.stream.take().is_none() {
            return;
        }
        log::warn!("virtio-net: backend {why}; link down");
        self.tx_pending.clear();
        self.rx_start = 0;
        self.rx_end = 0;
        self.config[CONFIG_STATUS..].copy_from_slice(&0u16.to_le_bytes());
        if let Some(active) = self.active.as_ref() {
            let _ = active.interrupt.signal_config_change();
        }
    }

    fn flush_tx(&mut self) {
        let Some(fd) = self.output.as_ref().map(AsRawFd::as_raw_fd) else {
            self.tx_pending.clear();
            return;
        };
        while !self.tx_pending.is_empty() {
            let (front, _) = self.tx_pending.as_slices();
            match send(fd, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.disconnect(&format!("write failed: {e}"));
                    break;
                }
            }
        }
    }

    /// Sends guest frames until the ring is empty or the backend stops taking them (all
    /// of them, dropped, once the backend is gone). Returns whether any chain was used.
    fn process_tx(&mut self) -> Result<bool, DeviceError> {
        let mut used_any = false;
        loop {
            self.flush_tx();
            let (used, full) = self.take_tx_chains()?;
            used_any |= used;
            self.flush_tx();
            // Stopped for room and the backend took nothing: EPOLLOUT resumes it.
            if !full || self.tx_pending.len() >= MAX_TX_PENDING {
                return Ok(used_any);
            }
        }
    }

    /// Moves transmit chains into the output buffer while it has room. Returns whether
    /// any chain was used, and whether it stopped for want of room.
    fn take_tx_chains(&mut self) -> Result<(bool, bool), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok((false, false));
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX_QUEUE];
        let mut used_any = false;
        let mut chunk = [0u8; TX_CHUNK];
        loop {
            if self.tx_pending.len() >= MAX_TX_PENDING {
                return Ok((used_any, true));
            }
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(queue_err(TX_QUEUE)(e)),
            };
            let Some(chain) = chain else {
                return Ok((used_any, false));
            };
            let head = chain.head_index();
            // The header, then the frame, possibly across descriptors, copied straight
            // behind a length prefix filled in at the end; past the largest frame the
            // chain is dropped without reading further.
            let start = self.tx_pending.len();
            self.tx_pending.extend([0u8; PREFIX]);
            let mut frame_len = 0usize;
            let mut skip = NET_HDR_LEN;
            let mut ok = true;
            'descs: for desc in chain.readable() {
                let len = desc.len() as usize;
                let mut done = 0usize;
                while done < len {
                    let n = (len - done).min(TX_CHUNK);
                    let Some(addr) = desc.addr().checked_add(done as u64) else {
                        ok = false;
                        break 'descs;
                    };
                    if mem.read_slice(&mut chunk[..n], addr).is_err() {
                        ok = false;
                        break 'descs;
                    }
                    let header = skip.min(n);
                    skip -= header;
                    if frame_len + (n - header) > MAX_FRAME {
                        ok = false;
                        break 'descs;
                    }
                    self.tx_pending.extend(&chunk[header..n]);
                    frame_len += n - header;
                    done += n;
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                self.tx_pending.truncate(start);
                return Err(queue_err(TX_QUEUE)(e));
            }
            used_any = true;
            if !ok || skip > 0 || frame_len < MIN_FRAME || self.stream.is_none() {
                self.tx_pending.truncate(start);
                self.counters.tx_dropped += 1;
                continue;
            }
            for (i, b) in (frame_len as u32).to_be_bytes().into_iter().enumerate() {
                self.tx_pending[start + i] = b;
            }
            self.counters.tx_frames += 1;
        }
    }

    /// The next whole frame from the backend, reading more when none is buffered; `None`
    /// when none is there yet (or the backend is gone).
    fn read_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            let have = &self.rx_buf[self.rx_start..self.rx_end];
            if have.len() >= PREFIX {
                let len = u32::from_be_bytes([have[0], have[1], have[2], have[3]]) as usize;
                if len > MAX_FRAME {
                    self.disconnect(&format!("sent a {len}-byte frame (at most {MAX_FRAME})"));
                    return None;
                }
                if have.len() >= PREFIX + len {
                    let frame = have[PREFIX..PREFIX + len].to_vec();
                    self.rx_start += PREFIX + len;
                    if len == 0 {
                        // An empty frame: nothing to deliver, take the next.
                        continue;
                    }
                    return Some(frame);
                }
            }
            // Keep the partial frame, at the front, and read behind it: the buffer holds
            // the largest frame, so there is always room.
            self.rx_buf.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
            let fd = self.stream.as_ref().map(AsRawFd::as_raw_fd)?;
            match recv(fd, &mut self.rx_buf[self.rx_end..]) {
                Ok(0) => {
                    self.disconnect("closed the connection");
                    return None;
                }
                Ok(n) => self.rx_end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    self.disconnect(&format!("read failed: {e}"));
                    return None;
                }
            }
        }
    }

    /// Reads whole frames from the backend into the receive queue until the socket has no
    /// more or the queue is full.
    fn fill_rx(&mut self) {
        while self.rx_queued < MAX_RX_QUEUED {
            let Some(frame) = self.read_frame() else {
                return;
            };
            self.rx_queued += frame.len();
            self.rx_frames.push_back(frame);
        }
    }

    /// Delivers queued backend frames into receive buffers while both exist, reading more
    /// as the queue drains. Returns whether any chain was used.
    fn process_rx(&mut self) -> Result<bool, DeviceError> {
        let mut used_any = false;
        loop {
            self.fill_rx();
            let mut delivered = false;
            while !self.rx_frames.is_empty() && self.active.as_ref().is_some_and(has_rx_buffer) {
                let Some(active) = self.active.as_mut() else {
                    break;
                };
                let mem = &active.mem;
                let queue = &mut active.queues[RX_QUEUE];
                let chain = match queue.iter(mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => return Err(queue_err(RX_QUEUE)(e)),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let buffers: Vec<(vm_memory::GuestAddress, usize)> = chain
                    .writable()
                    .map(|d| (d.addr(), d.len() as usize))
                    .collect();
                let Some(frame) = self.rx_frames.pop_front() else {
                    break;
                };
                self.rx_queued -= frame.len();
                let mut hdr = [0u8; NET_HDR_LEN];
                hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
                let len = if scatter(mem, &buffers, 0, &hdr)
                    && scatter(mem, &buffers, NET_HDR_LEN, &frame)
                {
                    self.counters.rx_frames += 1;
                    (NET_HDR_LEN + frame.len()) as u32
                } else {
                    // Too small a buffer (or one outside memory): the frame is lost, as on a
                    // real card, and the buffer goes back empty.
                    self.counters.rx_dropped += 1;
                    0
                };
                queue
                    .add_used(mem, head, len)
                    .map_err(queue_err(RX_QUEUE))?;
                used_any = true;
                delivered = true;
            }
            // Room was made in the queue: the socket may hold more, and with an
            // edge-triggered registration nothing else would say so.
            if !delivered || self.stream.is_none() {
                return Ok(used_any);
            }
        }
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
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_NET_F_MAC)
            | (1u64 << VIRTIO_NET_F_STATUS)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR, which is not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        queues: Vec<Queue>,
    ) -> Result<(), DeviceError> {
        if queues.len() != 2 {
            return Err(DeviceError::QueueCount {
                expected: 2,
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
            RX_QUEUE => {
                if self.process_rx()? {
                    self.notify_guest(RX_QUEUE)?;
                }
                Ok(())
            }
            TX_QUEUE => {
                if self.process_tx()? {
                    self.notify_guest(TX_QUEUE)?;
                }
                Ok(())
            }
            _ => Err(DeviceError::NoSuchQueue(index)),
        }
    }

    fn reset(&mut self) {
        // A frame half read from the backend stays: the stream must stay in step. Whole
        // ones queued for the old driver go.
        self.rx_frames.clear();
        self.rx_queued = 0;
        self.active = None;
        self.acked_features = 0;
        self.tx_pending.clear();
    }

    fn backend_fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn backend_output_fd(&self) -> Option<RawFd> {
        self.output.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn process_backend(&mut self) -> Result<BackendStatus, DeviceError> {
        // Either direction may have become ready: resume output held back by a slow
        // backend, then take frames for the buffers the driver has posted.
        if self.process_tx()? {
            self.notify_guest(TX_QUEUE)?;
        }
        if self.process_rx()? {
            self.notify_guest(RX_QUEUE)?;
        }
        Ok(if self.stream.is_some() {
            BackendStatus::Open
        } else {
            BackendStatus::Closed
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
    const MAC: [u8; 6] = [0x02, 0x56, 0x45, 0x53, 0x00, 0x01];

    struct Fixture {
        mem: GuestMemoryMmap,
        net: Net,
        host: UnixStream,
        rx: DriverQueue,
        tx: DriverQueue,
        irq: EventFd,
    }

    fn fixture() -> Fixture {
        let mem = two_region_mem();
        let (host, guest_side) = UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut net = Net::new(guest_side, MAC).unwrap();
        let rx = DriverQueue::new(&mem, RXQ, QSIZE);
        let tx = DriverQueue::new(&mem, TXQ, QSIZE);
        let (interrupt, irq) = interrupt();
        net.activate(
            mem.clone(),
            interrupt,
            vec![rx.device_queue(&mem), tx.device_queue(&mem)],
        )
        .unwrap();
        Fixture {
            mem,
            net,
            host,
            rx,
            tx,
            irq,
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn framed(f: &[u8]) -> Vec<u8> {
        let mut v = (f.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(f);
        v
    }

    fn read_framed(host: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        host.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        host.read_exact(&mut f).unwrap();
        f
    }

    #[test]
    fn config_space_has_the_mac_and_link_up() {
        let fx = fixture();
        let mut cfg = [0u8; 8];
        fx.net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &MAC);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1);
        let f = fx.net.features();
        assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        // No offloads: the guest must hand over whole, checksummed frames.
        assert_eq!(
            f & 0xff_ffff & !(1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS),
            0
        );
    }

    #[test]
    fn transmitted_frames_reach_the_backend_length_prefixed() {
        let mut fx = fixture();
        let a = frame(60, 1);
        let b = frame(1514, 2);
        // Frame a: header and frame in one buffer. Frame b: the header alone, then the
        // frame in two parts, the second straddling the two memory regions.
        let mut one = vec![0u8; NET_HDR_LEN];
        one.extend_from_slice(&a);
        fx.mem.write_slice(&one, GuestAddress(DATA_BASE)).unwrap();
        fx.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        fx.mem
            .write_slice(&b[..100], GuestAddress(DATA_BASE + 0x2000))
            .unwrap();
        let straddle = REGION_SPLIT - 700;
        fx.mem
            .write_slice(&b[100..], GuestAddress(straddle))
            .unwrap();
        fx.tx.publish(
            &fx.mem,
            0,
            &[
                desc(DATA_BASE, one.len() as u32, 0, 0),
                desc(DATA_BASE + 0x1000, NET_HDR_LEN as u32, NEXT, 2),
                desc(DATA_BASE + 0x2000, 100, NEXT, 3),
                desc(straddle, (b.len() - 100) as u32, 0, 0),
            ],
            &[0, 1],
        );
        fx.net.process_queue(1).unwrap();
        assert_eq!(read_framed(&mut fx.host), a);
        assert_eq!(read_framed(&mut fx.host), b);
        assert_eq!(fx.tx.used_idx(&fx.mem), 2);
        assert_eq!(fx.irq.read().unwrap(), 1);
        assert_eq!(fx.net.counters().tx_frames, 2);
    }

    #[test]
    fn hostile_transmit_chains_are_dropped_and_returned() {
        let mut fx = fixture();
        fx.tx.publish(
            &fx.mem,
            0,
            &[
                // Shorter than the header.
                desc(DATA_BASE, 8, 0, 0),
                // A header and 10 bytes: no Ethernet header.
                desc(DATA_BASE, (NET_HDR_LEN + 10) as u32, 0, 0),
                // Claims 4 GiB from near the end of memory.
                desc(MEM_END - 16, u32::MAX, 0, 0),
                // Longer than any frame.
                desc(DATA_BASE, (NET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0),
                // Device-writable: not output.
                desc(DATA_BASE, 100, WRITE, 0),
            ],
            &[0, 1, 2, 3, 4],
        );
        fx.net.process_queue(1).unwrap();
        assert_eq!(fx.tx.used_idx(&fx.mem), 5);
        assert_eq!(fx.net.counters().tx_dropped, 5);
        fx.host.set_nonblocking(true).unwrap();
        assert!(fx.host.read(&mut [0u8; 1]).is_err(), "nothing was sent");
    }

    #[test]
    fn received_frames_wait_for_buffers_and_carry_a_header() {
        let mut fx = fixture();
        let a = frame(42, 3);
        let b = frame(1514, 4);
        fx.host.write_all(&framed(&a)).unwrap();
        fx.host.write_all(&framed(&b)).unwrap();
        // No buffer yet: nothing is taken.
        assert_eq!(fx.net.process_backend().unwrap(), BackendStatus::Open);
        assert_eq!(fx.rx.used_idx(&fx.mem), 0);
        // One buffer: the first frame, behind a header saying one buffer.
        fx.rx
            .publish(&fx.mem, 0, &[desc(DATA_BASE, 2048, WRITE, 0)], &[0]);
        fx.net.process_queue(0).unwrap();
        assert_eq!(fx.rx.used_idx(&fx.mem), 1);
        assert_eq!(fx.rx.used(&fx.mem, 0), (0, (NET_HDR_LEN + a.len()) as u32));
        let mut got = vec![0u8; NET_HDR_LEN + a.len()];
        fx.mem
            .read_slice(&mut got, GuestAddress(DATA_BASE))
            .unwrap();
        assert_eq!(&got[..10], &[0u8; 10]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
        assert_eq!(&got[NET_HDR_LEN..], &a[..]);
        assert_eq!(fx.irq.read().unwrap(), 1);
        // The second frame across a two-part buffer that straddles the regions.
        let straddle = REGION_SPLIT - 500;
        fx.rx.publish(
            &fx.mem,
            1,
            &[
                desc(DATA_BASE + 0x1000, 100, WRITE | NEXT, 2),
                desc(straddle, 2000, WRITE, 0),
            ],
            &[1],
        );
        fx.net.process_queue(0).unwrap();
        assert_eq!(fx.rx.used(&fx.mem, 1), (1, (NET_HDR_LEN + b.len()) as u32));
        let mut got = vec![0u8; 100];
        fx.mem
            .read_slice(&mut got, GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        let mut rest = vec![0u8; NET_HDR_LEN + b.len() - 100];
        fx.mem
            .read_slice(&mut rest, GuestAddress(straddle))
            .unwrap();
        got.extend(rest);
        assert_eq!(&got[NET_HDR_LEN..], &b[..]);
        assert_eq!(fx.net.counters().rx_frames, 2);
    }

    #[test]
    fn a_frame_too_big_for_the_buffer_is_dropped_not_the_stream() {
        let mut fx = fixture();
        fx.host.write_all(&framed(&frame(1000, 5))).unwrap();
        fx.host.write_all(&framed(&frame(20, 6))).unwrap();
        fx.rx.publish(
            &fx.mem,
            0,
            &[
                desc(DATA_BASE, 500, WRITE, 0),
                desc(DATA_BASE + 0x1000, 500, WRITE, 0),
            ],
            &[0, 1],
        );
        fx.net.process_queue(0).unwrap();
        assert_eq!(fx.rx.used(&fx.mem, 0), (0, 0));
        assert_eq!(fx.rx.used(&fx.mem, 1), (1, (NET_HDR_LEN + 20) as u32));
        let c = fx.net.counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
    }

    #[test]
    fn a_backend_that_breaks_the_framing_is_cut_off_and_the_link_goes_down() {
        let mut fx = fixture();
        fx.host
            .write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
            .unwrap();
        fx.rx
            .publish(&fx.mem, 0, &[desc(DATA_BASE, 2048, WRITE, 0)], &[0]);
        assert_eq!(fx.net.process_backend().unwrap(), BackendStatus::Closed);
        assert!(!fx.net.is_connected());
        assert_eq!(fx.rx.used_idx(&fx.mem), 0);
        let mut cfg = [0u8; 2];
        fx.net.read_config(6, &mut cfg);
        assert_eq!(cfg, [0, 0], "link down");
        // The driver hears of the config change.
        assert_eq!(fx.irq.read().unwrap(), 1);
        // Later frames from the guest are returned, dropped.
        fx.tx.publish(
            &fx.mem,
            0,
            &[desc(DATA_BASE, (NET_HDR_LEN + 60) as u32, 0, 0)],
            &[0],
        );
        fx.net.process_queue(1).unwrap();
        assert_eq!(fx.tx.used_idx(&fx.mem), 1);
        assert_eq!(fx.net.counters().tx_dropped, 1);
    }

    #[test]
    fn backend_eof_closes_and_a_partial_frame_is_never_delivered() {
        let mut fx = fixture();
        let f = framed(&frame(100, 7));
        fx.host.write_all(&f[..50]).unwrap();
        fx.host.shutdown(std::net::Shutdown::Write).unwrap();
        fx.rx
            .publish(&fx.mem, 0, &[desc(DATA_BASE, 2048, WRITE, 0)], &[0]);
        assert_eq!(fx.net.process_backend().unwrap(), BackendStatus::Closed);
        assert_eq!(fx.rx.used_idx(&fx.mem), 0);
    }

    #[test]
    fn frames_are_read_ahead_of_buffers_into_a_bounded_queue() {
        let mut fx = fixture();
        // More than the queue holds, from a writer that blocks when the socket is full.
        let frames: Vec<Vec<u8>> = (0..800).map(|i| frame(1514, i as u8)).collect();
        let total: usize = frames.iter().map(Vec::len).sum();
        assert!(total > MAX_RX_QUEUED);
        let mut host = fx.host.try_clone().unwrap();
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            for f in &sent {
                host.write_all(&framed(f)).unwrap();
            }
        });
        // No buffer posted: the device reads ahead until its queue is full, no further.
        for _ in 0..250 {
            fx.net.process_backend().unwrap();
            if fx.net.pending_input() >= MAX_RX_QUEUED {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..5 {
            fx.net.process_backend().unwrap();
        }
        let queued = fx.net.pending_input();
        assert!(
            (MAX_RX_QUEUED..MAX_RX_QUEUED + MAX_FRAME).contains(&queued),
            "{queued}"
        );
        assert_eq!(fx.rx.used_idx(&fx.mem), 0);
        // Buffers taken one at a time: every frame arrives, whole and in order, the queue
        // refilling from the socket as it drains.
        for (i, want) in frames.iter().enumerate() {
            let slot = (i % QSIZE as usize) as u16;
            let addr = DATA_BASE + u64::from(slot) * 0x1000;
            fx.rx
                .publish(&fx.mem, slot, &[desc(addr, 2048, WRITE, 0)], &[slot]);
            fx.net.process_queue(0).unwrap();
            if fx.rx.used_idx(&fx.mem) as usize != i + 1 {
                // The writer has not caught up yet.
                std::thread::sleep(Duration::from_millis(20));
                fx.net.process_backend().unwrap();
            }
            assert_eq!(fx.rx.used_idx(&fx.mem) as usize, i + 1, "frame {i}");
            let mut got = vec![0u8; want.len()];
            fx.mem
                .read_slice(&mut got, GuestAddress(addr + NET_HDR_LEN as u64))
                .unwrap();
            assert_eq!(&got, want, "frame {i}");
        }
        writer.join().unwrap();
        assert_eq!(fx.net.pending_input(), 0);
        assert_eq!(fx.net.counters().rx_frames, 800);
    }

    #[test]
    fn a_slow_backend_leaves_frames_in_the_ring_until_it_drains() {
        let mut fx = fixture();
        let f = frame(1514, 8);
        let mut buf = vec![0u8; NET_HDR_LEN];
        buf.extend_from_slice(&f);
        fx.mem.write_slice(&buf, GuestAddress(DATA_BASE)).unwrap();
        let mut published: u16 = 0;
        let mut sent = 0usize;
        // Keep the ring full of frames while the host reads nothing: the socket buffer,
        // then the device's own bounded buffer, fill, and chains stay in the ring.
        for _ in 0..1000 {
            let slot = published % QSIZE;
            fx.tx.publish(
                &fx.mem,
                slot,
                &[desc(DATA_BASE, buf.len() as u32, 0, 0)],
                &[slot],
            );
            published += 1;
            fx.net.process_queue(1).unwrap();
            let used = fx.tx.used_idx(&fx.mem);
            if published.wrapping_sub(used) >= QSIZE {
                break;
            }
            sent = usize::from(used);
        }
        let used = fx.tx.used_idx(&fx.mem);
        assert!(published.wrapping_sub(used) > 0, "the ring never filled");
        assert!(fx.net.pending_output() <= MAX_TX_PENDING + PREFIX + MAX_FRAME);
        // The host reads everything: process_backend (EPOLLOUT) takes the rest.
        fx.host.set_nonblocking(true).unwrap();
        let mut frames = 0usize;
        let mut stream = Vec::new();
        for _ in 0..10_000 {
            let mut chunk = vec![0u8; 65536];
            match fx.host.read(&mut chunk) {
                Ok(n) if n > 0 => stream.extend_from_slice(&chunk[..n]),
                _ => {
                    fx.net.process_backend().unwrap();
                    if fx.tx.used_idx(&fx.mem) == published && fx.net.pending_output() == 0 {
                        match fx.host.read(&mut chunk) {
                            Ok(n) if n > 0 => stream.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                }
            }
        }
        assert_eq!(fx.tx.used_idx(&fx.mem), published);
        let mut at = 0;
        while at < stream.len() {
            let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
            assert_eq!(&stream[at + 4..at + 4 + len], &f[..]);
            at += 4 + len;
            frames += 1;
        }
        assert_eq!(
            frames,
            usize::from(published),
            "every frame, whole and in order"
        );
        assert!(sent > 0);
    }
}
