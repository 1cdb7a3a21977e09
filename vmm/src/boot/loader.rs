//! Loads the kernel, command line and initramfs into guest memory and writes the
//! boot information the entry protocol needs (zero page or PVH start info).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{
    load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::zero_page::{ZeroPage, ZeroPageError};
use super::{pvh, BootInfo, BootPlan};
use crate::config::{EntryMode, KernelFormat};
use crate::memory::{self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};

/// Offset of the 64-bit entry point from the start of the bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Errors loading the boot images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// linux-loader rejected the kernel.
    #[error("loading kernel {path}: {source}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// linux-loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The command line is malformed or too long.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error("initramfs of {size} bytes does not fit below {limit:#x} above the kernel end {kernel_end:#x}")]
    InitrdTooBig {
        /// Its size.
        size: u64,
        /// Highest address allowed.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// A raw image does not fit in guest memory at its load address.
    #[error("raw image of {size} bytes does not fit at {addr:#x}")]
    RawTooBig {
        /// Its size.
        size: u64,
        /// Requested load address.
        addr: u64,
    },
    /// Writing boot structures to guest memory failed.
    #[error("writing boot structures: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The zero page could not be written.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// The PVH start info could not be written.
    #[error("writing PVH start info: {0}")]
    Pvh(#[from] linux_loader::configurator::Error),
}

/// What to load.
pub struct LoadRequest<'a> {
    /// The kernel file.
    pub kernel: &'a Path,
    /// How to interpret it.
    pub format: &'a KernelFormat,
    /// Optional initramfs.
    pub initrd: Option<&'a Path>,
    /// Command line.
    pub cmdline: &'a str,
    /// Guest RAM size.
    pub memory_mib: u32,
    /// RSDP address to pass to the kernel.
    pub rsdp: Option<u64>,
}

fn open(path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads everything and returns where and how to enter the guest.
pub fn load(mem: &GuestMemoryMmap, req: &LoadRequest<'_>) -> Result<BootPlan, LoadError> {
    let mut kernel = open(req.kernel)?;
    if let KernelFormat::Raw {
        load_address,
        entry,
        mode,
    } = *req.format
    {
        let size = kernel.seek(SeekFrom::End(0)).map_err(io_err(req.kernel))?;
        kernel.rewind().map_err(io_err(req.kernel))?;
        mem.read_exact_volatile_from(GuestAddress(load_address), &mut kernel, size as usize)
            .map_err(|_| LoadError::RawTooBig {
                size,
                addr: load_address,
            })?;
        return Ok(BootPlan {
            entry,
            mode,
            info: BootInfo::None,
        });
    }

    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    kernel.rewind().map_err(io_err(req.kernel))?;
    let highmem = Some(GuestAddress(HIMEM_START));
    let loaded: KernelLoaderResult = if is_elf {
        Elf::load(mem, None, &mut kernel, highmem)
    } else {
        BzImage::load(mem, None, &mut kernel, highmem)
    }
    .map_err(|source| LoadError::Kernel {
        path: req.kernel.to_owned(),
        source,
    })?;

    let cmdline_len = write_cmdline(mem, req.cmdline, loaded.setup_header.as_ref())?;
    let initrd_limit = loaded
        .setup_header
        .as_ref()
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&max| max != 0)
        .map_or(u64::MAX, |max| max + 1);
    let initrd = match req.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            loaded.kernel_end,
            initrd_limit.min(memory::low_ram_end(req.memory_mib)),
        )?),
        None => None,
    };
    let e820 = memory::e820_map(req.memory_mib);

    if let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap {
        let info = pvh::write_start_info(mem, CMDLINE_START, initrd, &e820, req.rsdp)?;
        return Ok(BootPlan {
            entry: entry.0,
            mode: EntryMode::Protected,
            info: BootInfo::Pvh(info),
        });
    }
    let zero_page = ZeroPage {
        setup_header: loaded.setup_header,
        cmdline: (CMDLINE_START, cmdline_len),
        initrd,
        e820: &e820,
        rsdp: req.rsdp,
    }
    .write(mem)?;
    let entry = if loaded.setup_header.is_some() {
        loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
    } else {
        loaded.kernel_load.0
    };
    Ok(BootPlan {
        entry,
        mode: EntryMode::Long,
        info: BootInfo::ZeroPage(zero_page),
    })
}

fn write_cmdline(
    mem: &GuestMemoryMmap,
    text: &str,
    hdr: Option<&linux_loader::loader::bootparam::setup_header>,
) -> Result<usize, LoadError> {
    // The kernel states how long a command line it accepts (boot protocol >= 2.06).
    let capacity = hdr
        .map(|h| h.cmdline_size as usize + 1)
        .filter(|&n| n > 1)
        .unwrap_or(CMDLINE_MAX_SIZE)
        .min(CMDLINE_MAX_SIZE);
    let mut cmdline = Cmdline::new(capacity).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text.trim())
            .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    Ok(text.trim().len())
}

/// Places the initramfs page-aligned as high as allowed, as boot loaders do, so the
/// kernel's decompression area below it stays free.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), LoadError> {
    let mut file = open(path)?;
    let size = file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    file.rewind().map_err(io_err(path))?;
    let too_big = LoadError::InitrdTooBig {
        size,
        limit,
        kernel_end,
    };
    let addr = match limit.checked_sub(size) {
        Some(a) => a & !(PAGE_SIZE - 1),
        None => return Err(too_big),
    };
    if addr < kernel_end {
        return Err(too_big);
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let mem = create_guest_memory(32).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        let (addr, size) = load_initrd(&mem, f.path(), 0x20_0000, 32 << 20).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr, (32 << 20) - 8192);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 7);
        assert!(matches!(
            load_initrd(&mem, f.path(), (32 << 20) - 4096, 32 << 20),
            Err(LoadError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn garbage_kernel_is_an_error_not_a_panic() {
        let mem = create_guest_memory(32).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF not really").unwrap();
        let req = LoadRequest {
            kernel: f.path(),
            format: &KernelFormat::Linux,
            initrd: None,
            cmdline: "console=ttyS0",
            memory_mib: 32,
            rsdp: None,
        };
        assert!(matches!(load(&mem, &req), Err(LoadError::Kernel { .. })));
        let mut g = tempfile::NamedTempFile::new().unwrap();
        g.write_all(&[0u8; 100]).unwrap();
        let req = LoadRequest {
            kernel: g.path(),
            ..req
        };
        assert!(matches!(load(&mem, &req), Err(LoadError::Kernel { .. })));
    }
}
