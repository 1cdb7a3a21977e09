//! Boots the real Debian cloud kernel (placed by scripts/setup.sh) and waits for
//! its banner (`Linux version`) on our serial port, then stops the VM through the
//! stop handle. Both forms are booted: the bzImage as it ships (64-bit boot
//! protocol, zero page, ACPI) and the ELF vmlinux extracted from it (PVH entry).
//!
//! On this project's machine /dev/kvm is a nested kvm_pvm that emulates guest
//! ring 0, so the kernel crawls: measured here the ELF prints its banner after
//! ~16 s and the bzImage (which first decompresses itself, emulated) after ~160 s.
//! The budget is `VESSEL_BOOT_BANNER_SECS` (default 300 s) per kernel.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vessel_vmm::config::KernelFormat;
use vessel_vmm::{ExitReason, Vm};

const KERNEL: &str = "/var/cache/vessel/kernel/vmlinuz";
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 \
                       tsc_early_khz=2000000";
const BANNER: &[u8] = b"Linux version";
const E820_LINE: &[u8] = b"BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable";

fn budget() -> Duration {
    let secs = std::env::var("VESSEL_BOOT_BANNER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Boots `kernel` until the banner appears; returns the time it took.
fn boot_to_banner(kernel: &Path) -> Duration {
    let mut config = config_for(kernel, KernelFormat::Linux);
    config.cmdline = CMDLINE.into();
    config.memory_mib = 256;
    config.timeout_ms = None;
    let serial = SharedBuf::default();
    let start = Instant::now();
    let vm = Vm::with_serial(&config, Box::new(serial.clone())).expect("build VM");
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    let limit = budget();
    let contains = |needle: &[u8]| serial.contents().windows(needle.len()).any(|w| w == needle);
    let mut seen = None;
    while start.elapsed() < limit && !runner.is_finished() {
        if seen.is_none() && contains(BANNER) {
            seen = Some(start.elapsed());
        }
        // The e820 map follows the banner in the same early-console burst.
        if seen.is_some() && contains(E820_LINE) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    let outcome = runner.join().expect("VM thread");
    let log = String::from_utf8_lossy(&serial.contents()).into_owned();
    let Some(elapsed) = seen else {
        panic!(
            "no banner from {} after {:?} (VM ended: {outcome:?}); serial:\n{log}",
            kernel.display(),
            start.elapsed()
        );
    };
    // The VM was running when we stopped it (unless it died right after the banner).
    match outcome {
        Ok(ExitReason::Stopped) => {}
        other => eprintln!("note: VM ended with {other:?} after the banner"),
    }
    assert!(
        log.contains(std::str::from_utf8(E820_LINE).unwrap()),
        "kernel did not log our e820 map:\n{log}"
    );
    eprintln!("{}: banner after {elapsed:.1?}", kernel.display());
    elapsed
}

/// Extracts the ELF vmlinux from the bzImage (LZ4 payload, as Debian builds it).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), String> {
    let data = std::fs::read(bzimage).map_err(|e| e.to_string())?;
    let magic = [0x02, 0x21, 0x4c, 0x18];
    let at = data
        .windows(4)
        .position(|w| w == magic)
        .ok_or("no LZ4 payload in the bzImage")?;
    let mut child = Command::new("lz4")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).map_err(|e| e.to_string())?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("lz4: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("lz4 stdin")?;
    // lz4 stops at the end of the frame and may close its input early.
    let _ = stdin.write_all(&data[at..]);
    drop(stdin);
    let _ = child.wait();
    let head = std::fs::read(out).map_err(|e| e.to_string())?;
    if head.len() < 4 || head[..4] != *b"\x7fELF" {
        return Err("lz4 output is not an ELF file".into());
    }
    Ok(())
}

#[test]
fn debian_kernel_prints_its_banner_on_our_serial() {
    if skip_without_kvm() {
        return;
    }
    let kernel = PathBuf::from(KERNEL);
    if !kernel.exists() {
        eprintln!("SKIP: {KERNEL} missing (run scripts/setup.sh)");
        return;
    }
    // One test, kernels in sequence: two emulated boots at once would halve each
    // one's speed on a small machine.
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    match extract_vmlinux(&kernel, &vmlinux) {
        Ok(()) => {
            boot_to_banner(&vmlinux);
        }
        Err(e) => eprintln!("SKIP (ELF vmlinux part): {e}"),
    }
    boot_to_banner(&kernel);
}
