//! Helpers for the container-isolation end-to-end tests: skipping without root, running
//! `vessel run --isolation container`, and checking that nothing was left on the host.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestRoot;

/// Prints `SKIP: ...` and returns true when container tests cannot run here.
pub fn skip() -> bool {
    if !crate::common::is_root() {
        eprintln!("SKIP: container isolation needs root");
        return true;
    }
    if !Path::new(crate::common::BUSYBOX).exists() {
        eprintln!(
            "SKIP: {} (busybox-static) is missing",
            crate::common::BUSYBOX
        );
        return true;
    }
    false
}

/// `vessel --root R run --isolation container <args>` as a command, stdin closed.
pub fn run_cmd(root: &TestRoot, args: &[&str]) -> Command {
    let mut c = root.cmd();
    c.args(["run", "--isolation", "container"]).args(args);
    c.stdin(Stdio::null());
    c
}

/// Runs a container in the foreground and returns its output.
pub fn run(root: &TestRoot, args: &[&str]) -> Output {
    run_cmd(root, args).output().expect("run vessel")
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts the exit status, returning stdout.
pub fn run_ok(root: &TestRoot, args: &[&str]) -> String {
    let o = run(root, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "vessel run {args:?}:\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The `containers/` directory of a state root.
pub fn containers_dir(root: &TestRoot) -> PathBuf {
    root.path().join("containers")
}

/// Entries of `containers/`.
pub fn container_dirs(root: &TestRoot) -> Vec<String> {
    std::fs::read_dir(containers_dir(root))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points under the state root.
pub fn mounts_under(root: &TestRoot) -> Vec<String> {
    let want = root.path().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&want))
        .map(str::to_string)
        .collect()
}

/// cgroup directories of container `id` that exist (v1 controllers and v2).
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            for p in [e.path().join("vessel").join(id), e.path().join(id)] {
                if p.is_dir() {
                    found.push(p);
                }
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/vessel").join(id);
    if v2.is_dir() {
        found.push(v2);
    }
    found
}

/// `ps -a --format json` parsed.
pub fn ps_all(root: &TestRoot) -> Vec<serde_json::Value> {
    root.ok(&["ps", "-a", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("ps json line"))
        .collect()
}

/// The `ps` entry of container `name`.
pub fn ps_entry(root: &TestRoot, name: &str) -> Option<serde_json::Value> {
    ps_all(root).into_iter().find(|v| v["Names"] == name)
}

/// The pid of the detached supervisor of container `id`: the vessel process whose command
/// line names it.
pub fn supervisor_of(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("__supervise") && c.contains(id)
                })
                .unwrap_or(false)
        })
}

/// Polls `cond` for up to `secs` seconds.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The image's unpacked rootfs (the store holds exactly one image in these tests).
pub fn image_rootfs(root: &TestRoot) -> PathBuf {
    std::fs::read_dir(root.path().join("rootfs"))
        .expect("rootfs dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .expect("an unpacked image")
}

/// Makes a test that waits on a vessel process fail instead of hanging: after `secs`, kills
/// vessel (pid) and runs `vessel ps` on the root, whose crash recovery kills the container
/// and so closes the streams the test is reading.
pub fn watchdog(root: &TestRoot, pid: u32, secs: u64) {
    let root = root.path().to_path_buf();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if alive {
            eprintln!("watchdog: vessel {pid} still running after {secs} s; killing it");
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = Command::new(crate::common::vessel_bin())
                .arg("--root")
                .arg(&root)
                .args(["ps", "-a"])
                .output();
        }
    });
}
