//! Fuzzing harness for the virtio request paths, shared by the cargo-fuzz targets
//! (`vmm/fuzz`) and the seeded hostile-input test that runs in `cargo test`.
//!
//! The input bytes become a driver: they fill guest memory (two adjacent regions,
//! so buffers can straddle them), choose a queue size, publish an avail ring, and
//! provide descriptor tables. A light fix-up pass biases descriptor addresses,
//! lengths and next indices towards values near guest memory, and writes plausible
//! block request headers, so that random bytes reach the deep paths rather than
//! failing the first bounds check. Then the device processes the queues and the
//! harness checks what must hold whatever the driver does: no panic (no
//! out-of-bounds access: every guest access goes through vm-memory's checked API),
//! the disk never grows, a read-only disk never changes, console pending input
//! stays bounded. (Used-ring counts are not checked: a hostile request may
//! legitimately overwrite the rings themselves.)

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::{Block, SECTOR_SIZE};
use super::console::{Console, ConsoleBackend, MAX_PENDING};
use super::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use super::net::{Net, MAX_FRAME, MAX_RX_QUEUED, MAX_TX_PENDING};
use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const REGION: u64 = 0x8000;
const MEM_SIZE: u64 = 2 * REGION;
const DISK_SECTORS: u64 = 16;

/// Reads bytes off the front of the fuzz input, yielding zeroes once it runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

struct Layout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

fn memory() -> GuestMemoryMmap {
    // The two regions are fixed and valid, so this cannot fail.
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .expect("fixed guest memory layout")
}

fn interrupt() -> VirtioInterrupt {
    VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))
}

// Biases a raw address towards guest memory: mostly inside, sometimes just past
// the end or at the region seam, occasionally the raw (usually wild) value.
fn fix_addr(raw: u64, sel: u8) -> u64 {
    match sel % 8 {
        0 => raw,
        1 => MEM_SIZE - (raw % 64),
        2 => REGION - (raw % 0x800),
        _ => raw % MEM_SIZE,
    }
}

fn fix_len(raw: u32, sel: u8) -> u32 {
    match sel % 8 {
        0 => raw,
        1 => 0,
        2 => 16,
        3 => 1,
        _ => (raw % 4) * 512 + u32::from(sel % 2),
    }
}

/// Lays out one queue from the input and fills its descriptor table and avail ring.
fn build_queue(
    mem: &GuestMemoryMmap,
    input: &mut Input<'_>,
    base: u64,
    block_headers: bool,
) -> Layout {
    let size = 1u16 << (input.u8() % 9); // 1..=256
    let size64 = u64::from(size);
    let desc = base;
    let avail = desc + 16 * size64;
    let used = (avail + 6 + 2 * size64 + 3) & !3;
    let ring_end = used + 6 + 8 * size64;
    // Zero the rings so stale bytes from the memory fill do not matter.
    let _ = mem.write_slice(&vec![0u8; (ring_end - base) as usize], GuestAddress(base));
    for i in 0..size64 {
        let sel = input.u8();
        let addr = fix_addr(input.u64(), sel);
        let len = fix_len(input.u32(), sel >> 3);
        let flags = if sel & 0x80 != 0 {
            input.u16()
        } else {
            u16::from(sel) & 0x7
        };
        let next = input.u16() % (size + 2);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(desc + 16 * i));
        if block_headers && i % 2 == 0 && addr.checked_add(16).is_some_and(|e| e <= MEM_SIZE) {
            let req_type = [0u32, 1, 4, 8, input.u32()][usize::from(input.u8() % 5)];
            let sector = input.u64() % (DISK_SECTORS + 2);
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&req_type.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            // Headers may land on the rings; that is part of the game.
            let _ = mem.write_slice(&hdr, GuestAddress(addr));
        }
    }
    // Mostly a sane number of entries; sometimes a hostile index.
    let published = match input.u8() % 8 {
        0 => input.u16(),
        _ => u16::from(input.u8()) % (size + 1),
    };
    for i in 0..published.min(size) {
        let head = input.u16() % (size + 1);
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(i)));
    }
    let _ = mem.write_obj(published, GuestAddress(avail + 2));
    Layout {
        size,
        desc,
        avail,
        used,
    }
}

fn device_queue(l: &Layout) -> Queue {
    let mut q = Queue::new(l.size).expect("power-of-two size");
    q.set_size(l.size);
    q.set_desc_table_address(Some(l.desc as u32), Some((l.desc >> 32) as u32));
    q.set_avail_ring_address(Some(l.avail as u32), Some((l.avail >> 32) as u32));
    q.set_used_ring_address(Some(l.used as u32), Some((l.used >> 32) as u32));
    q.set_ready(true);
    q
}

fn fill_memory(mem: &GuestMemoryMmap, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut page = vec![0u8; MEM_SIZE as usize];
    for (i, b) in page.iter_mut().enumerate() {
        *b = data[i % data.len()];
    }
    let _ = mem.write_slice(&page, GuestAddress(0));
}

fn disk() -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the returned fd is owned by
    // the File below and nothing else.
    let fd = unsafe { libc::memfd_create(c"vessel-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid file descriptor that nothing else owns.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let content: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i % 253) as u8)
        .collect();
    f.write_all(&content).expect("write memfd");
    f
}

/// Feeds one fuzz input through virtio-blk's request path.
pub fn fuzz_block(data: &[u8]) {
    let mut input = Input { data };
    let read_only = input.u8() & 1 == 1;
    let mem = memory();
    fill_memory(&mem, data);
    let layout = build_queue(&mem, &mut input, 0x100, true);
    let file = disk();
    let mut snapshot = Vec::new();
    let mut f = file.try_clone().expect("dup memfd");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut snapshot).expect("read memfd");

    let mut blk = Block::from_file(file, read_only, "fuzz").expect("block on memfd");
    if blk
        .activate(mem.clone(), interrupt(), vec![device_queue(&layout)])
        .is_err()
    {
        return;
    }
    let rounds = 1 + input.u8() % 3;
    for _ in 0..rounds {
        let _ = blk.process_queue(0);
    }
    let len = f.metadata().expect("stat memfd").len();
    assert_eq!(len, DISK_SECTORS * SECTOR_SIZE, "disk size changed");
    if read_only {
        let mut now = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut now).expect("read memfd");
        assert!(now == snapshot, "read-only disk was modified");
    }
}

/// Feeds one fuzz input through virtio-console's transmit and receive paths, and (for a
/// multiport device, chosen by the input) its control queues.
pub fn fuzz_console(data: &[u8]) {
    let mut input = Input { data };
    let mem = memory();
    fill_memory(&mem, data);
    let multiport = input.u8() & 1 == 1;
    let rx = build_queue(&mem, &mut input, 0x100, false);
    let tx = build_queue(&mem, &mut input, 0x4000, false);
    let ctrl = if multiport {
        vec![
            build_queue(&mem, &mut input, 0x6000, false),
            build_queue(&mem, &mut input, 0x7000, false),
        ]
    } else {
        Vec::new()
    };
    let (mut host, guest) = UnixStream::pair().expect("socketpair");
    host.set_nonblocking(true).expect("nonblocking");
    let host_input_len = usize::from(input.u8()) * 37;
    let host_input: Vec<u8> = input
        .data
        .iter()
        .copied()
        .cycle()
        .take(host_input_len)
        .collect();
    let _ = host.write_all(&host_input);
    if input.u8() & 1 == 1 {
        let _ = host.shutdown(std::net::Shutdown::Write);
    }
    let backend = ConsoleBackend::from_stream(guest).expect("backend");
    let mut console = if multiport {
        Console::with_port(backend, "vessel.agent")
    } else {
        Console::new(backend)
    };
    // Backend input before the driver is up must wait.
    let _ = console.process_backend();
    let mut queues = vec![device_queue(&rx), device_queue(&tx)];
    queues.extend(ctrl.iter().map(device_queue));
    if console.activate(mem.clone(), interrupt(), queues).is_err() {
        return;
    }
    for _ in 0..(1 + input.u8() % 3) {
        if multiport {
            let _ = console.process_queue(3);
            let _ = console.process_queue(2);
        }
        let _ = console.process_queue(1);
        let _ = console.process_backend();
        let _ = console.process_queue(0);
        assert!(console.pending_input() <= MAX_PENDING);
    }
    // Drain what the guest sent so a full socket buffer never blocks a later run.
    let mut sink = [0u8; 4096];
    while matches!(host.read(&mut sink), Ok(n) if n > 0) {}
    console.reset();
}

/// Feeds one fuzz input through virtio-net's transmit and receive paths: guest memory and
/// both queues from the input, and a backend stream of length-prefixed frames whose
/// lengths are mostly plausible and sometimes hostile.
pub fn fuzz_net(data: &[u8]) {
    let mut input = Input { data };
    let mem = memory();
    fill_memory(&mem, data);
    let rx = build_queue(&mem, &mut input, 0x100, false);
    let tx = build_queue(&mem, &mut input, 0x4000, false);
    let (mut host, guest) = UnixStream::pair().expect("socketpair");
    host.set_nonblocking(true).expect("nonblocking");
    let mut stream = Vec::new();
    for _ in 0..(input.u8() % 8) {
        let len = match input.u8() % 8 {
            0 => input.u32(),
            1 => (MAX_FRAME as u32).wrapping_add(u32::from(input.u8() % 3)),
            _ => u32::from(input.u16()) % 2048,
        };
        stream.extend_from_slice(&len.to_be_bytes());
        let body = (len as usize).min(4096);
        stream.extend(input.data.iter().copied().cycle().take(body));
    }
    let _ = host.write_all(&stream);
    if input.u8() & 1 == 1 {
        let _ = host.shutdown(std::net::Shutdown::Write);
    }
    let mac = [0x02, 0, 0, 0, 0, input.u8()];
    let mut net = Net::new(guest, mac).expect("net on a socketpair");
    // Backend frames before the driver is up must wait.
    let _ = net.process_backend();
    if net
        .activate(
            mem.clone(),
            interrupt(),
            vec![device_queue(&rx), device_queue(&tx)],
        )
        .is_err()
    {
        return;
    }
    for _ in 0..(1 + input.u8() % 3) {
        let _ = net.process_queue(1);
        let _ = net.process_backend();
        let _ = net.process_queue(0);
        assert!(net.pending_output() <= MAX_TX_PENDING + 4 + MAX_FRAME);
        assert!(net.pending_input() < MAX_RX_QUEUED + MAX_FRAME);
    }
    // What the guest sent is whole frames, each within bounds.
    let mut out = Vec::new();
    let mut sink = [0u8; 4096];
    while let Ok(n) = host.read(&mut sink) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&sink[..n]);
    }
    let mut at = 0;
    while at + 4 <= out.len() {
        let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        assert!((14..=MAX_FRAME).contains(&len), "frame of {len} bytes sent");
        at += 4 + len;
    }
    net.reset();
}

// The transport's registers, so that random offsets mostly hit real ones.
const MMIO_REGS: [u64; 24] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100,
];

fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Feeds one fuzz input through the virtio-mmio transport (over a virtio-blk
/// device): a sequence of register accesses, whole driver handshakes and queue
/// notifications, with guest memory (and so the rings) filled from the input.
pub fn fuzz_mmio(data: &[u8]) {
    let mut input = Input { data };
    let mem = memory();
    fill_memory(&mem, data);
    let blk = Block::from_file(disk(), input.u8() & 1 == 1, "fuzz").expect("block on memfd");
    let mut t = MmioTransport::new(mem.clone(), Box::new(blk)).expect("transport");
    let offered = t.device_features();
    for _ in 0..256 {
        if input.data.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0 | 1 => {
                let offset = MMIO_REGS[usize::from(input.u8()) % MMIO_REGS.len()];
                let value = match input.u8() % 4 {
                    0 => input.u32(),
                    1 => u32::from(input.u8() % 16), // status bits, selectors, indices
                    2 => (input.u32() % MEM_SIZE as u32) & !0xf, // plausible ring address
                    _ => 1 << (input.u8() % 32),
                };
                write32(&mut t, offset, value);
            }
            2 => {
                let offset = MMIO_REGS[usize::from(input.u8()) % MMIO_REGS.len()];
                let mut buf = [0u8; 4];
                t.read(offset, &mut buf);
            }
            3 => {
                // A well-behaved driver bringing the device up, with queue 0 at a
                // layout chosen by the input.
                let features = u64::from(input.u32()) & offered | (1 << VIRTIO_F_VERSION_1);
                write32(&mut t, 0x070, 0);
                write32(&mut t, 0x070, 1);
                write32(&mut t, 0x070, 3);
                write32(&mut t, 0x024, 0);
                write32(&mut t, 0x020, features as u32);
                write32(&mut t, 0x024, 1);
                write32(&mut t, 0x020, (features >> 32) as u32);
                write32(&mut t, 0x070, 0xb);
                let size = 1u32 << (input.u8() % 9);
                let base = u64::from(input.u16()) * 16 % MEM_SIZE;
                let avail = base + 16 * u64::from(size);
                let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
                write32(&mut t, 0x030, 0);
                write32(&mut t, 0x038, size);
                write32(&mut t, 0x080, base as u32);
                write32(&mut t, 0x084, 0);
                write32(&mut t, 0x090, avail as u32);
                write32(&mut t, 0x094, 0);
                write32(&mut t, 0x0a0, used as u32);
                write32(&mut t, 0x0a4, 0);
                write32(&mut t, 0x044, 1);
                write32(&mut t, 0x070, 0xf);
            }
            4 => t.handle_queue_event(usize::from(input.u8() % 3)),
            5 => {
                // Guest memory changes under the device's feet (rings, descriptors).
                let addr = u64::from(input.u16()) % MEM_SIZE;
                let _ = mem.write_obj(input.u64(), GuestAddress(addr));
            }
            _ => {
                // Any offset, any width, read or write.
                let offset = u64::from(input.u16()) % 0x1100;
                let width = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
                let bytes = input.u64().to_le_bytes();
                if input.u8() & 1 == 0 {
                    t.write(offset, &bytes[..width]);
                } else {
                    let mut buf = [0u8; 8];
                    t.read(offset, &mut buf[..width]);
                }
            }
        }
        let status = t.status();
        if status & STATUS_FEATURES_OK != 0 {
            assert_eq!(
                t.driver_features() & !offered,
                0,
                "unoffered feature accepted"
            );
            assert_ne!(t.driver_features() & (1 << VIRTIO_F_VERSION_1), 0);
        }
        if t.is_activated() {
            assert_ne!(status & STATUS_DRIVER_OK, 0, "running without DRIVER_OK");
        }
        if status & STATUS_DRIVER_OK != 0 && !t.is_activated() {
            assert_ne!(
                status & STATUS_DEVICE_NEEDS_RESET,
                0,
                "DRIVER_OK but not running"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn inputs(seed: u64, count: usize) -> Vec<Vec<u8>> {
        let mut s = seed;
        (0..count)
            .map(|_| {
                let len = (xorshift(&mut s) % 3000) as usize;
                (0..len).map(|_| xorshift(&mut s) as u8).collect()
            })
            .collect()
    }

    #[test]
    fn hostile_block_requests_never_panic_or_escape() {
        for data in inputs(0x5eed_b10c, 1500) {
            fuzz_block(&data);
        }
        fuzz_block(&[]);
        fuzz_block(&[0xff; 4096]);
    }

    #[test]
    fn hostile_mmio_drivers_never_break_the_handshake_rules() {
        for data in inputs(0x3e6c_9ed0, 1000) {
            fuzz_mmio(&data);
        }
        fuzz_mmio(&[]);
        fuzz_mmio(&[0x03; 4096]);
    }

    #[test]
    fn hostile_network_traffic_never_panics_or_sends_a_bad_frame() {
        for data in inputs(0x0e7_f4a3e, 1000) {
            fuzz_net(&data);
        }
        fuzz_net(&[]);
        fuzz_net(&[0xff; 4096]);
    }

    #[test]
    fn hostile_console_traffic_never_panics_or_grows_unbounded() {
        for data in inputs(0xc0de_c0de, 1000) {
            fuzz_console(&data);
        }
        fuzz_console(&[]);
        fuzz_console(&[0xff; 4096]);
    }
}
