//! `vessel run` with VM isolation, end to end: the real binary boots the real guest kernel
//! with the guest agent, through QEMU (TCG here) and through the built-in VMM where this
//! host's KVM can run Linux (skipped otherwise, saying why).

mod common;
mod vm_support;

use std::time::{Duration, Instant};

use vm_support::{setup, text};

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Output, exit code 3, stdout/stderr separation, the guest's own kernel and /proc.
fn output_status_and_own_kernel(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let t = Instant::now();
    let out = env.run(
        &["--rm"],
        &[
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; uname -r; echo procs=$(ls /proc | grep -c '^[0-9]'); cat /proc/1/comm; exit 3",
        ],
    );
    let (stdout, stderr) = text(&out);
    eprintln!("run took {:?}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("to-stdout\n"), "stdout: {stdout}");
    assert!(
        !stdout.contains("to-stderr"),
        "stderr leaked into stdout: {stdout}"
    );
    assert!(stderr.contains("to-stderr\n"), "stderr: {stderr}");
    let release = stdout.lines().nth(1).unwrap_or_default();
    assert!(
        !release.is_empty() && release != host_release(),
        "guest uname -r {release:?} vs host {}",
        host_release()
    );
    assert_eq!(
        release,
        std::fs::read_to_string(format!("{}/version", vm_support::KERNEL_DIR))
            .unwrap()
            .trim()
    );
    let procs: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.parse().ok())
        .expect("process count");
    // The guest's /proc: its kernel threads, the agent and this shell; not the host's hundreds.
    let host_procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .count();
    assert!(
        procs < 100 && procs < host_procs,
        "guest sees {procs} processes, host has {host_procs}"
    );
    assert!(
        stdout.contains("vessel-agent\n") || stdout.contains("init\n"),
        "PID 1 in the guest: {stdout}"
    );
    assert!(
        env.container_dirs().is_empty(),
        "--rm left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );
}

#[test]
fn qemu_output_status_and_own_kernel() {
    output_status_and_own_kernel("qemu");
}

#[test]
fn builtin_output_status_and_own_kernel() {
    output_status_and_own_kernel("builtin");
}
