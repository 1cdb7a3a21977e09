//! ACPI tables for a hardware-reduced x86 microVM, built with the `acpi_tables` crate.
//!
//! Layout in guest memory (all inside the legacy BIOS area, which the core must back
//! with RAM and mark reserved in the e820 map):
//!
//! | address            | table |
//! |--------------------|-------|
//! | `0xe0000`          | RSDP (revision 2; Linux scans 0xe0000..0xfffff for it) |
//! | `0xe0040` ...      | DSDT, FADT, MADT, XSDT, each 16-byte aligned, in that order |
//!
//! The FADT sets `HW_REDUCED_ACPI` and points its sleep control/status registers and
//! its reset register at the [`crate::devices::acpi_pm`] ports; the DSDT has an
//! `_S5_` object so Linux offers ACPI power-off, and one `LNRO0005` device per
//! virtio-mmio window so distro kernels (built without
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`) find the devices.

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
    let device_refs: Vec<RawAml> = devices.into_iter().map(RawAml).collect();
    let children: Vec<&dyn Aml> = device_refs.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);

    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    body
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
    // APIC ids 0..vcpus plus the IOAPIC id (we use vcpus) must fit in a u8, and 255 is
    // the broadcast id.
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
    madt.add_structure(IoApic::new(vcpus, IOAPIC_ADDR, 0));
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
