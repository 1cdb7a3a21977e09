//! Just enough of the i8042 keyboard controller for a guest's `reboot=k`.
//!
//! Linux resets the machine by polling the status port until the input buffer is
//! empty and then writing the CPU-reset command `0xFE` to port 0x64. We report an
//! always-empty controller and turn that command into a write to a reset `EventFd`
//! that the core watches to end the VM.

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Port-I/O base of the controller (data port 0x60 .. command/status port 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Ports decoded: 0x60 through 0x64.
pub const I8042_LEN: u64 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 stub.
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
}

impl I8042Device {
    /// A controller that signals `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty (nothing to read), input buffer empty (ready
        // for a command). Data reads likewise return 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.len() == 1 && data[0] == CMD_RESET_CPU {
            if let Err(e) = self.reset_evt.write(1) {
                log::error!("i8042: cannot signal reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA_OFFSET: u64 = 0;

    #[test]
    fn cpu_reset_command_signals_reset() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042Device::new(evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer must look empty");
        // Other commands, ports and widths do nothing.
        dev.write(COMMAND_OFFSET, &[0xfd]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        assert!(evt.read().is_err(), "no reset expected yet");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
