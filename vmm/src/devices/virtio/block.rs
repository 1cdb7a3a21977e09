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
    read_config_bytes, DeviceError, VirtioDevice, VirtioInterrupt, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// Bytes per sector, as virtio-blk counts them.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the serial returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = 20;

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
// virtio_blk_config: capacity (u64) is the only field we fill; the rest reads as 0
// because we offer none of the features that give them meaning.
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
        let len = file.metadata().map_err(BlockError::Size)?.len();
        // A trailing partial sector is not addressable.
        let nsectors = len / SECTOR_SIZE;
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&nsectors.to_le_bytes());
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
        if used_any
            && active
                .queue
                .needs_notification(mem)
                .map_err(|source| DeviceError::Queue { index: 0, source })?
        {
            active
                .interrupt
                .signal_used_queue()
                .map_err(DeviceError::Interrupt)?;
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
            | (1u64 << VIRTIO_BLK_F_FLUSH);
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
