//! No performance-monitoring unit: the guest is told so, and its probe of the counters
//! faults instead of touching MSRs that KVM does not back.
//!
//! On AMD, Linux assumes the four legacy K7 counters (MSRs 0xc0010000–0xc0010007) on every
//! family-6-or-later CPU, whatever CPUID says, and probes them at boot by writing a
//! counter and reading it back. Where the host KVM has no vPMU (a nested KVM, or
//! `enable_pmu=0`), KVM drops those writes and logs `kvm: Unhandled WRMSR(0xc0010007)` on
//! the host for every boot. An MSR filter that denies the PMU ranges makes the guest's
//! `rdmsr`/`wrmsr` raise #GP instead (KVM injects it itself; no exit reaches us), which is
//! the answer Linux expects from a hypervisor: "PMU not available due to virtualization,
//! using software events only". The CPUID side clears what advertises more counters.

use kvm_ioctls::{Cap, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

/// CPUID 0x80000001 ECX: PerfCtrExtCore, PerfCtrExtNB, PerfCtrExtLLC (AMD).
pub const AMD_EXT_PERFCTR_BITS: u32 = (1 << 23) | (1 << 24) | (1 << 28);
/// CPUID leaf of AMD's performance-monitoring v2 (counter count and features).
pub const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

/// MSR ranges of the PMUs a guest may probe: (first MSR, count).
pub const PMU_MSR_RANGES: [(u32, u32); 4] = [
    // AMD K7 legacy: PERF_CTL0..3 and PERF_CTR0..3.
    (0xc001_0000, 8),
    // AMD family 15h+ core counters (PerfCtrExtCore): CTL/CTR pairs 0..5.
    (0xc001_0200, 12),
    // Intel architectural counters: IA32_PMC0..7 and IA32_PERFEVTSEL0..7.
    (0xc1, 8),
    (0x186, 8),
];

/// Installs the filter that denies every MSR in [`PMU_MSR_RANGES`]; all other MSRs keep
/// KVM's own handling. Returns false (doing nothing) where KVM lacks MSR filtering.
pub fn deny_pmu_msrs(vm: &VmFd) -> Result<bool, kvm_ioctls::Error> {
    if !vm.check_extension(Cap::X86MsrFilter) {
        return Ok(false);
    }
    // A clear bit denies: one all-zero bitmap serves every range (up to 16 MSRs).
    let bitmap = [0u8; 2];
    let ranges: Vec<MsrFilterRange<'_>> = PMU_MSR_RANGES
        .iter()
        .map(|&(base, count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count: count,
            bitmap: &bitmap,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)?;
    Ok(true)
}

/// Whether `msr` is one the filter denies.
pub fn is_pmu_msr(msr: u32) -> bool {
    PMU_MSR_RANGES
        .iter()
        .any(|&(base, count)| (base..base + count).contains(&msr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_probed_counters_and_fit_the_bitmap() {
        // The counter Linux's AMD probe writes, and the first and last of each family.
        for msr in [
            0xc001_0007,
            0xc001_0000,
            0xc001_0200,
            0xc001_020b,
            0xc1,
            0x186,
        ] {
            assert!(is_pmu_msr(msr), "{msr:#x}");
        }
        for msr in [0xc001_0008, 0xc000_0080, 0x10, 0x1a0, 0xc001_0114] {
            assert!(!is_pmu_msr(msr), "{msr:#x}");
        }
        assert!(PMU_MSR_RANGES.iter().all(|&(_, n)| n <= 16));
    }

    #[test]
    fn filter_installs_on_real_kvm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIP: /dev/kvm not available");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        match deny_pmu_msrs(&vm) {
            Ok(true) => {}
            Ok(false) => eprintln!("SKIP: this KVM has no MSR filtering"),
            Err(e) => panic!("KVM_X86_SET_MSR_FILTER: {e}"),
        }
    }
}
