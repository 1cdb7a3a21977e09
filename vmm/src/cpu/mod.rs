//! Per-vCPU architectural setup done once before the first entry: CPUID, MSRs,
//! XCR0, FPU and local APIC, as Linux expects to find them on real hardware.

pub mod cpuid;
pub mod fpu;
pub mod lapic;
pub mod msrs;
pub mod pmu;
pub mod xcr0;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than we set.
    #[error("KVM_SET_MSRS: only {set} of {total} boot MSRs accepted (first refused: {first_refused:#x})")]
    Msrs {
        /// How many were set.
        set: usize,
        /// How many we asked for.
        total: usize,
        /// The first MSR KVM did not take.
        first_refused: u32,
    },
}

/// Configures vCPU `id` of `count` from KVM's supported CPUID.
pub fn configure(vcpu: &VcpuFd, id: u8, count: u8, supported: &CpuId) -> Result<(), CpuError> {
    let cpuid = cpuid::for_vcpu(supported, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| CpuError::Kvm("KVM_SET_CPUID2", e))?;
    xcr0::set_initial_xcr0(vcpu, &cpuid)?;
    msrs::set_boot_msrs(vcpu)?;
    fpu::set_initial_fpu(vcpu)?;
    lapic::set_lint(vcpu)
}
