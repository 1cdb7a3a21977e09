//! A full disk in the middle of a load: a clear one-line error, no panic, and a store
//! that is still consistent (no image, no half-written blob or tree) and usable.

mod common;

use std::process::Command;

use common::{is_root, Entry, Layer, TestImage};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vessel-full"])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        ok.then_some(SmallFs { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Bytes no compressor shrinks, so the layer really takes its size on disk.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn load_onto_a_full_disk_fails_cleanly_and_leaves_the_store_consistent() {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let Some(fs) = SmallFs::mount("6m") else {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    };
    let root = fs.dir.path().join("store");
    // The busybox base fits; the 8 MiB layer on top cannot, neither as a blob nor unpacked.
    let img = TestImage::new("vessel-test/full:1")
        .layer(Layer::new(vec![Entry::file("big/noise", &noise(8 << 20))]));
    let scratch = tempfile::tempdir().unwrap();
    let archive = img.write_oci_archive(scratch.path());

    let vessel = |args: &[&str]| {
        Command::new(common::vessel_bin())
            .arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("VESSEL_ROOT")
            .output()
            .expect("run vessel")
    };
    let out = vessel(&["load", "-i", archive.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("No space left on device"),
        "the error names the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("full disk: {}", stderr.trim());
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(
        stderr.matches("os error 28").count(),
        1,
        "cause once: {stderr}"
    );

    // Nothing of the failed load remains, and the store still checks clean and works.
    let listed = vessel(&["images", "-q"]);
    assert!(listed.status.success());
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "");
    let check = vessel(&["system", "check"]);
    assert!(
        check.status.success(),
        "system check after a full disk: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for dir in ["tmp", "rootfs"] {
        let left: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{dir}/ keeps {left:?}");
    }
    // The same store still loads an image that fits.
    let ok = vessel(&[
        "load",
        "-i",
        TestImage::new("vessel-test/small:1")
            .write_oci_archive(scratch.path())
            .to_str()
            .unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
