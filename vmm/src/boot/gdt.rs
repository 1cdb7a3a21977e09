//! The boot GDT and the KVM segment descriptors derived from it.
//!
//! KVM takes segment registers in their hidden (cached) form, so each selector we
//! load must match a descriptor in the GDT we write: the guest reloads segments
//! from the table later and must get the same values.

use kvm_bindings::kvm_segment;

/// Code segment selector.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector (DS, ES, FS, GS, SS).
pub const DATA_SELECTOR: u16 = 0x10;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x18;

/// Access/flags for a 64-bit code segment (L=1, present, DPL 0, execute/read, accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Access/flags for a 32-bit code segment (D=1, G=1).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Access/flags for a flat data segment.
pub const DATA_FLAGS: u16 = 0xc093;
/// Access/flags for a busy 32/64-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// Builds a descriptor from its flags word (access byte + flags nibble), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The boot GDT: null, code (64- or 32-bit), data, TSS.
pub fn boot_gdt(long_mode: bool) -> [u64; 4] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Decodes a descriptor into KVM's segment form, for the given selector.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    // With G=1 the limit counts 4 KiB pages; KVM wants it in bytes.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if present == 1 { 0 } else { 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_linux_boot_gdt() {
        // Values Linux's own boot code and Firecracker use.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn decodes_code_segment() {
        let s = segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(
            (s.base, s.limit, s.l, s.db, s.g, s.present),
            (0, 0xffff_ffff, 1, 0, 1, 1)
        );
        assert_eq!((s.type_, s.s, s.dpl, s.unusable), (0xb, 1, 0, 0));
        let s = segment_from_gdt(gdt_entry(0x8b, 0x1234_5678, 0x67), TSS_SELECTOR);
        assert_eq!((s.base, s.limit, s.g), (0x1234_5678, 0x67, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
