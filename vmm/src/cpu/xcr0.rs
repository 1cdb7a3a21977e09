//! XCR0 at the first entry: the user state components the guest's CPUID offers, enabled.
//!
//! Real hardware resets XCR0 to x87 only and the guest kernel widens it with XSETBV. KVM
//! keeps CPUID leaf 0xD's EBX ("bytes for the components enabled in XCR0") in step with
//! XCR0, but a nested KVM (the nested-KVM harness's L1) was seen not to when the guest's
//! own XSETBV enabled AVX: Linux found 576 bytes where AVX needs 832, warned "XSAVE
//! consistency problem" and turned XSAVE off, so the guest ran without AVX. Setting XCR0
//! through `KVM_SET_XCRS` (after CPUID, which bounds what XCR0 may hold) resizes the leaf
//! to what Linux computes; the guest's XSETBV then writes the same value.

use kvm_bindings::{kvm_xcrs, CpuId};
use kvm_ioctls::VcpuFd;

use super::CpuError;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_XSAVE: u32 = 0xd;
const ECX_XSAVE: u32 = 1 << 26;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
/// AVX-512's opmask, ZMM_Hi256 and Hi16_ZMM: the architecture takes all three or none.
const AVX512: u64 = 0b111 << 5;

/// The XCR0 value for a guest with this CPUID, or `None` when it has no XSAVE.
///
/// Only the user components every kernel enables unasked: x87, SSE, AVX and AVX-512.
/// MPX is deprecated, PKRU depends on CR4.PKE, and AMX needs a permission the VMM does
/// not request; the guest enables what it wants of those itself.
pub fn initial_xcr0(cpuid: &CpuId) -> Option<u64> {
    let entries = cpuid.as_slice();
    let leaf1 = entries.iter().find(|e| e.function == LEAF_FEATURES)?;
    if leaf1.ecx & ECX_XSAVE == 0 {
        return None;
    }
    let d = entries
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)?;
    let offered = (u64::from(d.edx) << 32) | u64::from(d.eax);
    let mut xcr0 = offered & (X87 | SSE | AVX | AVX512);
    if xcr0 & (X87 | SSE) != X87 | SSE {
        return None;
    }
    if xcr0 & AVX512 != AVX512 || xcr0 & AVX == 0 {
        xcr0 &= !AVX512;
    }
    Some(xcr0)
}

/// Sets XCR0 per [`initial_xcr0`]; after `KVM_SET_CPUID2`, which KVM checks it against.
pub fn set_initial_xcr0(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuError> {
    let Some(value) = initial_xcr0(cpuid) else {
        return Ok(());
    };
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = value;
    vcpu.set_xcrs(&xcrs)
        .map_err(|e| CpuError::Kvm("KVM_SET_XCRS", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn cpuid(xsave: bool, leaf_d_eax: u32) -> CpuId {
        let leaf1 = kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            ecx: if xsave { ECX_XSAVE } else { 0 },
            ..Default::default()
        };
        let d = kvm_cpuid_entry2 {
            function: LEAF_XSAVE,
            index: 0,
            eax: leaf_d_eax,
            ..Default::default()
        };
        CpuId::from_entries(&[leaf1, d]).unwrap()
    }

    #[test]
    fn user_components_are_enabled() {
        assert_eq!(initial_xcr0(&cpuid(true, 0x7)), Some(0x7));
        assert_eq!(initial_xcr0(&cpuid(true, 0xe7)), Some(0xe7));
        // MPX and PKRU stay for the guest to enable.
        assert_eq!(initial_xcr0(&cpuid(true, 0x2ff)), Some(0xe7));
    }

    #[test]
    fn partial_avx512_and_no_xsave_are_refused() {
        assert_eq!(initial_xcr0(&cpuid(true, 0x67)), Some(0x7));
        assert_eq!(initial_xcr0(&cpuid(true, 0xe3)), Some(0x3));
        assert_eq!(initial_xcr0(&cpuid(false, 0x7)), None);
        assert_eq!(initial_xcr0(&cpuid(true, 0x1)), None);
    }
}
