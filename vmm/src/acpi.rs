//! ACPI tables for a hardware-reduced x86 microVM, built with the `acpi_tables` crate.
//!
//! Layout in guest memory (all inside the legacy BIOS area, which the core must back
//! with RAM and mark reserved in the e820 map):
//!
//! | address            | table |
//! |--------------------|-------|
//! | `0xe0000`          | RSDP (revision 2; Linux scans 0xe0000..0xfffff for it) |
//! | `0xe0030` ...      | DSDT, FADT, MADT, XSDT, each 16-byte aligned, in that order |
//!
//! The FADT sets `HW_REDUCED_ACPI` and points its sleep control/status registers and
//! its reset register at the [`crate::devices::acpi_pm`] ports; the DSDT has an
//! `_S5_` object so Linux offers ACPI power-off, one `LNRO0005` device per
//! virtio-mmio window so distro kernels (built without
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`) find the devices, and COM1 as a `PNP0501`
//! device with its ports and IRQ.
//!
//! COM1 must be in the DSDT because a hardware-reduced ACPI machine has no legacy PIC:
//! Linux then maps no ISA IRQs, so the 8250 driver's built-in port at 0x3f8 gets no
//! working IRQ 4. Kernel printk still reaches the port (it polls), but user-space writes
//! to `/dev/ttyS0`, which wait for the transmit interrupt, never did. Described here,
//! the port is claimed by `8250_pnp` with IRQ 4 registered as an edge-triggered GSI, as
//! QEMU's microvm and Firecracker describe theirs.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::acpi_pm;
use crate::devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};

/// Where the RSDP goes (and what [`create_acpi_tables`] returns).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End (exclusive) of the area the tables may use.
pub const ACPI_AREA_END: u64 = 0x10_0000;
/// Physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

const OEM_ID: [u8; 6] = *b"VESSEL";
const OEM_REVISION: u32 = 1;
// Sleep type advertised by _S5_; the acpi_pm device matches the same value.
const S5_SLEEP_TYPE: u8 = acpi_pm::S5_SLEEP_TYPE;

/// IA-PC boot architecture flags (FADT): no VGA, no MSI, no CMOS RTC. The 8042 bit
/// stays clear so Linux does not probe our reset-only i8042 as a keyboard.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// One virtio-mmio window to describe in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Window length (normally [`crate::devices::virtio::MMIO_WINDOW_SIZE`]).
    pub size: u64,
    /// The IOAPIC GSI the device's irqfd raises (edge-triggered, active high).
    pub irq: u32,
}

impl MmioDeviceInfo {
    /// The `virtio_mmio.device=` kernel parameter describing this window: the
    /// fallback for kernels built with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` and booted
    /// without ACPI. (Debian's kernels lack that option and need the DSDT.)
    pub fn kernel_cmdline_arg(&self) -> String {
        format!(
            "virtio_mmio.device={:#x}@{:#x}:{}",
            self.size, self.base, self.irq
        )
    }
}

/// Errors building or placing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPUs, or more than the MADT's 8-bit APIC ids (and the IOAPIC) allow.
    #[error("unsupported vCPU count {0} (1..=254)")]
    VcpuCount(u8),
    /// An MMIO window that is empty or does not fit below 4 GiB (Memory32Fixed).
    #[error("virtio-mmio window {base:#x}+{size:#x} must be non-empty and below 4 GiB")]
    MmioWindow {
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// The tables outgrew the BIOS area.
    #[error("ACPI tables need {0:#x} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Guest memory does not back the BIOS area.
    #[error("cannot write ACPI tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// One serialised table and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// The 4-byte signature (`b"RSD "` for the RSDP).
    pub signature: [u8; 4],
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// The table bytes, checksummed.
    pub bytes: Vec<u8>,
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

fn io_gas(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn dsdt_aml(mmio: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut body = Vec::new();
    // Build each device's objects first: the aml builders borrow their children.
    let mut devices = Vec::with_capacity(mmio.len());
    for (i, dev) in mmio.iter().enumerate() {
        // Caller validated that base and size fit in 32 bits.
        let mem32 = aml::Memory32Fixed::new(true, dev.base as u32, dev.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem32, &irq]);
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid_value = i as u32;
        let uid = aml::Name::new("_UID".into(), &uid_value);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let device = aml::Device::new(format!("V{i:03X}").as_str().into(), vec![&hid, &uid, &crs]);
        devices.push(to_bytes(&device));
    }
    devices.push(com1_aml());
    let device_refs: Vec<RawAml> = devices.into_iter().map(RawAml).collect();
    let children: Vec<&dyn Aml> = device_refs.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);

    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    body
}

/// COM1: a 16550 at 0x3f8 on ISA IRQ 4 (edge-triggered, active high, exclusive).
fn com1_aml() -> Vec<u8> {
    let base = COM1_BASE as u16;
    let io = aml::IO::new(base, base, 1, COM1_LEN as u8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    to_bytes(&aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]))
}

// Pre-serialised AML, so children can be built in a loop and borrowed afterwards.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Builds every table and assigns its address, without touching guest memory.
pub fn build_acpi_tables(vcpus: u8, mmio: &[MmioDeviceInfo]) -> Result<Vec<AcpiTable>, AcpiError> {
    // Local APIC ids are 0..vcpus in 8 bits, and 255 is the xAPIC broadcast id.
    if vcpus == 0 || vcpus > 254 {
        return Err(AcpiError::VcpuCount(vcpus));
    }
    for dev in mmio {
        let fits = dev.size > 0
            && dev
                .base
                .checked_add(dev.size)
                .is_some_and(|end| end <= 1 << 32);
        if !fits {
            return Err(AcpiError::MmioWindow {
                base: dev.base,
                size: dev.size,
            });
        }
    }

    let mut next = align16(RSDP_ADDR + Rsdp::len() as u64);
    let mut place = |len: usize| {
        let at = next;
        next = align16(next + len as u64);
        at
    };

    // DSDT
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VSSLDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(mmio));
    let dsdt_bytes = dsdt.as_slice().to_vec();
    let dsdt_addr = place(dsdt_bytes.len());

    // FADT
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VSSLFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.sleep_control_reg = io_gas(acpi_pm::ACPI_PM_BASE + acpi_pm::SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_gas(acpi_pm::ACPI_PM_BASE + acpi_pm::SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_gas(acpi_pm::ACPI_PM_BASE + acpi_pm::RESET_OFFSET);
    fadt.reset_value = acpi_pm::RESET_VALUE;
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VESSELVM").into();
    let fadt_bytes = to_bytes(&fadt.finalize());
    let fadt_addr = place(fadt_bytes.len());

    // MADT
    let mut madt = MADT::new(
        OEM_ID,
        *b"VSSLAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // Id 0 is what KVM's in-kernel IOAPIC reports in its id register (QEMU's
    // microvm uses it too); 64-bit Linux does not need it distinct from LAPIC ids.
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_bytes = to_bytes(&madt);
    let madt_addr = place(madt_bytes.len());

    // XSDT
    let mut xsdt = XSDT::new(OEM_ID, *b"VSSLXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = to_bytes(&xsdt);
    let xsdt_addr = place(xsdt_bytes.len());

    let rsdp_bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    if next > ACPI_AREA_END {
        return Err(AcpiError::TooLarge(next - RSDP_ADDR));
    }

    let table = |signature: &[u8; 4], addr: u64, bytes: Vec<u8>| AcpiTable {
        signature: *signature,
        addr: GuestAddress(addr),
        bytes,
    };
    Ok(vec![
        table(b"RSD ", RSDP_ADDR, rsdp_bytes),
        table(b"DSDT", dsdt_addr, dsdt_bytes),
        table(b"FACP", fadt_addr, fadt_bytes),
        table(b"APIC", madt_addr, madt_bytes),
        table(b"XSDT", xsdt_addr, xsdt_bytes),
    ])
}

/// Builds the tables and writes them into guest memory; returns the RSDP address
/// (for `boot_params.acpi_rsdp_addr`, though Linux also finds it by scanning).
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    mmio: &[MmioDeviceInfo],
) -> Result<GuestAddress, AcpiError> {
    for table in build_acpi_tables(vcpus, mmio)? {
        mem.write_slice(&table.bytes, table.addr)?;
    }
    Ok(GuestAddress(RSDP_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn windows() -> Vec<MmioDeviceInfo> {
        (0..3)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5 + i as u32,
            })
            .collect()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        for vcpus in [1u8, 2, 8, 254] {
            let tables = build_acpi_tables(vcpus, &windows()).unwrap();
            for t in &tables {
                if &t.signature == b"RSD " {
                    assert_eq!(&t.bytes[..8], b"RSD PTR ");
                    assert_eq!(sum(&t.bytes[..20]), 0, "RSDP v1 checksum");
                    assert_eq!(sum(&t.bytes), 0, "RSDP extended checksum");
                    assert_eq!(t.bytes[15], 2, "RSDP revision 2");
                    assert_eq!(u32_at(&t.bytes, 20) as usize, t.bytes.len());
                } else {
                    assert_eq!(&t.bytes[..4], &t.signature);
                    assert_eq!(sum(&t.bytes), 0, "{:?}", std::str::from_utf8(&t.signature));
                    assert_eq!(u32_at(&t.bytes, 4) as usize, t.bytes.len());
                }
                assert!(t.addr.0 >= RSDP_ADDR);
                assert!(t.addr.0 + t.bytes.len() as u64 <= ACPI_AREA_END);
            }
            let madt = tables.iter().find(|t| &t.signature == b"APIC").unwrap();
            // Header (44) + 8 bytes per local APIC + 12 for the IOAPIC.
            assert_eq!(madt.bytes.len(), 44 + 8 * usize::from(vcpus) + 12);
        }
    }

    #[test]
    fn tables_in_guest_memory_link_up() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let rsdp = create_acpi_tables(&mem, 2, &windows()).unwrap();
        assert_eq!(rsdp, GuestAddress(RSDP_ADDR));
        let read = |addr: u64, len: usize| {
            let mut v = vec![0u8; len];
            mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        };
        let rsdp = read(RSDP_ADDR, 36);
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt_len = u32_at(&read(xsdt_addr, 8), 4) as usize;
        let xsdt = read(xsdt_addr, xsdt_len);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let entries: Vec<u64> = (36..xsdt_len)
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|&a| read(a, 4)).collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);

        let fadt_len = u32_at(&read(entries[0], 8), 4) as usize;
        let fadt = read(entries[0], fadt_len);
        assert_eq!(fadt[8], 6, "FADT major revision");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let x_dsdt = u64_at(&fadt, 140);
        assert_eq!(&read(x_dsdt, 4), b"DSDT");
        // SLEEP_CONTROL_REG at 244 and SLEEP_STATUS_REG at 256: system I/O, 8 bits.
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64_at(&fadt, 248),
            acpi_pm::ACPI_PM_BASE + acpi_pm::SLEEP_CONTROL_OFFSET
        );
        assert_eq!(fadt[256], 1);
        assert_eq!(
            u64_at(&fadt, 260),
            acpi_pm::ACPI_PM_BASE + acpi_pm::SLEEP_STATUS_OFFSET
        );
        // RESET_REG at 116, RESET_VALUE at 128.
        assert_eq!(
            u64_at(&fadt, 120),
            acpi_pm::ACPI_PM_BASE + acpi_pm::RESET_OFFSET
        );
        assert_eq!(fadt[128], acpi_pm::RESET_VALUE);
    }

    #[test]
    fn cmdline_fallback_describes_the_window() {
        let dev = MmioDeviceInfo {
            base: 0xd000_1000,
            size: 0x1000,
            irq: 6,
        };
        // The format Linux's vm_cmdline_set() parses: <size>@<base>:<irq>.
        assert_eq!(
            dev.kernel_cmdline_arg(),
            "virtio_mmio.device=0x1000@0xd0001000:6"
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            build_acpi_tables(0, &[]),
            Err(AcpiError::VcpuCount(0))
        ));
        assert!(matches!(
            build_acpi_tables(255, &[]),
            Err(AcpiError::VcpuCount(255))
        ));
        let high = MmioDeviceInfo {
            base: 0xffff_f800,
            size: 0x1000,
            irq: 5,
        };
        assert!(matches!(
            build_acpi_tables(1, &[high]),
            Err(AcpiError::MmioWindow { .. })
        ));
        let empty = MmioDeviceInfo {
            base: 0xd000_0000,
            size: 0,
            irq: 5,
        };
        assert!(matches!(
            build_acpi_tables(1, &[empty]),
            Err(AcpiError::MmioWindow { .. })
        ));
        // Guest memory that does not reach the BIOS area.
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        assert!(matches!(
            create_acpi_tables(&small, 1, &windows()),
            Err(AcpiError::GuestMemory(_))
        ));
        // So many devices the DSDT outgrows the area.
        let many: Vec<MmioDeviceInfo> = (0..4000)
            .map(|i| MmioDeviceInfo {
                base: 0xc000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5,
            })
            .collect();
        assert!(matches!(
            build_acpi_tables(1, &many),
            Err(AcpiError::TooLarge(_))
        ));
    }

    fn iasl_available() -> bool {
        Command::new("iasl").arg("-v").output().is_ok()
    }

    fn decompile(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let dat = dir.join(format!("{name}.dat"));
        std::fs::write(&dat, bytes).unwrap();
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .current_dir(dir)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl")))
            .unwrap_or_else(|e| panic!("no {name}.dsl ({e}):\n{log}"));
        assert!(
            !dsl.contains("**** Unknown"),
            "{name}: iasl did not understand it:\n{dsl}"
        );
        if std::env::var_os("VESSEL_DUMP_ACPI").is_some() {
            eprintln!("{dsl}");
        }
        dsl
    }

    #[test]
    fn iasl_decompiles_every_table_and_dsdt_names_each_device() {
        if !iasl_available() {
            eprintln!("SKIP: iasl (acpica-tools) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mmio = windows();
        let tables = build_acpi_tables(4, &mmio).unwrap();
        // iasl's disassembler takes SDTs only (the RSDP has no SDT header); the
        // RSDP is checked byte by byte in the other tests.
        for t in tables.iter().filter(|t| &t.signature != b"RSD ") {
            let name = String::from_utf8_lossy(&t.signature).to_lowercase();
            let dsl = decompile(dir.path(), &name, &t.bytes);
            match name.as_str() {
                "dsdt" => {
                    let flat: String = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
                    for (i, dev) in mmio.iter().enumerate() {
                        let start = flat
                            .find(&format!("Device (V{i:03X})"))
                            .unwrap_or_else(|| panic!("no device {i}: {flat}"));
                        let block = &flat[start..];
                        let block =
                            &block[..block[1..].find("Device (").map_or(block.len(), |e| e + 1)];
                        let base = format!("0x{:08X}", dev.base);
                        let size = format!("0x{:08X}", dev.size);
                        assert!(block.contains("Name (_HID, \"LNRO0005\")"), "{block}");
                        assert!(
                            block.contains(&format!(
                                "Memory32Fixed (ReadWrite, {base}, // Address Base {size}, // Address Length"
                            )),
                            "window {i}: {block}"
                        );
                        assert!(
                            block.contains(&format!(
                                "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ 0x{:08X}, }}",
                                dev.irq
                            )),
                            "irq {i}: {block}"
                        );
                    }
                    assert_eq!(flat.matches("\"LNRO0005\"").count(), mmio.len(), "{flat}");
                    let com1 = &flat[flat.find("Device (COM1)").expect("COM1 device")..];
                    assert!(com1.contains("Name (_HID, EisaId (\"PNP0501\")"), "{com1}");
                    assert!(
                        com1.contains("IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum 0x01, // Alignment 0x08, // Length"),
                        "{com1}"
                    );
                    assert!(
                        com1.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }"),
                        "{com1}"
                    );
                    assert!(flat.contains("Name (_S5, Package"), "{flat}");
                }
                "facp" => {
                    assert!(dsl.contains("Hardware Reduced (V5) : 1"), "{dsl}");
                }
                "apic" => {
                    assert_eq!(dsl.matches("Processor Local APIC").count(), 4, "{dsl}");
                    assert!(dsl.contains("FEC00000"), "{dsl}");
                }
                _ => {}
            }
        }
    }
}
