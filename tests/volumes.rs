//! Volumes, in both isolation modes (VM mode over virtio-fs, on QEMU here and on the
//! built-in VMM in the nested-KVM guest): host directories and single files, `:ro`, named
//! volumes and `vessel volume`, data integrity both ways, metadata, odd names, hard links,
//! and that nothing outside the shared directory can be reached through it.

#[macro_use]
mod common;
#[path = "common/container.rs"]
mod ctr;
mod vm_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{TestImage, TestRoot};
use sha2::{Digest, Sha256};

/// `vessel` for one mode: a container-mode root, or a VM environment for one VMM.
enum Mode {
    Container { root: TestRoot, image: String },
    Vm(vm_support::VmEnv),
}

impl Mode {
    fn container() -> Option<Mode> {
        if ctr::skip() {
            return None;
        }
        let root = TestRoot::new();
        let image = root.load(&TestImage::new("vessel-test/vol:latest"));
        Some(Mode::Container { root, image })
    }

    fn vm(vmm: &str) -> Option<Mode> {
        vm_support::setup(vmm).map(Mode::Vm)
    }

    fn root(&self) -> &Path {
        match self {
            Mode::Container { root, .. } => root.path(),
            Mode::Vm(env) => env.root.path(),
        }
    }

    fn vessel(&self, args: &[&str]) -> Command {
        match self {
            Mode::Container { root, .. } => {
                let mut c = root.cmd();
                c.args(args).stdin(Stdio::null());
                c
            }
            Mode::Vm(env) => env.cmd(args),
        }
    }

    fn run(&self, opts: &[&str], script: &str) -> Output {
        let (isolation, image, vmm) = match self {
            Mode::Container { image, .. } => ("container", image.as_str(), None),
            Mode::Vm(env) => ("vm", env.image.as_str(), Some(env.vmm.as_str())),
        };
        let mut args = vec!["run", "--rm", "--isolation", isolation];
        if let Some(v) = vmm {
            args.extend(["--vmm", v]);
        }
        args.extend_from_slice(opts);
        args.extend([image, "sh", "-c", script]);
        self.vessel(&args).output().unwrap()
    }

    fn run_ok(&self, opts: &[&str], script: &str) -> String {
        let out = self.run(opts, script);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{opts:?}:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// 50 MB each way with matching digests; owner, mode and mtime both ways; odd names and
/// hard links; a single file; `:ro`.
fn data_and_metadata(m: &Mode) {
    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    // Host → container: 50 MB of noise.
    let mut big = vec![0u8; 50 << 20];
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(s.join("big"), &big).unwrap();
    let want = sha256_hex(&big);
    drop(big);
    // Metadata the container must see as the host set it.
    let meta = s.join("meta");
    std::fs::write(&meta, "m").unwrap();
    std::os::unix::fs::chown(&meta, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&meta, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let _ = Command::new("touch")
        .args(["-m", "-d", "@1000000000"])
        .arg(&meta)
        .status();
    // Odd names, and a hard link.
    for name in ["with space", "-dash", "ünï©ødé", "quote'\"", "a\\b"] {
        std::fs::write(s.join(name), name).unwrap();
    }
    std::fs::write(s.join("linked"), "one inode").unwrap();
    std::fs::hard_link(s.join("linked"), s.join("linked2")).unwrap();
    let single = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(single.path(), "just this file\n").unwrap();

    let data = format!("{}:/data", s.display());
    let file = format!("{}:/etc/single.conf:ro", single.path().display());
    let script = "sha256sum /data/big | cut -d' ' -f1; \
        stat -c 'meta %u %g %a %Y' /data/meta; \
        for f in 'with space' -dash 'ünï©ødé' \"quote'\\\"\" 'a\\b'; do cat \"/data/$f\"; echo; done; \
        stat -c 'links %h %i' /data/linked /data/linked2; \
        cat /etc/single.conf; echo x > /etc/single.conf 2>/dev/null || echo single-ro; \
        dd if=/dev/urandom of=/data/out bs=1M count=50 2>/dev/null; \
        sha256sum /data/out | cut -d' ' -f1; \
        echo written > /data/new; chown 4321:8765 /data/new; chmod 604 /data/new; \
        touch -d @1500000000 /data/new; sync";
    let out = m.run_ok(&["-v", &data, "-v", &file], script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], want, "50 MB host → container");
    assert_eq!(lines[1], "meta 1234 5678 640 1000000000", "{out}");
    assert_eq!(
        &lines[2..7],
        ["with space", "-dash", "ünï©ødé", "quote'\"", "a\\b"],
        "{out}"
    );
    let links: Vec<&str> = lines[7..9]
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(links, ["2", "2"], "{out}");
    let inodes: Vec<&str> = lines[7..9]
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(inodes[0], inodes[1], "hard links: {out}");
    assert_eq!(lines[9], "just this file", "{out}");
    assert_eq!(lines[10], "single-ro", "{out}");
    // Container → host.
    let written = std::fs::read(s.join("out")).unwrap();
    assert_eq!(written.len(), 50 << 20);
    assert_eq!(lines[11], sha256_hex(&written), "50 MB container → host");
    let new = std::fs::metadata(s.join("new")).unwrap();
    assert_eq!(
        (new.uid(), new.gid(), new.mode() & 0o7777, new.mtime()),
        (4321, 8765, 0o604, 1_500_000_000)
    );
    assert_eq!(
        std::fs::read_to_string(single.path()).unwrap(),
        "just this file\n"
    );

    // :ro: writes fail with EROFS, and the host sees nothing.
    let ro = format!("{}:/data:ro", s.display());
    let out = m.run_ok(
        &["-v", &ro],
        "touch /data/nope 2>&1 | grep -c 'Read-only file system'; cat /data/linked",
    );
    assert_eq!(out, "1\none inode", "{out}");
    assert!(!s.join("nope").exists());
}

/// Through the share, symlinks and `..` resolve inside the container, never on the host.
fn nothing_outside_the_share(m: &Mode) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "HOST-SECRET\n").unwrap();
    let share = outside.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), share.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("rel")).unwrap();
    std::os::unix::fs::symlink("/", share.join("root")).unwrap();
    let data = format!("{}:/data", share.display());
    let out = m.run(
        &["-v", &data],
        "cat /data/abs /data/rel /data/../secret /data/root/secret 2>/dev/null; \
         ls /data/..; ls /data/root/ | head -3; echo done",
    );
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("done"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("HOST-SECRET"),
        "reached the host: {stdout}"
    );
    // `..` of the mount point is the container's root, not the share's host parent.
    assert!(!stdout.contains("share"), "{stdout}");
    assert!(stdout.contains("bin"), "{stdout}");
}

/// Named volumes persist across containers; `vessel volume` lists, inspects and removes
/// them, refusing one in use unless -f; a missing host path is an error.
fn named_volumes(m: &Mode) {
    let out = m.run_ok(&["-v", "keep:/v"], "echo first > /v/f; echo ok");
    assert_eq!(out, "ok\n");
    let out = m.run_ok(&["-v", "keep:/again:ro"], "cat /again/f");
    assert_eq!(out, "first\n");
    let ls = m.vessel(&["volume", "ls", "-q"]).output().unwrap();
    assert_eq!(text(&ls).0, "keep\n");
    // In use by a stopped (not removed) container.
    let r = m
        .vessel(&[
            "run",
            "--name",
            "user",
            "--isolation",
            match m {
                Mode::Container { .. } => "container",
                Mode::Vm(_) => "vm",
            },
            "-v",
            "keep:/v",
            match m {
                Mode::Container { image, .. } => image,
                Mode::Vm(env) => &env.image,
            },
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r).1);
    let inspect = m.vessel(&["volume", "inspect", "keep"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v[0]["UsedBy"].as_array().unwrap().len(), 1, "{v}");
    assert!(v[0]["Mountpoint"]
        .as_str()
        .unwrap()
        .starts_with(m.root().to_str().unwrap()));
    let rm = m.vessel(&["volume", "rm", "keep"]).output().unwrap();
    assert_ne!(rm.status.code(), Some(0));
    assert!(text(&rm).1.contains("in use"), "{}", text(&rm).1);
    let rm = m.vessel(&["volume", "rm", "-f", "keep"]).output().unwrap();
    assert_eq!(rm.status.code(), Some(0), "{}", text(&rm).1);
    let ls = m.vessel(&["volume", "ls", "-q"]).output().unwrap();
    assert_eq!(text(&ls).0, "");
    let _ = m.vessel(&["rm", "user"]).output();

    let out = m.run(&["-v", "/no/such/dir:/x"], "true");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out).1.contains("/no/such/dir"), "{}", text(&out).1);
}

in_each_mode!(data_and_metadata, nothing_outside_the_share, named_volumes);
