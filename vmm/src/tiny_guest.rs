//! Tiny hand-assembled guests for tests and the benchmark: x86 machine code for a
//! few instructions (port and memory I/O) and an ELF64 wrapper, optionally with the
//! PVH `XEN_ELFNOTE_PHYS32_ENTRY` note that QEMU and this VMM both boot.
//!
//! The encodings are valid in 32-bit protected mode and 64-bit mode (where the
//! operand-size prefix selects 16-bit `dx`), and in 16-bit real mode with
//! [`Asm::real_mode`], which drops that prefix.

/// Where the guests are loaded: the ELF loader requires entry at or above 1 MiB.
pub const LOAD_ADDRESS: u64 = 0x10_0000;
/// The ACPI sleep-control port value that powers the VM off (S5 | SLP_EN).
pub const POWER_OFF_VALUE: u8 = (5 << 2) | (1 << 5);
/// Port of the ACPI power-management block's sleep-control register.
pub const POWER_OFF_PORT: u16 = 0x600;
/// QEMU's isa-debug-exit port (default iobase).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0x501;
/// COM1 data port.
pub const COM1: u16 = 0x3f8;

/// A byte buffer with helpers for the handful of instructions the guests use.
#[derive(Clone, Debug, Default)]
pub struct Asm {
    /// The machine code.
    pub code: Vec<u8>,
    real_mode: bool,
}

impl Asm {
    /// Code for 32- or 64-bit mode.
    pub fn new() -> Self {
        Self::default()
    }

    /// Code for 16-bit real mode.
    pub fn real_mode() -> Self {
        Asm {
            code: Vec::new(),
            real_mode: true,
        }
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// `mov dx, port`
    pub fn mov_dx(&mut self, port: u16) -> &mut Self {
        if !self.real_mode {
            self.code.push(0x66);
        }
        self.code.push(0xba);
        self.raw(&port.to_le_bytes())
    }

    /// `mov al, value`
    pub fn mov_al(&mut self, value: u8) -> &mut Self {
        self.raw(&[0xb0, value])
    }

    /// `out dx, al`
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.raw(&[0xee])
    }

    /// Writes `bytes` to `port`, one `out` each.
    pub fn out_bytes(&mut self, port: u16, bytes: &[u8]) -> &mut Self {
        self.mov_dx(port);
        for &b in bytes {
            self.mov_al(b).out_dx_al();
        }
        self
    }

    /// `mov eax, [addr]` (32-bit mode; a 32-bit absolute address).
    pub fn load_eax(&mut self, addr: u32) -> &mut Self {
        self.code.push(0xa1);
        self.raw(&addr.to_le_bytes())
    }

    /// `mov dword [addr], value` (32-bit mode).
    pub fn store(&mut self, addr: u32, value: u32) -> &mut Self {
        self.raw(&[0xc7, 0x05]);
        self.raw(&addr.to_le_bytes());
        self.raw(&value.to_le_bytes())
    }

    /// Writes the four bytes of EAX to COM1, low byte first (clobbers EAX, DX).
    pub fn out_eax_bytes(&mut self) -> &mut Self {
        self.mov_dx(COM1);
        for i in 0..4 {
            if i > 0 {
                self.raw(&[0xc1, 0xe8, 0x08]); // shr eax, 8
            }
            self.out_dx_al();
        }
        self
    }

    /// Powers the VM off through the ACPI sleep register.
    pub fn power_off(&mut self) -> &mut Self {
        self.mov_dx(POWER_OFF_PORT)
            .mov_al(POWER_OFF_VALUE)
            .out_dx_al()
    }

    /// `hlt` then jump back to it, forever.
    pub fn halt_forever(&mut self) -> &mut Self {
        self.raw(&[0xf4, 0xeb, 0xfd])
    }
}

/// Wraps `code` in an ELF64 executable loaded at [`LOAD_ADDRESS`] and entered at its
/// first byte, with a PVH entry note (32-bit entry) when `pvh` is true.
pub fn elf64(code: &[u8], pvh: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let note_off = EHDR + PHDR * phnum as usize;
    // namesz 4, descsz 8 (QEMU reads 8 bytes for ELF64; the loader reads the low 4),
    // type 18, "Xen\0", entry.
    let mut note = Vec::new();
    if pvh {
        for v in [4u32, 8, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&LOAD_ADDRESS.to_le_bytes());
    }
    let code_off = (note_off + note.len()).next_multiple_of(16);

    let mut elf = Vec::with_capacity(code_off + code.len());
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&phnum.to_le_bytes());
    elf.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let phdr = |elf: &mut Vec<u8>,
                p_type: u32,
                flags: u32,
                off: usize,
                addr: u64,
                len: usize,
                align: u64| {
        elf.extend_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&(off as u64).to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&(len as u64).to_le_bytes());
        elf.extend_from_slice(&(len as u64).to_le_bytes());
        elf.extend_from_slice(&align.to_le_bytes());
    };
    phdr(&mut elf, 1, 5, code_off, LOAD_ADDRESS, code.len(), 16); // PT_LOAD, R+X
    if pvh {
        phdr(&mut elf, 4, 4, note_off, 0, note.len(), 4); // PT_NOTE
    }
    elf.extend_from_slice(&note);
    elf.resize(code_off, 0);
    elf.extend_from_slice(code);
    elf
}

/// The benchmark guest: PVH (32-bit) entry, prints `ready\n` on COM1. With
/// `exit`, it then leaves through QEMU's isa-debug-exit and this VMM's ACPI
/// power-off (each VMM ignores the other's port); without, it halts with
/// interrupts off so the harness can measure the idle VMM.
pub fn benchmark_guest(exit: bool) -> Vec<u8> {
    let mut asm = Asm::new();
    asm.out_bytes(COM1, b"ready\n");
    if exit {
        asm.mov_dx(ISA_DEBUG_EXIT_PORT)
            .mov_al(0)
            .out_dx_al()
            .power_off();
    }
    asm.raw(&[0xfa]).halt_forever(); // cli
    elf64(&asm.code, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn elf_loads_with_and_without_pvh_note() {
        let mem = crate::memory::create_guest_memory(8).unwrap();
        let code = [0x90u8, 0xf4];
        for pvh in [false, true] {
            let mut f = std::io::Cursor::new(elf64(&code, pvh));
            let r = Elf::load(&mem, None, &mut f, Some(GuestAddress(LOAD_ADDRESS))).unwrap();
            assert_eq!(r.kernel_load.0, LOAD_ADDRESS);
            let present = PvhBootCapability::PvhEntryPresent(GuestAddress(LOAD_ADDRESS));
            assert_eq!(r.pvh_boot_cap == present, pvh);
            assert_eq!(
                mem.read_obj::<u16>(GuestAddress(LOAD_ADDRESS)).unwrap(),
                0xf490
            );
        }
    }
}
