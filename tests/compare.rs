//! `vessel compare` end to end: the same busybox image in container and VM isolation
//! (qemu backend under TCG here), with the probes reporting what each mode really sees.

mod common;
mod vm_support;

use common::TestRoot;
use serde_json::Value;

const ROWS: &[&str] = &[
    "latency_median_ms",
    "latency_p90_ms",
    "host_memory_bytes",
    "disk_added_bytes",
    "kernel_release",
    "processes",
    "mounts",
    "interfaces",
    "cpus",
    "memory_kib",
    "kernel_instance",
    "block_devices",
    "dev_entries",
    "host_pids_visible",
    "host_proc_sys",
    "kvm_visible",
    "host_hostname_visible",
    "probe_sysrq",
    "probe_module",
    "probe_host_disk",
    "exit_code",
    "stdout",
    "stderr",
];

#[test]
fn compare_reports_both_modes_honestly() {
    // The VM column needs what the VM tests need (root, kernel, agent, QEMU); the
    // container column needs root.
    let Some(env) = vm_support::setup("qemu") else {
        return;
    };
    let out = env
        .cmd(&[
            "compare", "--runs", "2", "--format", "json", "--vmm", "qemu", &env.image, "echo",
            "hello",
        ])
        .output()
        .expect("run vessel compare");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = serde_json::from_str(&out).expect("compare --format json is JSON");
    let rows = report["rows"].as_array().expect("rows");
    let row = |key: &str| -> &Value {
        rows.iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no row {key} in {out}"))
    };
    for key in ROWS {
        let r = row(key);
        for mode in ["container", "vm"] {
            assert!(
                r[mode]["display"].is_string(),
                "row {key} has no {mode} cell: {r}"
            );
        }
    }

    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let kernel = row("kernel_release");
    assert_eq!(kernel["container"]["value"], host_kernel.trim(), "{kernel}");
    let vm_kernel = kernel["vm"]["value"]
        .as_str()
        .expect("the VM reported a kernel");
    assert_ne!(vm_kernel, host_kernel.trim(), "{kernel}");
    assert!(row("kernel_instance")["container"]["display"]
        .as_str()
        .unwrap()
        .contains("host's"));

    // Mounting the host's disk must fail in both modes.
    for mode in ["container", "vm"] {
        let disk = row("probe_host_disk")[mode]["display"].as_str().unwrap();
        assert!(disk.starts_with("blocked"), "{mode}: {disk}");
        assert_eq!(row("host_pids_visible")[mode]["value"], "no");
    }
    // The container cannot write sysrq (read-only per runc's defaults).
    assert_eq!(row("probe_sysrq")["container"]["value"], "blocked");

    // The command itself ran the same in both.
    for key in ["exit_code", "stdout"] {
        assert_eq!(row(key)["differs"], false, "{}", row(key));
    }
    assert_eq!(row("stdout")["vm"]["value"], "hello\n");
    assert!(row("latency_median_ms")["vm"]["value"].is_number());
    assert!(row("host_memory_bytes")["container"]["value"].is_number());
    assert!(row("host_memory_bytes")["vm"]["value"].is_number());

    // Nothing is left behind: no containers remain.
    assert_eq!(env.root.ok(&["ps", "-a", "-q"]).trim(), "");
}

#[test]
fn compare_of_a_missing_image_fails_clearly() {
    let root = TestRoot::new();
    let err = root.fails(&["compare", "no-such-image:1"]);
    assert!(err.contains("no-such-image"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
