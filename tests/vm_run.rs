//! `vessel run` with VM isolation, end to end: the real binary boots the real guest kernel
//! with the guest agent, through QEMU (TCG here) and through the built-in VMM where this
//! host's KVM can run Linux (skipped otherwise, saying why).

mod common;
mod vm_support;

use std::path::Path;
use std::time::{Duration, Instant};

use std::io::Write;
use std::process::Stdio;

use vm_support::{setup, text};

/// This kernel instance's boot id: a guest's differs even where it runs the same release
/// as the host (as in the nested-KVM guest, whose kernel is the one vessel boots).
fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
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
            "echo to-stdout; echo to-stderr >&2; uname -r; cat /proc/sys/kernel/random/boot_id; echo procs=$(ls /proc | grep -c '^[0-9]'); cat /proc/1/comm; (sleep 0.2 &); sleep 1; echo zombies=$(ps -o stat | grep -c '^Z'); exit 3",
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
    let boot_id = stdout.lines().nth(2).unwrap_or_default();
    assert!(
        boot_id.len() == 36 && boot_id != host_boot_id(),
        "guest boot id {boot_id:?} vs host {}",
        host_boot_id()
    );
    assert_eq!(release, vm_support::kernel_release());
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
    // PID 1 is the container's own process, in its own PID namespace (the agent, PID 1
    // of the guest, is not in it), as in container mode.
    assert!(
        stdout.contains("\nsh\n"),
        "PID 1 in the container: {stdout}"
    );
    // The orphaned `sleep` was reparented to the container's PID 1, which reaped it.
    assert!(
        stdout.contains("zombies=0\n"),
        "zombies in the guest: {stdout}"
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

/// A process killed by a signal reports 128 + the signal; --read-only and --hostname apply.
/// (The container's PID 1 cannot SIGKILL itself, in a VM as in container mode: the kill
/// comes from `vessel kill`.)
fn killed_by_signal(vmm: &str) {
    use std::io::{BufRead, BufReader};
    let Some(env) = setup(vmm) else { return };
    let mut child = env
        .run_cmd(
            &["--rm", "--read-only", "--hostname", "vm-box", "--name", "sig"],
            &[
                "sh",
                "-c",
                "hostname; touch /x 2>/dev/null || echo read-only; kill -9 $$; echo ready; sleep 100",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let got: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(got, ["vm-box", "read-only", "ready"]);
    let out = env.cmd(&["kill", "sig"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "kill: {}", text(&out).1);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
}

/// stdin piped in; -e, -w, -u and --entrypoint override the image's config.
fn stdin_and_overrides(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let mut child = env
        .run_cmd(
            &[
                "--rm",
                "-i",
                "--entrypoint",
                "sh",
                "-e",
                "FOO=bar baz",
                "-w",
                "/work/dir",
                "-u",
                "app",
            ],
            &[
                "-c",
                "cat; echo FOO=$FOO; pwd; id -u; id -g; echo HOME=$HOME",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stdout, "line one\nline two\nFOO=bar baz\n/work/dir\n1000\n1000\nHOME=/home/app\n",
        "stderr: {stderr}"
    );
}

/// Writes land in the container's own disk, never in the image; two VMs of one image
/// are independent; `rm` and `--rm` leave nothing.
fn writes_are_per_container(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let writer = env
        .run_cmd(
            &["--name", "writer"],
            &[
                "sh",
                "-c",
                "echo from-writer > /marker; sleep 1; cat /marker",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second VM of the same image at the same time, sized with --cpus and --memory.
    let reader = env.run(
        &["--rm", "--cpus", "2", "--memory", "200m"],
        &[
            "sh",
            "-c",
            "sleep 1; cat /marker || echo no-marker; echo cpus=$(nproc); grep MemTotal /proc/meminfo",
        ],
    );
    let writer = writer.wait_with_output().unwrap();
    let (wout, werr) = text(&writer);
    assert_eq!(writer.status.code(), Some(0), "stderr: {werr}");
    assert_eq!(wout, "from-writer\n");
    let (rout, rerr) = text(&reader);
    assert!(
        rout.contains("no-marker"),
        "the second VM saw the first one's write: {rout} {rerr}"
    );
    assert!(rout.contains("cpus=2\n"), "--cpus 2: {rout}");
    let mem_kib: u64 = rout
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    assert!(
        (150_000..=204_800).contains(&mem_kib),
        "--memory 200m: MemTotal {mem_kib} kB"
    );

    // The image's rootfs is untouched.
    for img in std::fs::read_dir(env.root.path().join("rootfs"))
        .unwrap()
        .flatten()
    {
        assert!(
            !img.path().join("marker").exists(),
            "write leaked into the image rootfs"
        );
    }
    // The write is in the writer's container disk (the overlay's upper layer).
    let dirs = env.container_dirs();
    assert_eq!(dirs.len(), 1, "only the named container remains: {dirs:?}");
    let disk = dirs[0].join("disk.ext4");
    if common::have("debugfs") {
        let o = std::process::Command::new("debugfs")
            .args(["-R", "cat /upper/marker"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "from-writer\n");
    }
    let rm = env.cmd(&["rm", "writer"]).output().unwrap();
    assert!(rm.status.success(), "rm: {:?}", text(&rm));
    assert!(
        env.container_dirs().is_empty(),
        "rm left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A detached VM container: logs, exec into the running VM, stop, rm.
fn detached_lifecycle(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let out = env
        .run_cmd(
            &["-d", "--name", "bg"],
            &["sh", "-c", "echo state > /tmp/state; echo started; trap 'echo got-term; exit 7' TERM; while true; do sleep 0.2; done"],
        )
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "run -d: {stdout} {stderr}");
    let logs = || text(&env.cmd(&["logs", "bg"]).output().unwrap()).0;
    wait_for(
        "the detached container's output",
        Duration::from_secs(90),
        || logs().contains("started"),
    );
    let ps = text(&env.cmd(&["ps"]).output().unwrap()).0;
    assert!(ps.contains("bg"), "ps: {ps}");

    // exec runs in the same VM: it sees the main process's /tmp file and its own kernel.
    let ex = env
        .cmd(&[
            "exec",
            "bg",
            "sh",
            "-c",
            "cat /tmp/state; echo exec-err >&2; cat /proc/sys/kernel/random/boot_id; exit 4",
        ])
        .output()
        .unwrap();
    let (eout, eerr) = text(&ex);
    assert_eq!(ex.status.code(), Some(4), "exec: {eout} {eerr}");
    assert!(eout.starts_with("state\n"), "exec stdout: {eout}");
    assert!(
        !eout.contains("exec-err") && eerr.contains("exec-err"),
        "exec streams: {eout} / {eerr}"
    );
    assert_ne!(eout.lines().nth(1).unwrap_or_default(), host_boot_id());
    // docker's codes when the command cannot be run.
    let ex = env
        .cmd(&["exec", "bg", "no-such-command"])
        .output()
        .unwrap();
    assert_eq!(
        ex.status.code(),
        Some(127),
        "exec of a missing command: {:?}",
        text(&ex)
    );
    assert!(text(&ex).1.contains("no-such-command"), "{:?}", text(&ex));
    let ex = env.cmd(&["exec", "bg", "/etc/passwd"]).output().unwrap();
    assert_eq!(
        ex.status.code(),
        Some(126),
        "exec of a non-executable: {:?}",
        text(&ex)
    );
    // exec -t: the process gets a terminal in the guest; its output comes back through it.
    let ex = env
        .cmd(&["exec", "-t", "bg", "sh", "-c", "tty; exit 5"])
        .output()
        .unwrap();
    let (tout, terr) = text(&ex);
    assert_eq!(ex.status.code(), Some(5), "exec -t: {tout} {terr}");
    assert!(tout.starts_with("/dev/pts/"), "exec -t stdout: {tout:?}");

    let stop = env.cmd(&["stop", "bg"]).output().unwrap();
    assert!(stop.status.success(), "stop: {:?}", text(&stop));
    let ps = text(&env.cmd(&["ps", "-a"]).output().unwrap()).0;
    assert!(ps.contains("xited"), "ps -a after stop: {ps}");
    assert!(
        logs().contains("got-term"),
        "the process saw SIGTERM: {}",
        logs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "after stop: {:?}",
        env.leftover_processes()
    );
    let rm = env.cmd(&["rm", "bg"]).output().unwrap();
    assert!(rm.status.success(), "rm: {:?}", text(&rm));
    assert!(
        env.container_dirs().is_empty(),
        "rm left {:?}",
        env.container_dirs()
    );
}

/// A kernel that cannot start its init fails the run quickly, with the kernel's last words.
fn broken_kernel_cmdline_fails_fast(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let t = Instant::now();
    let out = env
        .run_cmd(&["--rm"], &["true"])
        .env("VESSEL_KERNEL_ARGS", "rdinit=/no/such/init")
        .env("VESSEL_BOOT_TIMEOUT", "60")
        .output()
        .unwrap();
    let took = t.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(125),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("kernel panic"), "stderr: {stderr}");
    assert!(
        stderr.contains("Kernel panic - not syncing"),
        "stderr: {stderr}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        env.container_dirs().is_empty(),
        "left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );
}

/// A VMM that dies under a running process, and a boot that misses its deadline, are each
/// reported in bounded time with the VM's logs, and leave nothing behind.
fn vmm_crash_and_boot_timeout_are_reported(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let mut child = env
        .run_cmd(&["--rm"], &["sh", "-c", "echo up; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the VM to be up: its process printed (so the agent runs; a fixed sleep
    // is too short on a loaded machine) and its pid file exists.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child_stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match std::io::Read::read(&mut child_stdout, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if all.windows(3).any(|w| w == b"up\n") {
                        let _ = tx.send(());
                    }
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the container printed `up`");
    let mut pid = None;
    wait_for("the VMM's pid file", Duration::from_secs(30), || {
        pid = env
            .container_dirs()
            .first()
            .and_then(|d| std::fs::read_to_string(d.join("vmm.pid")).ok())
            .and_then(|p| p.trim().parse::<i32>().ok());
        pid.is_some()
    });
    let t = Instant::now();
    // SAFETY: kill takes plain integers; the pid is this test's VMM.
    unsafe { libc::kill(pid.unwrap(), libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let stdout = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(125),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("the VM closed the agent channel"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("signal: 9"), "stderr: {stderr}");
    assert!(
        env.container_dirs().is_empty(),
        "left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );

    let t = Instant::now();
    let out = env
        .run_cmd(&["--rm"], &["true"])
        .env("VESSEL_BOOT_TIMEOUT", "0.3")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(125),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("within 300ms"), "stderr: {stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        env.container_dirs().is_empty(),
        "left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );
}

/// docker's code when the container's command does not exist, with the reason on stderr.
fn missing_command_is_127(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let out = env.run(&["--rm"], &["no-such-command", "arg"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("no-such-command"), "stderr: {stderr}");
    assert!(
        env.container_dirs().is_empty(),
        "left {:?}",
        env.container_dirs()
    );
    assert!(
        env.leftover_processes().is_empty(),
        "left behind: {:?}",
        env.leftover_processes()
    );
}

/// Starts larger than one frame reach the process whole (container mode takes what the
/// kernel's ARG_MAX allows); loopback is up; past the protocol's bound the run is refused
/// before anything boots.
fn large_starts_and_loopback(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    // 5 × 100 KiB of environment and a 100 KiB argument: 600 KiB, over 256 KiB frames.
    let vars: Vec<String> = (0..5)
        .map(|i| format!("BIG{i}={}", "x".repeat(100 * 1024)))
        .collect();
    let arg = "y".repeat(100 * 1024);
    let mut opts = vec!["--rm"];
    for v in &vars {
        opts.extend(["-e", v.as_str()]);
    }
    let script = "echo ${#BIG0}:${#BIG4}:${#1}; \
                  ip -o link show lo | grep -c LOWER_UP; \
                  nc -l -p 5000 > /tmp/got & sleep 0.3; \
                  echo over-loopback | nc -w 1 127.0.0.1 5000; sleep 0.3; cat /tmp/got";
    let out = env.run(&opts, &["sh", "-c", script, "sh", &arg]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout, "102400:102400:102400\n1\nover-loopback\n",
        "stderr: {stderr}"
    );

    // 9 MiB of environment (from a file: the host's own ARG_MAX is 2 MiB): one clear
    // line, before anything boots.
    let file = env.root.path().join("huge.env");
    std::fs::write(&file, format!("HUGE={}\n", "z".repeat(9 << 20))).unwrap();
    let out = env.run(
        &["--name", "huge", "--env-file", file.to_str().unwrap()],
        &["true"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.contains("a VM takes at most"), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert_refused_before_booting(&env, "huge");
}

/// The run was refused before anything was created: no container `name`, no VMM.
fn assert_refused_before_booting(env: &vm_support::VmEnv, name: &str) {
    let ps = env.cmd(&["ps", "-a", "--format", "json"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        !ps.contains(&format!("\"{name}\"")),
        "{name} was created: {ps}"
    );
    assert!(
        env.container_dirs().is_empty(),
        "{:?}",
        env.container_dirs()
    );
    assert!(env.leftover_processes().is_empty());
}

/// --cpus and --memory are checked against the host before booting; rounding is said.
fn vm_size_is_checked_and_rounding_said(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let too_many = (host_cpus + 1).to_string();
    let out = env.run(&["--name", "cpus", "--cpus", &too_many], &["true"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("this host has {host_cpus} CPUs")),
        "stderr: {stderr}"
    );
    assert_refused_before_booting(&env, "cpus");
    let out = env.run(&["--name", "mem", "--memory", "100000g"], &["true"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.contains("MiB of memory"), "stderr: {stderr}");
    assert_refused_before_booting(&env, "mem");

    let out = env.run(
        &["--rm", "--cpus", "0.5", "--memory", "32m"],
        &["sh", "-c", "nproc; grep MemTotal /proc/meminfo"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.starts_with("1\n"), "stdout: {stdout}");
    let kib: u64 = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((60_000..100_000).contains(&kib), "MemTotal {kib} kB");
    assert!(stderr.contains("it gets 1"), "stderr: {stderr}");
    assert!(stderr.contains("raised to 96m"), "stderr: {stderr}");
}

/// Ctrl-C (SIGINT to vessel's whole process group, as a terminal sends it) reaches the
/// container's process, whose trap decides the exit code; the VMM is not in that group.
/// With `-t`, the end of piped stdin reaches the guest's terminal as end of input.
fn signals_reach_the_process_and_tty_input_ends(vmm: &str) {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let Some(env) = setup(vmm) else { return };
    let mut cmd = env.run_cmd(
        &["--rm"],
        &[
            "sh",
            "-c",
            "trap 'echo got-INT; exit 7' INT; echo ready; sleep 100 & wait",
        ],
    );
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // SAFETY: kill with a negative pid signals the process group made above.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    assert_eq!(lines.next().unwrap().unwrap(), "got-INT");
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(7), "stderr: {err}");
    assert!(env.leftover_processes().is_empty());

    let mut child = env
        .run_cmd(
            &["--rm", "-i", "-t"],
            &["sh", "-c", "cat >/dev/null; echo done"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo-without-newline")
        .unwrap();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}");
    assert!(stdout.contains("done"), "stdout: {stdout}");
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "took {:?}",
        t.elapsed()
    );
}

/// A reader slower than the guest's writer gets every byte, in order, and the run's memory
/// stays bounded: the guest's writer waits (QEMU's console dropped what its socket could
/// not take, and the frame stream fell apart: "bad frame length 175704697").
fn slow_reader_gets_every_byte(vmm: &str) {
    use std::io::Read;
    let Some(env) = setup(vmm) else { return };
    const TOTAL: usize = 8_000_000;
    let mut child = env
        .run_cmd(
            &["--rm"],
            &[
                "sh",
                "-c",
                &format!("yes 0123456789abcdef | head -c {TOTAL}"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let pid = child.id();
    let rss_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    // Let the guest get far ahead of us, then read slowly, in small bites.
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::with_capacity(TOTAL);
    let mut buf = [0u8; 64 * 1024];
    let mut max_rss = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() < TOTAL / 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        max_rss = max_rss.max(rss_kib());
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(got.len(), TOTAL, "stderr: {err}");
    let line = b"0123456789abcdef\n";
    assert!(
        got.chunks(line.len()).all(|c| line.starts_with(c)),
        "the stream was corrupted"
    );
    // vessel buffers a frame or so, not the stream (8 MB went through it).
    assert!(max_rss < 48 * 1024, "vessel grew to {max_rss} KiB");
}

/// A write the host cannot store (its disk is full) is an I/O error in the guest, never a
/// paused VM (QEMU pauses on ENOSPC by default); a VM that answers nothing (here: its VMM
/// stopped with SIGSTOP) is still ended by `kill`, `stop` and `rm -f`, and a signal that
/// was not delivered is reported as such, never as done.
fn full_disk_and_unresponsive_vms(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    // The container disks live under containers/: put that on a 24 MB tmpfs.
    let containers = env.root.path().join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    let small = SmallFs::mount(&containers, "24m");
    let mut child = env
        .run_cmd(
            &["--rm"],
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/big bs=1M count=40 conv=fsync 2>/dev/null; echo dd=$?",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("a VM writing more than the host can store hung");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stdout.starts_with("dd=") && stdout != "dd=0\n",
        "stdout: {stdout}"
    );
    drop(small);
    assert!(env.leftover_processes().is_empty());

    let stopped_vm = |name: &str| -> i32 {
        let out = env.run(&["-d", "--name", name], &["sleep", "1000"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pid: i32 = std::fs::read_to_string(containers.join(&id).join("vmm.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill with a pid read from the container's own pid file.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        pid
    };
    let state = |name: &str| -> serde_json::Value {
        let out = env.cmd(&["ps", "-a", "--format", "json"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["Names"] == name)
            .unwrap_or_default()
    };
    let vmm = stopped_vm("hung");
    let out = env.cmd(&["kill", "-s", "TERM", "hung"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a TERM nobody got was reported sent"
    );
    assert!(stderr.contains("did not confirm the signal"), "{stderr}");
    assert_eq!(state("hung")["State"], "running");
    let out = env.cmd(&["kill", "hung"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "kill: {}", text(&out).1);
    assert_eq!(state("hung")["State"], "exited", "kill returned first");
    assert_eq!(state("hung")["ExitCode"], 137);
    assert!(
        !Path::new(&format!("/proc/{vmm}")).exists(),
        "the VMM survived"
    );
    let _ = stopped_vm("hung2");
    let out = env.cmd(&["rm", "-f", "hung", "hung2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "rm -f: {}", text(&out).1);
    assert!(
        env.container_dirs().is_empty(),
        "{:?}",
        env.container_dirs()
    );
    assert!(env.leftover_processes().is_empty());
}

/// A small tmpfs mounted over a directory for the length of a test.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs on {}", dir.display());
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The workload is confined in the guest as container mode confines it on the host, and
/// cannot reach the agent: its own PID namespace (the agent is not there to see, signal or
/// ptrace), no channel or disk device it could open (a node made with mknod is refused by
/// the device cgroup: a forged "exit 42" frame used to be taken for the process's exit),
/// docker's capabilities with --cap-add/--cap-drop, no_new_privs and the seccomp filter.
fn workload_is_confined_and_cannot_reach_the_agent(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let script = r#"
        echo pids: $(ls /proc | grep '^[0-9]' | tr '\n' ' ')
        for p in /proc/[0-9]*; do cat $p/comm; done | grep -c -e vessel-agent -e '^init$'
        ls /dev/hvc0 /dev/vport0p0 /dev/vport0p1 /dev/vda /dev/vdb 2>/dev/null | wc -l
        for d in /sys/class/virtio-ports/*/dev; do
            mknod /tmp/port c $(tr : ' ' < $d) && echo made
            printf '\n\0\0\0\t\0\0\0\0\0*\0\0\0' > /tmp/port 2>/dev/null && echo FORGED
            rm -f /tmp/port
        done
        mknod /tmp/disk b $(tr : ' ' < /sys/block/vda/dev)
        head -c 1 /tmp/disk >/dev/null 2>&1 && echo READ-THE-DISK
        grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
        hostname other 2>/dev/null && echo SETHOSTNAME
        exit 3
    "#;
    let out = env.run(&["--rm"], &["sh", "-c", script]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("pids: 1 "), "{stdout}");
    assert_eq!(lines[1], "0", "the agent is visible: {stdout}");
    assert_eq!(lines[2], "0", "device nodes: {stdout}");
    assert!(
        !stdout.contains("FORGED") && !stdout.contains("READ-THE-DISK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("made"),
        "mknod itself is allowed (CAP_MKNOD): {stdout}"
    );
    // docker's default set, as container mode has it.
    assert!(stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(!stdout.contains("SETHOSTNAME"), "{stdout}");

    let out = env.run(
        &["--rm", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN"],
        &["sh", "-c", "grep ^CapBnd: /proc/self/status"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "CapBnd:\t0000000000001000\n", "stderr: {stderr}");
}

/// The host's CPU flags (the first `flags` line of a /proc/cpuinfo).
fn cpu_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The built-in VMM passes the host's vector extensions through, and the guest kernel keeps
/// them: a stale XSAVE size in CPUID (seen under a nested KVM) made Linux turn XSAVE, and
/// with it AVX, off.
fn guest_keeps_the_hosts_vector_extensions(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let host = cpu_flags(&std::fs::read_to_string("/proc/cpuinfo").unwrap());
    let out = env.run(&["--rm"], &["cat", "/proc/cpuinfo"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let guest = cpu_flags(&stdout);
    for f in ["xsave", "avx", "avx2"] {
        if host.iter().any(|h| h == f) {
            assert!(
                guest.iter().any(|g| g == f),
                "host has {f}, guest: {guest:?}"
            );
        }
    }
}

/// The real uid of `pid`.
fn real_uid(pid: i32) -> u32 {
    let uids = status_field(pid, "Uid");
    uids.split_whitespace().next().unwrap().parse().unwrap()
}

/// `/proc/PID/status` field `key`.
fn status_field(pid: i32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// virtiofsd's file-serving capabilities (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER,
/// FSETID, SETGID, SETUID, MKNOD, SETFCAP): the documented minimum of its serving process.
const VIRTIOFSD_CAPS: &str = "00000000880000df";

fn host_processes_are_jailed(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("hello"), "from the host\n").unwrap();
    let volume = format!("{}:/data:ro", share.path().display());
    let out = env.run(
        &["-d", "-v", &volume],
        &["sh", "-c", "cat /data/hello; exec sleep 1000"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let id = stdout.trim().to_string();
    wait_for("the container's output", Duration::from_secs(120), || {
        let logs = env.cmd(&["logs", &id]).output().unwrap();
        String::from_utf8_lossy(&logs.stdout).contains("from the host")
    });
    let out = env.cmd(&["inspect", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported = inspect[0]["HostProcesses"].as_array().unwrap().clone();
    let vmm_name = if vmm == "qemu" {
        "qemu-system"
    } else {
        "vessel-vmm"
    };
    let (mut vmms, mut daemons, mut passts) = (0, 0, 0);
    assert!(
        reported.len() >= 4,
        "VMM, virtiofsd and passt: {reported:#?}"
    );
    for p in &reported {
        let pid = p["pid"].as_i64().unwrap() as i32;
        let command = p["command"].as_str().unwrap();
        // What inspect reports is what /proc says.
        assert_eq!(p["seccomp"], 2, "{command}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{command}");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{command}");
        assert_eq!(p["no_new_privs"], true, "{command}");
        let caps = status_field(pid, "CapEff");
        assert_eq!(p["cap_eff"], caps.as_str(), "{command}");
        let passt = command.contains("passt");
        for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            if passt && ns == "net" {
                // The network's helper works in the host's network: that is its job.
                assert_eq!(theirs, ours, "passt's network namespace");
                assert_eq!(p["namespaces"][ns], "host", "{command}");
                continue;
            }
            assert_ne!(theirs, ours, "{command} shares the host's {ns} namespace");
            assert_eq!(p["namespaces"][ns], "own", "{command}");
        }
        if passt {
            passts += 1;
            // The VM's own uid, no capability, an empty root of its own sandbox.
            assert_eq!(caps, "0000000000000000", "passt CapEff");
            let uid = real_uid(pid);
            assert!(uid >= 0x5e55_0000, "passt runs as uid {uid}");
            let root = entries(Path::new(&format!("/proc/{pid}/root")));
            assert!(root.is_empty(), "passt's root: {root:?}");
            continue;
        }
        if command.contains("virtiofsd") {
            daemons += 1;
            // Its monitor has dropped everything; its server keeps the documented minimum.
            assert!(
                caps == "0000000000000000" || caps == VIRTIOFSD_CAPS,
                "virtiofsd CapEff {caps}"
            );
            // Pivoted into the shared directory: the host's / is not there.
            let root = entries(Path::new(&format!("/proc/{pid}/root")));
            assert_eq!(root, ["hello"], "virtiofsd's root");
            continue;
        }
        assert!(command.contains(vmm_name), "unexpected process {command}");
        vmms += 1;
        assert_eq!(caps, "0000000000000000", "{command}");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
        let uid = real_uid(pid);
        assert!(uid >= 0x5e55_0000, "the VMM runs as uid {uid}");
        // Its root is the jail: the VM's files, libraries, its device nodes; nothing else.
        let root = Path::new(&format!("/proc/{pid}/root")).to_path_buf();
        let top = entries(&root);
        for e in &top {
            assert!(
                ["dev", "lib", "lib32", "lib64", "usr", "vm"].contains(&e.as_str()),
                "{e} in the VMM's root: {top:?}"
            );
        }
        let mut expected = vec![
            "agent.sock",
            "console.log",
            "container.ext4",
            "fs-0.sock",
            "image.ext4",
            "initrd",
            "kernel",
            "net.sock",
        ];
        if vmm == "builtin" {
            expected.push("vmm.json");
        }
        assert_eq!(entries(&root.join("vm")), expected);
        let dev = entries(&root.join("dev"));
        assert!(
            dev.iter()
                .all(|d| ["kvm", "null", "urandom"].contains(&d.as_str())),
            "{dev:?}"
        );
        for e in entries(&root.join("usr")) {
            assert!(
                ["bin", "lib", "lib64", "share"].contains(&e.as_str()),
                "usr/{e}"
            );
        }
        for hidden in ["etc/passwd", "proc/self", "sys/kernel", "root", "tmp"] {
            assert!(
                !root.join(hidden).exists(),
                "{hidden} is visible in the jail"
            );
        }
        assert!(!root.join(share.path().strip_prefix("/").unwrap()).exists());
        // Only the files the VM writes are its uid's.
        let owner = |f: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(root.join("vm").join(f)).unwrap().uid()
        };
        assert_eq!(owner("container.ext4"), uid);
        assert_eq!(owner("console.log"), uid);
        assert_ne!(owner("image.ext4"), uid);
        assert_ne!(owner("kernel"), uid);
        // In the container's cgroup, which holds the VM's memory plus the overhead.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroups.contains(&format!("/vessel/{id}")), "{cgroups}");
    }
    assert_eq!((vmms, daemons, passts), (1, 2, 1), "{reported:#?}");

    let out = env.cmd(&["rm", "-f", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(env.leftover_processes().is_empty());
    for hierarchy in ["", "memory/", "unified/"] {
        let dir = format!("/sys/fs/cgroup/{hierarchy}vessel/{id}");
        assert!(!Path::new(&dir).exists(), "{dir} left behind");
    }
}

/// A forbidden system call in the VMM ends the run with a one-line reason naming it (the
/// debug-build test hook makes the vCPU thread call getppid once its filter is in).
fn seccomp_kill_is_reported(vmm: &str) {
    let Some(env) = setup(vmm) else { return };
    let out = env
        .run_cmd(&["--rm"], &["true"])
        .env("VESSEL_VMM_SECCOMP_SELFTEST", "vcpu")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stdout}{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("seccomp filter killed it (forbidden system call 110, getppid)"),
        "{stderr}"
    );
    assert!(env.leftover_processes().is_empty());
}

macro_rules! on_both_backends {
    ($($body:ident),* $(,)?; builtin only: $($only:ident),* $(,)?) => {
        mod qemu {
            $(#[test] fn $body() { super::$body("qemu") })*
        }
        mod builtin_vmm {
            $(#[test] fn $body() { super::$body("builtin") })*
            $(#[test] fn $only() { super::$only("builtin") })*
        }
    };
}

on_both_backends!(
    output_status_and_own_kernel,
    killed_by_signal,
    missing_command_is_127,
    stdin_and_overrides,
    writes_are_per_container,
    detached_lifecycle,
    broken_kernel_cmdline_fails_fast,
    vmm_crash_and_boot_timeout_are_reported,
    large_starts_and_loopback,
    vm_size_is_checked_and_rounding_said,
    signals_reach_the_process_and_tty_input_ends,
    slow_reader_gets_every_byte,
    full_disk_and_unresponsive_vms,
    workload_is_confined_and_cannot_reach_the_agent,
    host_processes_are_jailed;
    builtin only: guest_keeps_the_hosts_vector_extensions,
    seccomp_kill_is_reported,
);
