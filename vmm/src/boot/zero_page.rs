//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol:
//! the setup header from the bzImage, command line, initramfs, e820 map and the
//! ACPI RSDP address. See Documentation/arch/x86/boot.rst.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{E820Entry, ZERO_PAGE_START};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// `boot_params` as plain bytes for vm-memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);

// SAFETY: boot_params is a repr(C) bindgen struct of integers and arrays of them,
// with no padding-dependent invariants; any byte pattern is a valid value.
unsafe impl ByteValued for BootParams {}

/// What goes into the zero page.
pub struct ZeroPage<'a> {
    /// The bzImage's setup header (None for an ELF kernel).
    pub setup_header: Option<setup_header>,
    /// Command line address and length (without the NUL).
    pub cmdline: (u64, usize),
    /// Initramfs address and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// ACPI RSDP address, if tables were written.
    pub rsdp: Option<u64>,
}

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries do not fit in the zero page")]
    TooManyE820Entries(usize),
    /// An address the 32-bit header fields cannot hold.
    #[error("{0} at {1:#x} is above 4 GiB")]
    Above4G(&'static str, u64),
    /// Writing guest memory failed.
    #[error("writing the zero page: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

impl ZeroPage<'_> {
    /// Writes the zero page at [`ZERO_PAGE_START`] and returns its address.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<u64, ZeroPageError> {
        let mut params = BootParams::default();
        let p = &mut params.0;
        if let Some(hdr) = self.setup_header {
            p.hdr = hdr;
        }
        p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
        p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        p.hdr.header = KERNEL_HDR_MAGIC;
        if p.hdr.kernel_alignment == 0 {
            p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
        p.hdr.cmd_line_ptr = to_u32("command line", self.cmdline.0)?;
        p.hdr.cmdline_size = self.cmdline.1 as u32;
        if let Some((addr, size)) = self.initrd {
            p.hdr.ramdisk_image = to_u32("initramfs", addr)?;
            p.hdr.ramdisk_size = to_u32("initramfs size", size)?;
        }
        if let Some(rsdp) = self.rsdp {
            p.acpi_rsdp_addr = rsdp;
        }
        if self.e820.len() > p.e820_table.len() {
            return Err(ZeroPageError::TooManyE820Entries(self.e820.len()));
        }
        for (slot, e) in p.e820_table.iter_mut().zip(self.e820) {
            *slot = boot_e820_entry {
                addr: e.addr,
                size: e.size,
                r#type: e.kind as u32,
            };
        }
        p.e820_entries = self.e820.len() as u8;
        mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
        Ok(ZERO_PAGE_START)
    }
}

fn to_u32(what: &'static str, v: u64) -> Result<u32, ZeroPageError> {
    u32::try_from(v).map_err(|_| ZeroPageError::Above4G(what, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, e820_map};

    #[test]
    fn fields_land_at_their_abi_offsets() {
        let mem = create_guest_memory(64).unwrap();
        let e820 = e820_map(64);
        let zp = ZeroPage {
            setup_header: None,
            cmdline: (0x20000, 12),
            initrd: Some((0x300_0000, 0x1000)),
            e820: &e820,
            rsdp: Some(0xe0000),
        };
        let base = zp.write(&mem).unwrap();
        let at = |off: u64| GuestAddress(base + off);
        assert_eq!(mem.read_obj::<u64>(at(0x070)).unwrap(), 0xe0000);
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap(), e820.len() as u8);
        assert_eq!(mem.read_obj::<u16>(at(0x1fe)).unwrap(), 0xaa55);
        assert_eq!(mem.read_obj::<u32>(at(0x202)).unwrap(), 0x5372_6448);
        assert_eq!(mem.read_obj::<u32>(at(0x218)).unwrap(), 0x300_0000);
        assert_eq!(mem.read_obj::<u32>(at(0x21c)).unwrap(), 0x1000);
        assert_eq!(mem.read_obj::<u32>(at(0x228)).unwrap(), 0x20000);
        assert_eq!(mem.read_obj::<u32>(at(0x238)).unwrap(), 12);
        // Second e820 entry: 20 bytes each from 0x2d0.
        assert_eq!(mem.read_obj::<u64>(at(0x2d0 + 20)).unwrap(), e820[1].addr);
    }

    #[test]
    fn refuses_initrd_above_4g() {
        let mem = create_guest_memory(64).unwrap();
        let zp = ZeroPage {
            setup_header: None,
            cmdline: (0x20000, 0),
            initrd: Some((1 << 32, 1)),
            e820: &[],
            rsdp: None,
        };
        assert!(matches!(zp.write(&mem), Err(ZeroPageError::Above4G(..))));
    }
}
