//! `vessel kernel` and `vessel kernel install`, and the errors VM isolation gives when no
//! VM can run. No VM is booted here.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::TestRoot;

const KERNEL_DIR: &str = "/var/cache/vessel/kernel";

fn have_kernel() -> bool {
    if Path::new(KERNEL_DIR).join("vmlinuz").is_file() {
        return true;
    }
    eprintln!("SKIP: no guest kernel at {KERNEL_DIR} (run scripts/setup.sh)");
    false
}

fn json(root: &TestRoot, args: &[&str]) -> serde_json::Value {
    let out = root
        .cmd()
        .env_remove("VESSEL_KERNEL")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vessel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn install_then_describe() {
    if !have_kernel() {
        return;
    }
    let root = TestRoot::new();
    let release = std::fs::read_to_string(Path::new(KERNEL_DIR).join("version")).unwrap();
    let release = release.trim();
    let out = root
        .cmd()
        .args(["kernel", "install", "--from", KERNEL_DIR])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "install: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(release), "{stdout}");
    assert!(root.path().join("kernel/vmlinuz").is_file());
    assert!(root
        .path()
        .join("kernel/lib/modules")
        .join(release)
        .is_dir());

    let info = json(&root, &["kernel", "--json"]);
    assert_eq!(info["source"], "installed under the state root");
    assert_eq!(info["release"], release);
    let mods: Vec<&str> = info["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["virtio_mmio", "virtio_blk", "virtio_console", "overlay"] {
        assert!(mods.contains(&m), "{m} not packed: {mods:?}");
    }
    // The reason for the VMM choice is always given; on kvm_pvm it names it.
    let reason = info["vmm_reason"].as_str().unwrap();
    assert!(!reason.is_empty());
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(info["kvm_boots_linux"], false);
        assert!(reason.contains("kvm_pvm"), "{reason}");
        assert!(reason.contains("scripts/nested-kvm.sh"), "{reason}");
    }
    // Debian's bzImage is booted as the ELF vmlinux unpacked from it, cached under the root.
    let boot = info["boot_image"].as_str().unwrap();
    assert!(
        boot.starts_with(root.path().join("boot").to_str().unwrap()),
        "{boot}"
    );
    let elf = std::fs::read(boot).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
}

#[test]
fn install_from_a_deb() {
    if !have_kernel() || common::skip_without(&["dpkg-deb"]) {
        return;
    }
    let Some(deb) = std::fs::read_dir(KERNEL_DIR)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
    else {
        eprintln!("SKIP: no linux-image .deb kept in {KERNEL_DIR}");
        return;
    };
    let root = TestRoot::new();
    root.ok(&["kernel", "install", "--from", deb.to_str().unwrap()]);
    let info = json(&root, &["kernel", "--json"]);
    assert_eq!(info["source"], "installed under the state root");
    assert!(info["modules_dir"]
        .as_str()
        .unwrap()
        .starts_with(root.path().to_str().unwrap()));
}

#[test]
fn bad_kernels_are_refused_clearly() {
    let root = TestRoot::new();
    let err = root.fails(&["kernel", "install", "--from", "/nonexistent/kernel.deb"]);
    assert!(err.contains("/nonexistent/kernel.deb"), "{err}");
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not a kernel").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(junk.path(), dir.path().join("vmlinuz")).unwrap();
    let err = root.fails(&["kernel", "install", "--from", dir.path().to_str().unwrap()]);
    assert!(err.contains("not a bzImage"), "{err}");
}

#[test]
fn without_a_vmm_the_error_names_container_isolation() {
    if !have_kernel() {
        return;
    }
    let root = TestRoot::new();
    // No qemu on PATH and no KVM that boots Linux: VM isolation must say so, not fall back.
    let out = root
        .cmd()
        .env("PATH", "/nonexistent")
        .env("VESSEL_KVM_BOOTS_LINUX", "0")
        .args(["kernel", "--kernel", KERNEL_DIR, "--vmm", "qemu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("qemu-system-x86_64 is not installed"),
        "{stdout}"
    );
    assert!(stdout.contains("--isolation container"), "{stdout}");
    let out = root
        .cmd()
        .env("VESSEL_KVM_BOOTS_LINUX", "0")
        .args(["kernel", "--kernel", KERNEL_DIR, "--vmm", "builtin"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("--vmm builtin needs a KVM that runs a full Linux guest"),
        "{stdout}"
    );
}
