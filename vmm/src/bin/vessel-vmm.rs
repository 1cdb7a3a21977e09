//! `vessel-vmm --config FILE`: runs one VM per process and exits with a code that
//! says how it ended (see `vessel_vmm::exit`): 0 power-off, 1 host error, 2 usage,
//! 3 reset, 4 triple fault, 5 KVM internal error, 6 entry failure, 7 stopped
//! (SIGTERM/SIGINT), 8 timeout, 9 unhandled exit, 10 forbidden system call (seccomp).
//! `--no-seccomp` runs without the per-thread filters (for benchmarks, as Firecracker's).

use std::sync::atomic::{AtomicPtr, Ordering};

use vessel_vmm::exit::{EXIT_HOST_ERROR, EXIT_USAGE};
use vessel_vmm::{Vm, VmConfig, VmHandle};

const USAGE: &str =
    "usage: vessel-vmm [--no-seccomp] --config FILE   (a VmConfig as JSON; `-` reads stdin)

Runs one VM. Exit codes: 0 guest powered off, 1 host error, 2 usage or config
error, 3 guest reset/reboot, 4 triple fault, 5 KVM internal error (e.g.
emulation failure), 6 VM entry failure, 7 stopped (SIGTERM/SIGINT), 8 timeout,
9 unhandled KVM exit, 10 a system call the seccomp filters forbid. --no-seccomp
runs without the filters (for measuring their cost only). See docs/vmm.md.";

// The handle a SIGTERM/SIGINT stops. Set once before the handler is installed and
// never freed (the process ends with the VM).
static STOP: AtomicPtr<VmHandle> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_terminate(_: libc::c_int) {
    let handle = STOP.load(Ordering::SeqCst);
    if !handle.is_null() {
        // SAFETY: the pointer comes from Box::into_raw and is never freed; `stop`
        // only stores an atomic and writes an eventfd, both async-signal-safe.
        unsafe { (*handle).stop() };
    }
}

fn read_config(args: &[String]) -> Result<VmConfig, String> {
    let args = match args {
        [flag, rest @ ..] if flag == "--no-seccomp" => rest,
        _ => args,
    };
    let path = match args {
        [flag, path] if flag == "--config" => path,
        _ => return Err(USAGE.to_string()),
    };
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
    VmConfig::from_json(&text).map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return;
    }
    let config = match read_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vessel-vmm: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    // Compiled before the VM exists, installed per thread as the VM starts.
    let seccomp = args.first().map(String::as_str) != Some("--no-seccomp");
    let filters = if seccomp {
        match vessel_vmm::seccomp::Filters::compile()
            .and_then(|f| vessel_vmm::seccomp::install_reporter().map(|_| f))
        {
            Ok(f) => Some(std::sync::Arc::new(f)),
            Err(e) => {
                eprintln!("vessel-vmm: {e}");
                std::process::exit(EXIT_HOST_ERROR);
            }
        }
    } else {
        None
    };
    let vm = match Vm::new(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vessel-vmm: {e}");
            std::process::exit(EXIT_HOST_ERROR);
        }
    };
    STOP.store(Box::into_raw(Box::new(vm.handle())), Ordering::SeqCst);
    let handler = on_terminate as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler for SIGTERM/SIGINT; the handler only touches the
    // static handle set above.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    match vm.run_with(filters) {
        Ok(reason) => {
            if reason.exit_code() != 0 {
                eprintln!("vessel-vmm: {reason}");
            }
            std::process::exit(reason.exit_code());
        }
        Err(e) => {
            eprintln!("vessel-vmm: {e}");
            std::process::exit(EXIT_HOST_ERROR);
        }
    }
}
