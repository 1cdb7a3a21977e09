//! Initial register state of the boot vCPU for each entry mode: segments from the
//! boot GDT, control registers and EFER, and the general registers the entry
//! protocol defines.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment_from_gdt, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::{paging, BootInfo, BootPlan};
use crate::config::EntryMode;
use crate::memory::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// Errors setting the boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables failed.
    #[error("writing boot tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A KVM register ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

/// Writes the boot tables the mode needs and sets the boot vCPU's registers.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    plan: &BootPlan,
) -> Result<(), RegsError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    match plan.mode {
        EntryMode::Real => {
            // Flat real mode at segment 0 (KVM's reset state is CS=F000 base FFFF0000).
            for seg in [
                &mut sregs.cs,
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                seg.base = 0;
                seg.selector = 0;
            }
        }
        EntryMode::Protected | EntryMode::Long => {
            let long = plan.mode == EntryMode::Long;
            write_segments(mem, &mut sregs, long)?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            if long {
                sregs.cr3 = paging::write_identity_tables(mem)?;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
            } else {
                sregs.cr4 = 0;
                sregs.efer = 0;
            }
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;

    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: plan.entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match plan.info {
        BootInfo::ZeroPage(addr) => regs.rsi = addr,
        BootInfo::Pvh(addr) => regs.rbx = addr,
        BootInfo::None => {}
    }
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

fn write_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    long: bool,
) -> Result<(), RegsError> {
    let gdt = boot_gdt(long);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    // An empty IDT: any exception before the guest loads its own is a triple fault,
    // which we report, rather than a jump through garbage.
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);
    Ok(())
}
