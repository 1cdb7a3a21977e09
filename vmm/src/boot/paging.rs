//! Identity page tables for 64-bit entry: the first 1 GiB mapped with 2 MiB pages,
//! which covers the kernel, the zero page, the command line and the boot stack.
//! Linux replaces them early in boot.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{PDPT_START, PD_START, PML4_START};

/// Bytes of guest-physical memory identity-mapped by the boot page tables.
pub const IDENTITY_MAPPED_BYTES: u64 = 1 << 30;

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes PML4 → PDPT → PD and returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_START | PRESENT_WRITABLE, GuestAddress(PML4_START))?;
    mem.write_obj(PD_START | PRESENT_WRITABLE, GuestAddress(PDPT_START))?;
    let mut pd = [0u8; 4096];
    for (i, entry) in pd.chunks_exact_mut(8).enumerate() {
        let value = ((i as u64) << 21) | PRESENT_WRITABLE | PAGE_SIZE_2M;
        entry.copy_from_slice(&value.to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD_START))?;
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_first_gigabyte() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_START);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            0xa003
        );
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PDPT_START)).unwrap(),
            0xb003
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PD_START)).unwrap(), 0x83);
        let last = mem
            .read_obj::<u64>(GuestAddress(PD_START + 511 * 8))
            .unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }
}
