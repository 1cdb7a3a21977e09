//! scripts/nested-kvm.sh, the harness that gives the built-in VMM's tests a real KVM on
//! hosts whose own cannot boot Linux: streams and exit status, the shared paths (read-only
//! root; /tmp and the working directory writable), and that a timeout, a crash of L1 and
//! Ctrl-C each end it with its own status and one line, leaving no process or mount behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One L1 at a time: two TCG guests on a 2-core machine would each crawl.
static SERIAL: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nested-kvm.sh")
}

/// None (after printing why) where the harness cannot run here.
fn prerequisites() -> Option<std::sync::MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the nested-KVM harness runs as root (virtiofsd shares the host's root)");
        return None;
    }
    for need in [
        "/var/cache/vessel/kernel/vmlinuz",
        "/usr/lib/qemu/virtiofsd",
        "/bin/busybox",
    ] {
        if !Path::new(need).exists() {
            eprintln!("SKIP: {need} missing (run scripts/setup.sh)");
            return None;
        }
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn harness(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(script()).args(args).current_dir(cwd);
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Processes in process group `pgid` (the harness and everything it started).
fn group_members(pgid: i32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            let end = stat.rfind(')')?;
            let pgrp: i32 = stat[end + 2..].split_whitespace().nth(2)?.parse().ok()?;
            (pgrp == pgid).then(|| stat[..end + 1].to_string())
        })
        .collect()
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn streams_status_and_shared_paths() {
    let Some(_l1) = prerequisites() else { return };
    // A working directory outside /tmp, so that its own share is exercised.
    let cwd = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let before = mounts();
    let out = harness(
        cwd.path(),
        &[
            "--timeout",
            "300",
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; echo \"arg=$0\"; \
             test -c /dev/kvm && echo kvm; pwd; \
             touch /usr/.nested-kvm-probe 2>/dev/null || echo root-read-only; \
             echo from-l1 > \"$1/in-tmp\" && echo from-l1 > in-cwd; exit 7",
            "two words\\and a backslash",
            scratch.path().to_str().unwrap(),
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.starts_with("to-stdout\n"), "stdout: {stdout}");
    assert!(!stdout.contains("to-stderr"), "stdout: {stdout}");
    assert!(stderr.contains("to-stderr\n"), "stderr: {stderr}");
    assert!(
        stdout.contains("arg=two words\\and a backslash\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kvm\n"),
        "no /dev/kvm in L1: {stdout}\n{stderr}"
    );
    let real_cwd = cwd.path().canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("{}\n", real_cwd.display())),
        "{stdout}"
    );
    assert!(stdout.contains("root-read-only\n"), "{stdout}");
    assert!(!Path::new("/usr/.nested-kvm-probe").exists());
    for f in [scratch.path().join("in-tmp"), cwd.path().join("in-cwd")] {
        assert_eq!(
            std::fs::read_to_string(&f).unwrap_or_default(),
            "from-l1\n",
            "{}",
            f.display()
        );
    }
    assert_eq!(mounts(), before, "the harness left mounts behind");
}

#[test]
fn a_timeout_is_reported() {
    let Some(_l1) = prerequisites() else { return };
    let cwd = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let out = harness(cwd.path(), &["--timeout", "25", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(124), "stderr: {stderr}");
    assert!(stderr.contains("timed out after 25 s"), "stderr: {stderr}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());

    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nested-kvm:"))
        .collect();
    assert_eq!(lines.len(), 1, "one line says what happened: {stderr}");
}

#[test]
fn a_crash_of_l1_is_reported() {
    let Some(_l1) = prerequisites() else { return };
    let cwd = tempfile::tempdir().unwrap();
    let t = Instant::now();
    // A kernel panic in L1: reboot=t and -no-reboot turn it into QEMU's exit, with no status.
    let out = harness(
        cwd.path(),
        &[
            "--timeout",
            "200",
            "--",
            "sh",
            "-c",
            "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger; sleep 600",
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(t.elapsed() < Duration::from_secs(150), "{:?}", t.elapsed());
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("nested-kvm:"))
        .collect();
    assert_eq!(lines.len(), 1, "one line says what happened: {stderr}");
    assert!(lines[0].contains("L1 crashed"), "stderr: {stderr}");
    assert!(
        lines[0].contains("Kernel panic"),
        "it names the panic: {stderr}"
    );
}

#[test]
fn ctrl_c_ends_qemu_and_virtiofsd() {
    let Some(_l1) = prerequisites() else { return };
    let cwd = tempfile::tempdir().unwrap();
    let before = mounts();
    // Its own process group, as a shell gives a foreground job: Ctrl-C signals the group.
    let mut child = harness(
        cwd.path(),
        &["--timeout", "300", "--", "sh", "-c", "echo up; sleep 600"],
    )
    .process_group(0)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pgid = child.id() as i32;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    let members = group_members(pgid);
    assert!(
        members.iter().any(|m| m.contains("qemu-system"))
            && members.iter().any(|m| m.contains("virtiofsd")),
        "qemu and virtiofsd run in the harness's group: {members:?}"
    );
    // SAFETY: kill(2) on a process group we created; no memory is involved.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("interrupted"), "stderr: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(group_members(pgid), Vec::<String>::new(), "left running");
    assert_eq!(mounts(), before, "the harness left mounts behind");
}
