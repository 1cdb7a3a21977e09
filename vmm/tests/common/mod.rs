//! Shared helpers for the KVM tests: skip when /dev/kvm is missing, capture the
//! serial output, run a tiny guest with a timeout.

#![allow(dead_code)]

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vessel_vmm::config::{EntryMode, KernelFormat};
use vessel_vmm::devices::virtio::VirtioDevice;
use vessel_vmm::{ExitReason, Vm, VmConfig};

/// True (after printing SKIP) when this host cannot run KVM guests.
pub fn skip_without_kvm() -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => false,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable: {e}");
            true
        }
    }
}

/// A serial sink the test can read while the VM runs.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A config for a kernel file with a 5 s timeout and 64 MiB.
pub fn config_for(kernel: &Path, format: KernelFormat) -> VmConfig {
    let mut config = VmConfig::new(kernel);
    config.kernel_format = format;
    config.memory_mib = 64;
    config.timeout_ms = Some(5_000);
    config
}

/// Writes `bytes` to a temp file kept alive by the returned guard.
pub fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

/// Runs raw `code` loaded and entered at `addr` in `mode`; returns the exit reason
/// and what the guest wrote to the serial port.
pub fn run_raw(code: &[u8], addr: u64, mode: EntryMode) -> (ExitReason, Vec<u8>) {
    run_raw_with(code, addr, mode, Vec::new(), Duration::from_secs(5))
}

/// As [`run_raw`], with extra virtio devices and a timeout.
pub fn run_raw_with(
    code: &[u8],
    addr: u64,
    mode: EntryMode,
    extra: Vec<Box<dyn VirtioDevice>>,
    timeout: Duration,
) -> (ExitReason, Vec<u8>) {
    let file = temp_file(code);
    let mut config = config_for(
        file.path(),
        KernelFormat::Raw {
            load_address: addr,
            entry: addr,
            mode,
        },
    );
    config.timeout_ms = Some(timeout.as_millis() as u64);
    let serial = SharedBuf::default();
    let vm = Vm::with_parts(&config, Box::new(serial.clone()), extra).expect("build VM");
    let reason = vm.run().expect("run VM");
    (reason, serial.contents())
}
