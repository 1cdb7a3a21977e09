//! Ending the VM: flush the disks and power off.

/// Syncs the filesystems and powers the VM off; never returns.
pub fn off() -> ! {
    // SAFETY: sync and reboot take no pointers; as PID 1 we hold CAP_SYS_BOOT.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; PID 1 must not exit (the kernel would panic).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
