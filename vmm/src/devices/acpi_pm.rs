//! Hardware-reduced ACPI power management: the FADT's sleep control and status
//! registers and its reset register, as one small port-I/O device.
//!
//! Linux powers off a hardware-reduced platform by writing `SLP_TYP << 2 | SLP_EN`
//! to the sleep control register, with `SLP_TYP` taken from the DSDT's `_S5_`
//! package ([`S5_SLEEP_TYPE`]); it reboots by writing the FADT's reset value to the
//! reset register. Each signals an `EventFd` that the core watches.

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Port-I/O base of the device.
pub const ACPI_PM_BASE: u64 = 0x600;
/// Ports decoded.
pub const ACPI_PM_LEN: u64 = 8;
/// Offset of the sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register (FADT `RESET_REG`).
pub const RESET_OFFSET: u64 = 2;
/// The value the guest writes to the reset register (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type the DSDT's `_S5_` object advertises.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const SLP_EN: u8 = 1 << 5;
// Sleep status: WAK_STS, set when the platform has woken; we never sleep, so a
// read reports "awake".
const WAK_STS: u8 = 1 << 7;

/// The power-management register block.
#[derive(Debug)]
pub struct AcpiPmDevice {
    poweroff_evt: EventFd,
    reset_evt: EventFd,
}

impl AcpiPmDevice {
    /// A device that signals `poweroff_evt` on an S5 request and `reset_evt` on a
    /// write of [`RESET_VALUE`] to the reset register.
    pub fn new(poweroff_evt: EventFd, reset_evt: EventFd) -> Self {
        Self {
            poweroff_evt,
            reset_evt,
        }
    }

    fn signal(evt: &EventFd, what: &str) {
        if let Err(e) = evt.write(1) {
            log::error!("acpi_pm: cannot signal {what}: {e}");
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET && data.len() == 1 {
            data[0] = WAK_STS;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        let value = data[0];
        match offset {
            SLEEP_CONTROL_OFFSET => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
                    Self::signal(&self.poweroff_evt, "power-off");
                } else if value & SLP_EN != 0 {
                    // S1-S4 are not offered in the DSDT; a guest asking anyway is
                    // ignored rather than frozen.
                    log::warn!("acpi_pm: ignoring request for sleep type {sleep_type}");
                }
            }
            RESET_OFFSET if value == RESET_VALUE => Self::signal(&self.reset_evt, "reset"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPmDevice, EventFd, EventFd) {
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = AcpiPmDevice::new(off.try_clone().unwrap(), reset.try_clone().unwrap());
        (dev, off, reset)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, off, reset) = device();
        // SLP_TYP without SLP_EN, another sleep type, wrong width: nothing.
        dev.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]);
        dev.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | SLP_EN, 0]);
        assert!(off.read().is_err());
        // What Linux's acpi_hw_extended_sleep() writes.
        dev.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn reset_register_signals_reset() {
        let (mut dev, off, reset) = device();
        dev.write(RESET_OFFSET, &[0x02]);
        assert!(reset.read().is_err());
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(off.read().is_err());
        let mut status = [0u8];
        dev.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status[0], WAK_STS);
    }
}
