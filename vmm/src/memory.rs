//! Guest physical memory: the address-space layout, the RAM regions (vm-memory
//! `GuestMemoryMmap`, anonymous and lazily backed) and the e820 map describing them.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM)
//! 0x0000_0500  boot GDT, then IDT (0x520)
//! 0x0000_6000  PVH start_info, module list, memory map
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT (0xa000), PD (0xb000): identity map of the first 1 GiB
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA .. 1 MiB: reserved; ACPI tables at 0xe_0000
//! 0x0010_0000  kernel (bzImage protected-mode part or ELF segments), then RAM
//!   ...        initramfs at the top of RAM below 4 GiB (and below initrd_addr_max)
//! 0xc000_0000  MMIO hole: virtio-mmio windows from 0xd000_0000,
//!              IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000, KVM TSS/identity map
//! 0x1_0000_0000  RAM beyond 3 GiB continues here
//! ```

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Boot GDT address.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT address (an empty IDT: limit 0).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` address.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs) address.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map address.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux zero page (`boot_params`) address.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// Page directory (512 × 2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Kernel command line address.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line we place (bounded further by the kernel's `cmdline_size`).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the extended BIOS data area: end of usable low RAM.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the ACPI tables (RSDP first) are written.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// Space reserved for the ACPI tables (up to 1 MiB).
pub const ACPI_TABLES_SIZE: u64 = 0x2_0000;
/// Start of high memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB (RAM stops here).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (RAM resumes here).
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (Intel needs it for real-mode emulation).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (Intel, unrestricted-guest off).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// e820 entry types (Linux's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved, not for the OS.
    Reserved = 2,
}

/// One e820 map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: E820Kind,
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The anonymous mapping failed (usually out of address space or overcommit).
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Mmap {
        /// Requested size.
        mib: u32,
        /// vm-memory's reason.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The memfd for shared guest memory could not be made or sized.
    #[error("cannot make the guest memory's memfd: {0}")]
    Memfd(std::io::Error),
}

/// The RAM ranges for `memory_mib` of guest memory, split around the MMIO hole.
pub fn ram_ranges(memory_mib: u32) -> Vec<(GuestAddress, usize)> {
    let total = u64::from(memory_mib) << 20;
    let low = total.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if total > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), (total - low) as usize));
    }
    ranges
}

/// Maps guest RAM. The mapping is anonymous and `MAP_NORESERVE`, so only pages the
/// guest (or the loader) touches cost host memory.
pub fn create_guest_memory(memory_mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(memory_mib)).map_err(|source| MemoryError::Mmap {
        mib: memory_mib,
        source,
    })
}

/// Guest memory as above, but in one memfd mapped shared: what a vhost-user backend (a
/// separate process) needs to map the same pages. Sparse like the anonymous kind: pages
/// take memory only once touched.
pub fn create_shared_guest_memory(memory_mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(memory_mib);
    let total: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"vessel-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file =
        std::sync::Arc::new(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    file.set_len(total).map_err(MemoryError::Memfd)?;
    let mut offset = 0u64;
    let regions: Vec<_> = ranges
        .iter()
        .map(|&(start, len)| {
            let r = (
                start,
                len,
                Some(vm_memory::FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len as u64;
            r
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|source| MemoryError::Mmap {
        mib: memory_mib,
        source,
    })
}

/// The end of RAM below 4 GiB (exclusive).
pub fn low_ram_end(memory_mib: u32) -> u64 {
    (u64::from(memory_mib) << 20).min(MMIO_HOLE_START)
}

/// The e820 map the guest is given: low RAM up to the EBDA, the BIOS area reserved
/// (it holds the ACPI tables), RAM from 1 MiB to the hole, RAM above 4 GiB.
pub fn e820_map(memory_mib: u32) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, len) in ram_ranges(memory_mib) {
        let start = start.0.max(HIMEM_START);
        let end = if start >= MMIO_HOLE_END {
            start + len as u64
        } else {
            low_ram_end(memory_mib)
        };
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_ranges(128), vec![(GuestAddress(0), 128 << 20)]);
        let map = e820_map(128);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 128 << 20);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let ranges = ram_ranges(4096);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(ranges[1], (GuestAddress(MMIO_HOLE_END), 1 << 30));
        let map = e820_map(4096);
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size), (MMIO_HOLE_END, 1 << 30));
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }

    #[test]
    fn memory_is_mapped_and_the_hole_is_not() {
        let mem = create_guest_memory(3200).unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(1u8, GuestAddress(VIRTIO_MMIO_START)).is_err());
        assert!(mem.write_obj(1u8, GuestAddress(MMIO_HOLE_END)).is_ok());
        assert_eq!(mem.num_regions(), 2);
    }
}
