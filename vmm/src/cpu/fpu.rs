//! The FPU/SSE state at reset, as `fninit` leaves it.

use kvm_bindings::kvm_fpu;
use kvm_ioctls::VcpuFd;

use super::CpuError;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
pub const FCW_INIT: u16 = 0x37f;
/// MXCSR at reset: all SIMD exceptions masked.
pub const MXCSR_INIT: u32 = 0x1f80;

/// Sets the reset FPU state.
pub fn set_initial_fpu(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: FCW_INIT,
        mxcsr: MXCSR_INIT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| CpuError::Kvm("KVM_SET_FPU", e))
}
