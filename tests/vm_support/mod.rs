//! What the VM-isolation tests share: their prerequisites (QEMU, the Debian guest kernel
//! scripts/setup.sh fetches, a static guest agent), a state root with the busybox test
//! image loaded, and `vessel` commands with the VM environment set.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::common::{self, TestImage, TestRoot};

/// Where scripts/setup.sh leaves Debian's cloud kernel.
pub const DEBIAN_KERNEL_DIR: &str = "/var/cache/vessel/kernel";

/// The guest kernel the VM tests boot: vessel's own by default (`vessel kernel build`,
/// which scripts/test.sh runs first; here it is a cache hit, or the build itself), or with
/// `VESSEL_TEST_KERNEL=debian` Debian's cloud kernel from scripts/setup.sh, or a path.
pub fn kernel_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var("VESSEL_TEST_KERNEL").as_deref() {
        Ok("debian") => {
            let d = PathBuf::from(DEBIAN_KERNEL_DIR);
            if d.join("vmlinuz").is_file() {
                Ok(d)
            } else {
                Err(format!(
                    "no guest kernel at {DEBIAN_KERNEL_DIR} (run scripts/setup.sh)"
                ))
            }
        }
        Ok(p) if !p.is_empty() && p != "own" => Ok(PathBuf::from(p)),
        _ => {
            let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
                .args(["kernel", "build", "--no-install", "--json"])
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("running vessel kernel build: {e}"))?;
            // Everything it needs is installable: a failure is the test's failure.
            assert!(out.status.success(), "vessel kernel build failed");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("vessel kernel build --json: {e}"))?;
            Ok(PathBuf::from(v["dir"].as_str().expect("dir")))
        }
    })
    .clone()
}

/// The release of [`kernel_dir`]'s kernel, as `vessel kernel` reads it.
pub fn kernel_release() -> String {
    let dir = kernel_dir().expect("a guest kernel");
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .arg("kernel")
        .arg("--json")
        .arg("--kernel")
        .arg(&dir)
        .env(
            "VESSEL_ROOT",
            std::env::temp_dir().join("vessel-test-kernel-root"),
        )
        .output()
        .expect("vessel kernel");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kernel --json");
    v["release"].as_str().expect("release").to_string()
}

/// Builds the static guest agent once per test binary (cargo is not holding the build lock
/// while tests run), or takes `$VESSEL_AGENT`.
fn agent() -> Result<PathBuf, String> {
    static AGENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("VESSEL_AGENT") {
                return Ok(PathBuf::from(p));
            }
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
            let out = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--release", "-p", "vessel-agent"])
                .args(["--target", "x86_64-unknown-linux-musl", "--manifest-path"])
                .arg(&manifest)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the musl guest agent failed (rustup target add x86_64-unknown-linux-musl?): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            Ok(target.join("x86_64-unknown-linux-musl/release/vessel-agent"))
        })
        .clone()
}

/// A state root with the test image loaded, ready for VM runs with one backend.
pub struct VmEnv {
    /// The state root.
    pub root: TestRoot,
    /// The loaded image's reference.
    pub image: String,
    /// `--vmm` value.
    pub vmm: String,
    /// The guest kernel ([`kernel_dir`]).
    pub kernel: PathBuf,
    agent: PathBuf,
}

/// Checks the prerequisites for VM tests on `vmm`; prints `SKIP: ...` and returns None
/// when one is missing.
pub fn setup(vmm: &str) -> Option<VmEnv> {
    if !common::is_root() {
        eprintln!("SKIP: VM tests run as root (container records, mounts)");
        return None;
    }
    if common::skip_without(&["mke2fs", common::BUSYBOX]) {
        return None;
    }
    let kernel = match kernel_dir() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return None;
        }
    };
    let agent = match agent() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return None;
        }
    };
    let root = TestRoot::new();
    let mut env = VmEnv {
        root,
        image: String::new(),
        vmm: vmm.to_string(),
        kernel,
        agent,
    };
    // Ask vessel itself whether this backend can run here.
    let out = env
        .cmd(&["kernel", "--json", "--vmm", vmm])
        .output()
        .expect("vessel kernel");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if info["vmm"].is_null() {
        eprintln!(
            "SKIP: --vmm {vmm} cannot run a Linux guest on this host: {}",
            info["vmm_reason"]
                .as_str()
                .unwrap_or("vessel kernel failed")
        );
        return None;
    }
    let image = TestImage::new("vessel-test/vm:latest");
    env.image = env.root.load(&image);
    Some(env)
}

impl VmEnv {
    /// `vessel --root R ARGS` with the VM environment (kernel, agent) set. The boot cache
    /// (the unpacked kernel, the initramfs) is shared by every test's root: unpacking the
    /// kernel anew for each one costs seconds, tens of them in the nested-KVM guest.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.root.cmd();
        c.env("VESSEL_KERNEL", &self.kernel)
            .env("VESSEL_AGENT", &self.agent)
            .env(
                "VESSEL_BOOT_CACHE",
                std::env::temp_dir().join("vessel-test-boot-cache"),
            )
            .env_remove("VESSEL_KERNEL_ARGS")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `vessel run --vmm V [opts...] IMAGE [cmd...]`, stdin closed, output captured.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        self.run_cmd(opts, cmd).output().expect("run vessel")
    }

    /// The command `run` would execute.
    pub fn run_cmd(&self, opts: &[&str], cmd: &[&str]) -> Command {
        let mut args = vec!["run", "--vmm", &self.vmm];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.cmd(&args)
    }

    /// The state root's containers directory entries.
    pub fn container_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.path().join("containers"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Host processes left behind by this state root: those whose command line mentions
    /// it (supervisors, virtiofsd) and all their descendants (the jailed VMM's own command
    /// line names only paths inside its jail; it dies with its supervisor).
    pub fn leftover_processes(&self) -> Vec<String> {
        let needle = self.root.path().to_string_lossy().into_owned();
        let me = std::process::id() as i32;
        let procs: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat[stat.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                let c = std::fs::read(e.path().join("cmdline")).ok()?;
                Some((pid, ppid, String::from_utf8_lossy(&c).replace('\0', " ")))
            })
            .filter(|(pid, _, _)| *pid != me)
            .collect();
        let mut found: Vec<i32> = procs
            .iter()
            .filter(|(_, _, c)| c.contains(&needle))
            .map(|(pid, _, _)| *pid)
            .collect();
        loop {
            let before = found.len();
            for (pid, ppid, _) in &procs {
                if found.contains(ppid) && !found.contains(pid) {
                    found.push(*pid);
                }
            }
            if found.len() == before {
                break;
            }
        }
        procs
            .into_iter()
            .filter(|(pid, _, _)| found.contains(pid))
            .map(|(_, _, c)| c)
            .collect()
    }
}

impl Drop for VmEnv {
    /// A test that fails half-way must not leave a detached VM running: remove every
    /// container of this root (stopping it first) before the root itself goes.
    fn drop(&mut self) {
        let Ok(out) = self.cmd(&["ps", "-aq"]).output() else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.cmd(&args).output();
        }
    }
}

/// stdout, stderr as strings.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
