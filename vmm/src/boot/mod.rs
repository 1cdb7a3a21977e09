//! Booting: loading images into guest memory and putting the boot vCPU in the
//! state its entry protocol expects.

pub mod gdt;
pub mod loader;
pub mod paging;
pub mod pvh;
pub mod regs;
pub mod zero_page;

use crate::config::EntryMode;

/// The boot information structure handed to the guest in a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfo {
    /// Linux `boot_params` at this address, in RSI (64-bit boot protocol).
    ZeroPage(u64),
    /// PVH `hvm_start_info` at this address, in EBX.
    Pvh(u64),
    /// Nothing (raw images).
    None,
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// Guest physical address of the first instruction.
    pub entry: u64,
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// Boot information pointer.
    pub info: BootInfo,
}
