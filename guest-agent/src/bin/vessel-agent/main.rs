//! The guest agent: PID 1 of every vessel microVM.
//!
//! Boot: mount the pseudo filesystems, load the kernel modules the host packed into the
//! initramfs, open the channel (`/dev/hvc0`) and announce itself. Then it serves the host:
//! assemble the container's root from the two disks, run the processes it is asked to run,
//! stream their stdio, and power the VM off when the container's main process is done.
//! Its log lines go to the console (the serial port), which the host shows on failure.

mod cgroup;
mod channel;
mod confine;
mod disks;
mod modules;
mod mounts;
mod net;
mod power;
mod process;
mod rootfs;
mod supervisor;
mod volumes;

/// Writes one line to the console, prefixed so it stands out among the kernel's lines.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "vessel-agent: {}", format_args!($($arg)*));
    }};
}
pub(crate) use log;

fn main() {
    if std::process::id() != 1 {
        eprintln!("vessel-agent is the init of a vessel microVM; it only runs as PID 1");
        std::process::exit(2);
    }
    // PID 1 must never exit (the kernel would panic with a less useful message) and a
    // half-working agent helps nobody: any panic, in any thread, is logged to the console
    // (which the host shows) and ends the VM.
    std::panic::set_hook(Box::new(|info| {
        log!("internal error: {info}");
        power::off();
    }));
    if let Err(err) = run() {
        log!("fatal: {err:#}");
    }
    power::off();
}

fn run() -> Result<(), String> {
    mounts::early().map_err(|e| format!("mounting /proc, /sys, /dev: {e}"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    modules::load_all(std::path::Path::new("/modules"), "order", &cmdline)?;
    net::loopback_up().map_err(|e| format!("bringing up loopback: {e}"))?;
    let chan = channel::open().map_err(|e| format!("opening the host channel: {e}"))?;
    supervisor::serve(chan, &cmdline)
}
