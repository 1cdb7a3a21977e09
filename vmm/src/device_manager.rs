//! Creates the devices a VM config asks for, places them on the port-I/O and MMIO
//! buses, and wires their interrupts (irqfds) and queue notifications (ioeventfds)
//! into KVM. The devices themselves live in [`crate::devices`].

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::acpi_pm::{AcpiPmDevice, ACPI_PM_BASE, ACPI_PM_LEN};
use crate::devices::bus::SharedDevice;
use crate::devices::i8042::{I8042Device, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_NOTIFY_OFFSET};
use crate::devices::virtio::VirtioDevice;
use crate::devices::Bus;
use crate::error::VmmError;
use crate::memory::{VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};

/// GSI of the first virtio-mmio device; the rest follow. 5..=23 are free ISA/IOAPIC
/// pins once COM1 (4) is taken.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Most virtio-mmio devices we place (IOAPIC pins 5..=23).
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// A virtio-mmio device as placed in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Window base address.
    pub base: u64,
    /// Window length.
    pub len: u64,
    /// GSI (IOAPIC pin) of its interrupt.
    pub gsi: u32,
    /// virtio device type.
    pub device_type: u32,
}

/// The devices of one VM.
pub struct Devices {
    /// Port-I/O bus (serial, i8042, ACPI PM).
    pub io_bus: Arc<Bus>,
    /// MMIO bus (virtio-mmio windows).
    pub mmio_bus: Arc<Bus>,
    /// The virtio transports, for the event loop.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Where each transport sits (for the ACPI DSDT).
    pub slots: Vec<VirtioSlot>,
    /// Signalled by the ACPI sleep register on S5.
    pub poweroff_evt: EventFd,
    /// Signalled by the i8042 or the ACPI reset register.
    pub reset_evt: EventFd,
}

fn device_err(what: &str) -> impl FnOnce(std::io::Error) -> VmmError + '_ {
    move |e| VmmError::Device(what.to_string(), e.to_string())
}

fn insert(
    bus: &mut Bus,
    what: &str,
    dev: SharedDevice,
    base: u64,
    len: u64,
) -> Result<(), VmmError> {
    bus.insert(dev, base, len)
        .map_err(|e| VmmError::Device(what.to_string(), e.to_string()))
}

impl Devices {
    /// Creates the legacy devices and one virtio-mmio transport per `virtio` device.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        serial_out: Box<dyn Write + Send>,
        virtio: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, VmmError> {
        let mut io_bus = Bus::new();
        let mut mmio_bus = Bus::new();
        let nb = libc::EFD_NONBLOCK;

        let serial_irq = EventFd::new(nb).map_err(device_err("serial"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD (serial)", e))?;
        let serial = SerialDevice::new(serial_irq, serial_out);
        insert(
            &mut io_bus,
            "serial",
            Arc::new(Mutex::new(serial)),
            COM1_BASE,
            COM1_LEN,
        )?;

        let poweroff_evt = EventFd::new(nb).map_err(device_err("acpi_pm"))?;
        let reset_evt = EventFd::new(nb).map_err(device_err("acpi_pm"))?;
        let clone = |e: &EventFd, what| e.try_clone().map_err(device_err(what));
        let pm = AcpiPmDevice::new(
            clone(&poweroff_evt, "acpi_pm")?,
            clone(&reset_evt, "acpi_pm")?,
        );
        insert(
            &mut io_bus,
            "acpi_pm",
            Arc::new(Mutex::new(pm)),
            ACPI_PM_BASE,
            ACPI_PM_LEN,
        )?;
        let i8042 = I8042Device::new(clone(&reset_evt, "i8042")?);
        insert(
            &mut io_bus,
            "i8042",
            Arc::new(Mutex::new(i8042)),
            I8042_BASE,
            I8042_LEN,
        )?;

        if virtio.len() > MAX_VIRTIO_DEVICES {
            return Err(VmmError::Device(
                "virtio".into(),
                format!("{} devices, at most {MAX_VIRTIO_DEVICES}", virtio.len()),
            ));
        }
        let mut transports = Vec::new();
        let mut slots = Vec::new();
        for (i, device) in virtio.into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
            let gsi = VIRTIO_FIRST_GSI + i as u32;
            let name = format!("virtio-mmio@{base:#x}");
            let transport = MmioTransport::new(mem.clone(), device)
                .map_err(|e| VmmError::Device(name.clone(), e.to_string()))?;
            vm.register_irqfd(transport.interrupt_evt(), gsi)
                .map_err(|e| VmmError::Kvm("KVM_IRQFD (virtio)", e))?;
            for (index, evt) in transport.queue_evts().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + MMIO_NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(|e| VmmError::Kvm("KVM_IOEVENTFD (virtio)", e))?;
            }
            slots.push(VirtioSlot {
                base,
                len: VIRTIO_MMIO_SIZE,
                gsi,
                device_type: transport.device_type(),
            });
            let shared = Arc::new(Mutex::new(transport));
            insert(&mut mmio_bus, &name, shared.clone(), base, VIRTIO_MMIO_SIZE)?;
            transports.push(shared);
        }
        Ok(Devices {
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            transports,
            slots,
            poweroff_evt,
            reset_evt,
        })
    }
}
