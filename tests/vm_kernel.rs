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

/// The entries of a newc cpio archive, in order.
fn cpio_names(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    let hex = |b: &[u8]| usize::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    while at + 110 <= data.len() {
        let h = &data[at..at + 110];
        assert_eq!(&h[..6], b"070701", "newc magic at {at}");
        let size = hex(&h[54..62]);
        let namesize = hex(&h[94..102]);
        let name = String::from_utf8_lossy(&data[at + 110..at + 110 + namesize - 1]).into_owned();
        let data_at = (at + 110 + namesize).next_multiple_of(4);
        at = (data_at + size).next_multiple_of(4);
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
    }
    names
}

#[test]
fn build_installs_vessels_own_kernel_with_its_record() {
    if !common::is_root() {
        eprintln!("SKIP: vessel kernel build installs its build dependencies as root");
        return;
    }
    let root = TestRoot::new();
    // scripts/test.sh builds it first; here it comes from the cache (or is built).
    let out = root.run(&["kernel", "build"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("VM isolation boots it by default"),
        "{stdout}"
    );
    let dir = root.path().join("kernel");
    assert!(dir.join("vmlinuz").is_file());
    assert!(!dir.join("lib/modules").read_dir().unwrap().any(|_| true));
    // What discovery finds by default, and how it says it was made.
    let agent = std::env::var("VESSEL_AGENT").ok();
    let mut cmd = root.cmd();
    cmd.env_remove("VESSEL_KERNEL").args(["kernel", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&cmd.stdin(Stdio::null()).output().unwrap().stdout).unwrap();
    assert_eq!(v["source"], "installed under the state root");
    assert!(v["release"].as_str().unwrap().ends_with("-vessel"), "{v}");
    assert!(v["modules_dir"].is_null(), "{v}");
    let origin = v["origin"].as_str().unwrap();
    assert!(
        origin.starts_with("vessel kernel build: linux-source-6.1 6.1."),
        "{origin}"
    );
    assert!(
        origin.contains("guest-kernel/config-6.1-x86_64"),
        "{origin}"
    );
    // The cache's record matches what was installed, byte for byte.
    let built: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("origin.json")).unwrap()).unwrap();
    let vmlinuz = std::fs::read(dir.join("vmlinuz")).unwrap();
    use sha2::Digest;
    assert_eq!(
        built["vmlinuz_sha256"],
        hex::encode(sha2::Sha256::digest(&vmlinuz))
    );
    assert!(built["build_seconds"].as_f64().unwrap() > 0.0);
    // Its initramfs holds the agent alone: nothing to load at boot.
    if agent.is_some() {
        let initramfs = v["initramfs"].as_str().expect("initramfs packed");
        let names = cpio_names(&std::fs::read(initramfs).unwrap());
        assert_eq!(
            names,
            ["dev", "proc", "sys", "run", "tmp", "dev/console", "init"]
        );
    }
    // A second build is a cache hit, and says so.
    let out = root.run(&["kernel", "build", "--no-install", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["fresh"], false);
}

#[test]
fn a_config_that_does_not_take_is_refused_before_compiling() {
    if !common::is_root() {
        eprintln!("SKIP: vessel kernel build installs its build dependencies as root");
        return;
    }
    let root = TestRoot::new();
    let frag = root.path().join("bad.config");
    // VIRTIO_BLK depends on VIRTIO and BLOCK, which this fragment does not turn on.
    std::fs::write(&frag, "CONFIG_64BIT=y\nCONFIG_VIRTIO_BLK=y\n").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = root
        .cmd()
        .env("VESSEL_KERNEL_BUILD_CACHE", cache.path())
        .args(["kernel", "build", "--config"])
        .arg(&frag)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the config fragment did not take")
            && stderr.contains("CONFIG_VIRTIO_BLK=y"),
        "{stderr}"
    );
    // Nothing was stored, the unpacked tree is gone, and the root has no kernel.
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!root.path().join("kernel").exists());
}
