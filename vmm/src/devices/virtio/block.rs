//! virtio-blk on a raw disk image file.
//!
//! One request queue. Requests are parsed from the descriptor chain by hand rather
//! than through a byte-stream reader, so that the framing rules are explicit: the
//! first descriptor is the 16-byte header (device-readable), the last is the status
//! byte (device-writable), and everything between is data whose direction must match
//! the request type and whose total length must be a multiple of 512. Data moves
//! between the file and guest memory without a bounce buffer (vm-memory's volatile
//! I/O), one descriptor at a time, each checked against guest memory by vm-memory.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::{
    notify_used, read_config_bytes, DeviceError, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Bytes per sector, as virtio-blk counts them.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the serial returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = 20;

/// Feature bit: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Most data segments per request we advertise: without it Linux sends one
/// segment per request. Half the queue, so a request fits even without indirect
/// descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 / 2 - 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: the device supports cache flush.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request type: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device serial.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also: malformed request, out of range, read-only).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const HEADER_LEN: u32 = 16;
// virtio_blk_config: capacity (u64) at 0 and seg_max (u32) at 12 are filled; the
// rest reads as 0 because we offer none of the features that give them meaning.
const CONFIG_LEN: usize = 60;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image size could not be read.
    #[error("cannot size disk image: {0}")]
    Size(std::io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: VirtioInterrupt,
    queue: Queue,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    read_only: bool,
    nsectors: u64,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("read_only", &self.read_only)
            .field("nsectors", &self.nsectors)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// What a parsed request did: its status and how many bytes it wrote into the
/// driver's data buffers.
struct Outcome {
    status: u8,
    written: u32,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Self { status, written: 0 }
    }
}

impl Block {
    /// Opens the image at `path` (read-write unless `read_only`). `id` is the serial
    /// returned by GET_ID, truncated to 20 bytes.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_file(file, read_only, id)
    }

    /// Wraps an already open image.
    pub fn from_file(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        // Seeking to the end sizes block devices too, where metadata says 0.
        let len = (&file).seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        // A trailing partial sector is not addressable.
        let nsectors = len / SECTOR_SIZE;
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&nsectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self {
            file,
            read_only,
            nsectors,
            id: serial,
            config,
            acked_features: 0,
            active: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.nsectors
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn process(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let disk = Disk {
            file: &self.file,
            read_only: self.read_only,
            nsectors: self.nsectors,
            id: &self.id,
        };
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            let chain = match active.queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(source) => return Err(DeviceError::Queue { index: 0, source }),
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let used_len = disk.execute(mem, chain);
            active
                .queue
                .add_used(mem, head, used_len)
                .map_err(|source| DeviceError::Queue { index: 0, source })?;
            used_any = true;
        }
        if used_any {
            notify_used(&mut active.queue, 0, mem, &active.interrupt)?;
        }
        Ok(())
    }
}

struct Disk<'a> {
    file: &'a File,
    read_only: bool,
    nsectors: u64,
    id: &'a [u8; ID_BYTES],
}

impl Disk<'_> {
    /// Runs one request and returns the used length: data bytes written to the
    /// driver plus the status byte, or 0 when there is no usable status descriptor.
    fn execute(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        // The chain iterator stops at the queue size (loops), at a next index outside
        // the table, or at an unreadable descriptor; in each case the last descriptor
        // it yielded still has NEXT set, which marks the chain as truncated.
        let descs: Vec<Descriptor> = chain.collect();
        let Some((status_desc, rest)) = descs.split_last() else {
            return 0;
        };
        if status_desc.has_next() || !status_desc.is_write_only() || status_desc.len() == 0 {
            return 0;
        }
        let Some(status_addr) = status_desc
            .addr()
            .checked_add(u64::from(status_desc.len()) - 1)
        else {
            return 0;
        };
        let outcome = self.run(mem, rest);
        if mem.write_obj(outcome.status, status_addr).is_err() {
            return 0;
        }
        outcome.written.saturating_add(1)
    }

    fn run(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Outcome {
        let Some((header, data)) = descs.split_first() else {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        };
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        if mem.read_slice(&mut raw, header.addr()).is_err() {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        match req_type {
            VIRTIO_BLK_T_IN => self.transfer(mem, data, sector, true),
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Outcome::status(VIRTIO_BLK_S_IOERR);
                }
                self.transfer(mem, data, sector, false)
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    return Outcome::status(VIRTIO_BLK_S_OK);
                }
                match self.file.sync_data() {
                    Ok(()) => Outcome::status(VIRTIO_BLK_S_OK),
                    Err(e) => {
                        log::warn!("virtio-blk: flush failed: {e}");
                        Outcome::status(VIRTIO_BLK_S_IOERR)
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, data),
            _ => Outcome::status(VIRTIO_BLK_S_UNSUPP),
        }
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        sector: u64,
        to_guest: bool,
    ) -> Outcome {
        // Reads need device-writable buffers, writes device-readable ones.
        if data.iter().any(|d| d.is_write_only() != to_guest) {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        // At most 2^16 descriptors of at most 2^32 bytes: no u64 overflow.
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        if !total.is_multiple_of(SECTOR_SIZE) {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let in_range = sector
            .checked_add(total / SECTOR_SIZE)
            .is_some_and(|end| end <= self.nsectors);
        if !in_range {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let mut offset = sector * SECTOR_SIZE;
        let mut written: u32 = 0;
        for d in data {
            let len = d.len() as usize;
            if len == 0 {
                continue;
            }
            let mut file = self.file;
            let result = file.seek(SeekFrom::Start(offset)).and_then(|_| {
                if to_guest {
                    mem.read_exact_volatile_from(d.addr(), &mut file, len)
                } else {
                    mem.write_all_volatile_to(d.addr(), &mut file, len)
                }
                .map_err(std::io::Error::other)
            });
            if let Err(e) = result {
                log::warn!("virtio-blk: I/O at byte {offset} failed: {e}");
                return Outcome {
                    status: VIRTIO_BLK_S_IOERR,
                    written,
                };
            }
            offset += u64::from(d.len());
            if to_guest {
                written = written.saturating_add(d.len());
            }
        }
        Outcome {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn get_id(&self, mem: &GuestMemoryMmap, data: &[Descriptor]) -> Outcome {
        if data.iter().any(|d| !d.is_write_only()) {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let mut done = 0usize;
        for d in data {
            if done == ID_BYTES {
                break;
            }
            let n = (d.len() as usize).min(ID_BYTES - done);
            if mem.write_slice(&self.id[done..done + n], d.addr()).is_err() {
                return Outcome {
                    status: VIRTIO_BLK_S_IOERR,
                    written: done as u32,
                };
            }
            done += n;
        }
        Outcome {
            status: VIRTIO_BLK_S_OK,
            written: done as u32,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Capacity is read-only and no writable field (writeback) is offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: VirtioInterrupt,
        mut queues: Vec<Queue>,
    ) -> Result<(), DeviceError> {
        if queues.len() != 1 {
            return Err(DeviceError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoSuchQueue(index));
        }
        self.process()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use std::io::{Read, Write};
    use vm_memory::GuestAddress;

    const QSIZE: u16 = 16;
    const HDR: u64 = DATA_BASE;
    const BUF: u64 = DATA_BASE + 0x1000;
    const STATUS: u64 = DATA_BASE + 0x8000;
    const DISK_SECTORS: u64 = 8;

    fn pattern(i: usize) -> u8 {
        (i % 251) as u8
    }

    fn disk_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..(DISK_SECTORS * SECTOR_SIZE) as usize)
            .map(pattern)
            .collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        f
    }

    struct Fixture {
        mem: GuestMemoryMmap,
        file: tempfile::NamedTempFile,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                mem: two_region_mem(),
                file: disk_file(),
            }
        }

        fn block(&self, read_only: bool) -> (Block, EventFd) {
            let mut blk = Block::open(self.file.path(), read_only, "vessel-disk-0").unwrap();
            let vq = DriverQueue::new(&self.mem, QUEUE_BASE, QSIZE);
            let (irq, evt) = interrupt();
            blk.activate(self.mem.clone(), irq, vec![vq.device_queue(&self.mem)])
                .unwrap();
            (blk, evt)
        }

        fn vq(&self) -> DriverQueue {
            DriverQueue::layout(QUEUE_BASE, QSIZE)
        }

        fn header(&self, req_type: u32, sector: u64) {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&req_type.to_le_bytes());
            raw[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
            // Poison the status byte so a test sees whether the device wrote it.
            self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        }

        fn disk_bytes(&self) -> Vec<u8> {
            let mut v = Vec::new();
            std::fs::File::open(self.file.path())
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        }

        fn status(&self) -> u8 {
            byte_at(&self.mem, STATUS)
        }
    }

    use vmm_sys_util::eventfd::EventFd;

    /// Submits one chain (descriptors from index 0) and returns the used entry.
    fn submit(
        fx: &Fixture,
        blk: &mut Block,
        descs: &[virtio_queue::desc::RawDescriptor],
    ) -> (u32, u32) {
        let vq = fx.vq();
        let before = vq.used_idx(&fx.mem);
        vq.publish(&fx.mem, 0, descs, &[0]);
        blk.process_queue(0).unwrap();
        assert_eq!(
            vq.used_idx(&fx.mem),
            before.wrapping_add(1),
            "one chain must be used"
        );
        vq.used(&fx.mem, before)
    }

    #[test]
    fn read_through_virtio_queue_mock() {
        // The same request built with virtio-queue's own mock driver.
        let mem = two_region_mem();
        let file = disk_file();
        let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(QUEUE_BASE), QSIZE);
        let mut raw = [0u8; 16];
        raw[8..].copy_from_slice(&3u64.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
        vq.add_desc_chains(
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut blk = Block::open(file.path(), true, "mock").unwrap();
        let (irq, _evt) = interrupt();
        blk.activate(mem.clone(), irq, vec![vq.create_queue::<Queue>().unwrap()])
            .unwrap();
        blk.process_queue(0).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
        let elem = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!((elem.id(), elem.len()), (0, 513));
        assert_eq!(byte_at(&mem, STATUS), VIRTIO_BLK_S_OK);
        assert_eq!(byte_at(&mem, BUF + 5), pattern(3 * 512 + 5));
    }

    #[test]
    fn features_and_config() {
        let fx = Fixture::new();
        let (blk, _) = fx.block(true);
        assert_eq!(blk.device_type(), TYPE_BLOCK);
        let f = blk.features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        // Partial and out-of-range config reads.
        let mut b = [0xffu8; 4];
        blk.read_config(4, &mut b);
        assert_eq!(b, [0; 4]);
        assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        blk.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        blk.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        let (rw, _) = fx.block(false);
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn read_request_fills_buffer_and_reports_length() {
        let fx = Fixture::new();
        let (mut blk, evt) = fx.block(false);
        fx.header(VIRTIO_BLK_T_IN, 2);
        let (id, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 512, NEXT | WRITE, 2),
                desc(BUF + 512, 512, NEXT | WRITE, 3),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!((id, len), (0, 1024 + 1));
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 1024];
        fx.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        let want: Vec<u8> = (1024..2048).map(pattern).collect();
        assert_eq!(got, want);
        assert_eq!(evt.read().unwrap(), 1, "used-ring interrupt");
    }

    #[test]
    fn write_request_reaches_the_file_then_flush() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        fx.mem.write_slice(&[0x5a; 512], GuestAddress(BUF)).unwrap();
        fx.header(VIRTIO_BLK_T_OUT, 7);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 1);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        let disk = fx.disk_bytes();
        assert!(disk[7 * 512..].iter().all(|&b| b == 0x5a));
        assert_eq!(disk[7 * 512 - 1], pattern(7 * 512 - 1));

        fx.header(VIRTIO_BLK_T_FLUSH, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        );
        assert_eq!(len, 1);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn get_id_returns_serial() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(true);
        fx.header(VIRTIO_BLK_T_GET_ID, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 20, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 21);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 20];
        fx.mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert_eq!(&id[..13], b"vessel-disk-0");
        assert!(id[13..].iter().all(|&b| b == 0));

        // A short buffer gets a prefix; the used length says how much.
        fx.header(VIRTIO_BLK_T_GET_ID, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF + 0x100, 6, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 7);
        let mut id = [0u8; 6];
        fx.mem
            .read_slice(&mut id, GuestAddress(BUF + 0x100))
            .unwrap();
        assert_eq!(&id, b"vessel");
    }

    #[test]
    fn zero_length_read_succeeds_without_data() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        fx.header(VIRTIO_BLK_T_IN, DISK_SECTORS);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 0, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 1);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn buffers_crossing_memory_regions_work() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let straddle = REGION_SPLIT - 256;
        fx.header(VIRTIO_BLK_T_IN, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(straddle, 1024, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 1025);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 1024];
        fx.mem.read_slice(&mut got, GuestAddress(straddle)).unwrap();
        assert_eq!(got, (0..1024).map(pattern).collect::<Vec<_>>());

        // And a write from a straddling buffer.
        fx.mem
            .write_slice(&[0x11; 512], GuestAddress(straddle))
            .unwrap();
        fx.header(VIRTIO_BLK_T_OUT, 1);
        submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(straddle, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        assert!(fx.disk_bytes()[512..1024].iter().all(|&b| b == 0x11));
    }

    #[test]
    fn out_of_range_sectors_are_io_errors() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        for sector in [DISK_SECTORS, DISK_SECTORS - 1 + 1, u64::MAX, u64::MAX / 512] {
            fx.header(VIRTIO_BLK_T_IN, sector);
            let (_, len) = submit(
                &fx,
                &mut blk,
                &[
                    desc(HDR, 16, NEXT, 1),
                    desc(BUF, 512, NEXT | WRITE, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
            );
            assert_eq!(len, 1, "sector {sector}");
            assert_eq!(fx.status(), VIRTIO_BLK_S_IOERR, "sector {sector}");
        }
        // The last sector itself is fine; one more byte past it is not.
        fx.header(VIRTIO_BLK_T_OUT, DISK_SECTORS - 1);
        submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 1024, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(fx.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            fx.disk_bytes().len() as u64,
            DISK_SECTORS * 512,
            "file must not grow"
        );
    }

    #[test]
    fn writes_to_a_read_only_disk_fail() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(true);
        let before = fx.disk_bytes();
        fx.mem.write_slice(&[0xee; 512], GuestAddress(BUF)).unwrap();
        fx.header(VIRTIO_BLK_T_OUT, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 512, NEXT, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 1);
        assert_eq!(fx.status(), VIRTIO_BLK_S_IOERR);
        assert_eq!(fx.disk_bytes(), before);
        // The file was opened read-only, too: the OS would refuse the write anyway.
        assert!(blk.file.metadata().is_ok());
    }

    #[test]
    fn malformed_requests_get_ioerr_or_unsupp() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let cases: Vec<(&str, u32, Vec<virtio_queue::desc::RawDescriptor>, u8)> = vec![
            (
                "length not a multiple of 512",
                VIRTIO_BLK_T_IN,
                vec![
                    desc(HDR, 16, NEXT, 1),
                    desc(BUF, 100, NEXT | WRITE, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "read into a device-readable buffer",
                VIRTIO_BLK_T_IN,
                vec![
                    desc(HDR, 16, NEXT, 1),
                    desc(BUF, 512, NEXT, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "write from a device-writable buffer",
                VIRTIO_BLK_T_OUT,
                vec![
                    desc(HDR, 16, NEXT, 1),
                    desc(BUF, 512, NEXT | WRITE, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "header too short",
                VIRTIO_BLK_T_IN,
                vec![desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "header device-writable",
                VIRTIO_BLK_T_IN,
                vec![desc(HDR, 16, NEXT | WRITE, 1), desc(STATUS, 1, WRITE, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "only a status descriptor",
                VIRTIO_BLK_T_IN,
                vec![desc(STATUS, 1, WRITE, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "data outside guest memory",
                VIRTIO_BLK_T_IN,
                vec![
                    desc(HDR, 16, NEXT, 1),
                    desc(MEM_END - 512, 1024, NEXT | WRITE, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "header outside guest memory",
                VIRTIO_BLK_T_IN,
                vec![desc(u64::MAX - 8, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
                VIRTIO_BLK_S_IOERR,
            ),
            (
                "unknown request type",
                0x1234,
                vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
                VIRTIO_BLK_S_UNSUPP,
            ),
            (
                "get-id into a readable buffer",
                VIRTIO_BLK_T_GET_ID,
                vec![
                    desc(HDR, 16, NEXT, 1),
                    desc(BUF, 20, NEXT, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                VIRTIO_BLK_S_IOERR,
            ),
        ];
        for (name, req_type, descs, want) in cases {
            fx.header(req_type, 0);
            let (_, len) = submit(&fx, &mut blk, &descs);
            assert_eq!(fx.status(), want, "{name}");
            assert!(len <= 1, "{name}: used length {len}");
        }
    }

    #[test]
    fn chains_without_a_usable_status_descriptor_are_returned_empty() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let cases: Vec<(&str, Vec<virtio_queue::desc::RawDescriptor>)> = vec![
            (
                "status not writable",
                vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, 0, 0)],
            ),
            (
                "status zero length",
                vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 0, WRITE, 0)],
            ),
            (
                "status outside memory",
                vec![desc(HDR, 16, NEXT, 1), desc(MEM_END, 1, WRITE, 0)],
            ),
            // 0 -> 1 -> 0 -> ...: the iterator gives up at the queue size.
            (
                "descriptor loop",
                vec![desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE | NEXT, 0)],
            ),
            (
                "next index beyond the table",
                vec![desc(HDR, 16, NEXT, QSIZE + 3)],
            ),
        ];
        for (name, descs) in cases {
            fx.header(VIRTIO_BLK_T_IN, 0);
            let (_, len) = submit(&fx, &mut blk, &descs);
            assert_eq!(len, 0, "{name}");
            assert_eq!(fx.status(), 0xaa, "{name}: status must be untouched");
        }
        // The device still works afterwards.
        fx.header(VIRTIO_BLK_T_IN, 0);
        let (_, len) = submit(
            &fx,
            &mut blk,
            &[
                desc(HDR, 16, NEXT, 1),
                desc(BUF, 512, NEXT | WRITE, 2),
                desc(STATUS, 1, WRITE, 0),
            ],
        );
        assert_eq!(len, 513);
    }

    #[test]
    fn indirect_descriptor_tables_are_followed() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let table = DATA_BASE + 0x4000;
        for (i, d) in [
            desc(HDR, 16, NEXT, 1),
            desc(BUF, 512, NEXT | WRITE, 2),
            desc(STATUS, 1, WRITE, 0),
        ]
        .iter()
        .enumerate()
        {
            fx.mem
                .write_obj(*d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        fx.header(VIRTIO_BLK_T_IN, 1);
        let (_, len) = submit(&fx, &mut blk, &[desc(table, 48, INDIRECT, 0)]);
        assert_eq!(len, 513);
        assert_eq!(fx.status(), VIRTIO_BLK_S_OK);
        assert_eq!(byte_at(&fx.mem, BUF), pattern(512));

        // An indirect table whose length is not a whole number of descriptors,
        // and one nested inside another, are refused without touching memory.
        fx.header(VIRTIO_BLK_T_IN, 1);
        let (_, len) = submit(&fx, &mut blk, &[desc(table, 47, INDIRECT, 0)]);
        assert_eq!(len, 0);
        fx.mem
            .write_obj(desc(table, 48, INDIRECT, 0), GuestAddress(table + 0x100))
            .unwrap();
        let (_, len) = submit(&fx, &mut blk, &[desc(table + 0x100, 16, INDIRECT, 0)]);
        assert_eq!(len, 0);
        assert_eq!(fx.status(), 0xaa);
    }

    #[test]
    fn bogus_avail_index_is_a_device_error() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let vq = fx.vq();
        // More entries published than the queue holds.
        vq.set_avail_idx(&fx.mem, QSIZE + 1);
        assert!(matches!(
            blk.process_queue(0),
            Err(DeviceError::Queue { index: 0, .. })
        ));
        // A head index outside the table cannot be returned either.
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        let vq = fx.vq();
        vq.publish(&fx.mem, 0, &[], &[QSIZE + 1]);
        assert!(blk.process_queue(0).is_err());
        assert!(matches!(
            blk.process_queue(1),
            Err(DeviceError::NoSuchQueue(1))
        ));
    }

    #[test]
    fn reset_stops_the_device() {
        let fx = Fixture::new();
        let (mut blk, _) = fx.block(false);
        blk.reset();
        fx.header(VIRTIO_BLK_T_IN, 0);
        let vq = fx.vq();
        vq.publish(
            &fx.mem,
            0,
            &[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
            &[0],
        );
        blk.process_queue(0).unwrap();
        assert_eq!(vq.used_idx(&fx.mem), 0);
        assert_eq!(fx.status(), 0xaa);
        assert!(matches!(
            blk.activate(fx.mem.clone(), interrupt().0, vec![]),
            Err(DeviceError::QueueCount {
                expected: 1,
                got: 0
            })
        ));
    }
}
