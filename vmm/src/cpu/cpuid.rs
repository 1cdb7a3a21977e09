//! Per-vCPU CPUID, derived from what KVM supports on this host, normalized the way
//! Firecracker does: the hypervisor bit set; the APIC ID and the topology leaves of
//! both vendors (Intel 0x4/0xb/0x1f, AMD 0x80000001/0x80000008/0x8000001e) made to
//! describe `count` single-threaded cores in one package; and every leaf or bit that
//! advertises a performance-monitoring unit cleared (Intel 0xa, AMD's PerfCtrExt bits and
//! PerfMonV2 leaf), since the VM has none (see [`super::pmu`]).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// CPUID 0x80000001 ECX CmpLegacy: more than one core per package (AMD).
const ECX_CMP_LEGACY: u32 = 1 << 1;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const CLFLUSH_LINE_QWORDS: u32 = 8;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of x2APIC ID needed to number `count` cores.
fn core_id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Adjusts one entry for vCPU `id` of `count`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let id32 = u32::from(id);
    let count32 = u32::from(count.max(1));
    match entry.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in 8-byte units.
            entry.ebx = (id32 << 24) | (count32 << 16) | (CLFLUSH_LINE_QWORDS << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX: [31:26] cores per package - 1, [25:14] threads sharing this cache - 1.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count32 - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count32 - 1) << 26);
        }
        LEAF_AMD_EXT_FEATURES => {
            entry.ecx &= !super::pmu::AMD_EXT_PERFCTR_BITS;
            if count > 1 {
                entry.ecx |= ECX_CMP_LEGACY;
            } else {
                entry.ecx &= !ECX_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX: [15:12] APIC ID bits for the core number, [7:0] cores per package - 1.
            entry.ecx = (entry.ecx & !0xf0ff) | (core_id_bits(count) << 12) | (count32 - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            // EAX: extended APIC ID. EBX: [15:8] threads per core - 1, [7:0] core ID.
            // ECX: [10:8] nodes per package - 1, [7:0] node ID: one node.
            entry.eax = id32;
            entry.ebx = id32 & 0xff;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_PMU | super::pmu::LEAF_AMD_PERFMON_V2 => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Subleaf 0: SMT level, one thread per core. Subleaf 1: core level.
            let (eax, ebx, level) = match entry.index {
                0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                1 => (core_id_bits(count), count32, TOPOLOGY_LEVEL_CORE),
                _ => (0, 0, 0),
            };
            entry.eax = eax;
            entry.ebx = ebx;
            entry.ecx = (level << 8) | (entry.index & 0xff);
            entry.edx = id32;
        }
        _ => {}
    }
}

/// The CPUID table for vCPU `id` of `count`.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_has_apic_id_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let mut e = entry(1, 0);
        e.edx = EDX_HTT;
        patch_entry(&mut e, 0, 1);
        assert_eq!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        let mut end = entry(0xb, 2);
        for e in [&mut smt, &mut core, &mut end] {
            patch_entry(e, 2, 3);
        }
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
        assert_eq!((end.ebx, end.ecx, end.edx), (0, 2, 2));
    }

    #[test]
    fn amd_pmu_bits_and_perfmon_leaf_are_cleared() {
        let mut ext = entry(0x8000_0001, 0);
        ext.ecx = u32::MAX;
        patch_entry(&mut ext, 0, 1);
        assert_eq!(ext.ecx & super::super::pmu::AMD_EXT_PERFCTR_BITS, 0);
        assert_eq!(ext.ecx & ECX_CMP_LEGACY, 0);
        let mut ext = entry(0x8000_0001, 0);
        patch_entry(&mut ext, 0, 2);
        assert_ne!(ext.ecx & ECX_CMP_LEGACY, 0);
        let mut v2 = entry(0x8000_0022, 0);
        v2.eax = 0xf;
        v2.ebx = 0x6;
        patch_entry(&mut v2, 0, 1);
        assert_eq!((v2.eax, v2.ebx, v2.ecx, v2.edx), (0, 0, 0, 0));
    }

    #[test]
    fn amd_topology_leaves_describe_cores() {
        let mut sizes = entry(0x8000_0008, 0);
        sizes.ecx = 0xffff_ffff;
        patch_entry(&mut sizes, 1, 3);
        assert_eq!(sizes.ecx & 0xff, 2, "cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 2, "core id bits");
        assert_eq!(sizes.ecx & 0xffff_0000, 0xffff_0000, "other bits kept");
        let mut ext = entry(0x8000_001e, 0);
        ext.ebx = 0x0100;
        ext.ecx = 0x0103;
        patch_entry(&mut ext, 2, 3);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
    }

    #[test]
    fn real_supported_cpuid_is_patched() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIP: /dev/kvm not available");
            return;
        };
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let c = for_vcpu(&supported, 1, 2);
        let leaf1 = c.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
    }
}
