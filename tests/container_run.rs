//! End-to-end tests of `vessel run --isolation container` on busybox-static test images:
//! exit codes, streams, image-config semantics, the writable layer, namespaces, mounts,
//! limits, and cleanup.

mod common;
#[path = "common/container.rs"]
mod ctr;

use std::io::Write;
use std::process::Stdio;

use common::{Entry, Layer, TestImage, TestRoot};
use ctr::{run, run_ok, stderr, stdout};

fn busybox(root: &TestRoot, tag: &str) -> String {
    root.load(&TestImage::new(&format!("vessel-test/ctr:{tag}")))
}

#[test]
fn exit_codes_follow_the_process_and_docker_conventions() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "exit");
    assert_eq!(run(&root, &["--rm", &img, "true"]).status.code(), Some(0));
    assert_eq!(
        run(&root, &["--rm", &img, "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let o = run(&root, &["--rm", &img, "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("not found"), "stderr: {}", stderr(&o));
    let o = run(&root, &["--rm", &img, "/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "stderr: {}", stderr(&o));
    // vessel's own failure: an image that does not exist.
    let o = run(
        &root,
        &["--rm", "--pull", "never", "vessel-test/absent:1", "true"],
    );
    assert_eq!(o.status.code(), Some(125), "stderr: {}", stderr(&o));
    assert!(stderr(&o).starts_with("vessel: "), "stderr: {}", stderr(&o));
    // Limits out of range are refused before anything starts.
    for bad in [["--memory", "1m"], ["--cpus", "0"], ["--pids-limit", "0"]] {
        let o = run(&root, &["--rm", bad[0], bad[1], &img, "true"]);
        assert_eq!(o.status.code(), Some(125), "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(bad[0]), "{}", stderr(&o));
    }
    assert!(ctr::ps_all(&root).is_empty());
}

#[test]
fn killed_by_a_signal_exits_128_plus_n() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "signal");
    let child = ctr::run_cmd(&root, &["--name", "sig", &img, "sleep", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(ctr::wait_for(20, || ctr::ps_entry(&root, "sig")
        .is_some_and(|v| v["State"] == "running")));
    root.ok(&["kill", "-s", "KILL", "sig"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    let entry = ctr::ps_entry(&root, "sig").unwrap();
    assert_eq!(entry["ExitCode"], 137);
    root.ok(&["rm", "sig"]);
}

#[test]
fn stdout_and_stderr_stay_separate_and_stdin_is_piped() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "streams");
    let o = run(
        &root,
        &["--rm", &img, "sh", "-c", "echo to-out; echo to-err >&2"],
    );
    assert_eq!(stdout(&o), "to-out\n");
    assert_eq!(stderr(&o), "to-err\n");

    let mut child = ctr::run_cmd(
        &root,
        &["--rm", "-i", &img, "sh", "-c", "tr a-z A-Z; echo done"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PIPED INPUT\ndone\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = ctr::run_cmd(&root, &["--rm", "-i", &img, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello stdin\n");
    // Without -i the process reads end of file at once.
    assert_eq!(run_ok(&root, &["--rm", &img, "cat"]), "");
}

#[test]
fn image_config_and_overrides() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = root.load(
        &TestImage::new("vessel-test/ctr:config")
            .entrypoint(&["/bin/sh", "-c"])
            .cmd(&["echo image-cmd $GREETING $(pwd) $(id -u):$(id -g)"])
            .env("GREETING=hello")
            .workdir("/srv/app")
            .user("app"),
    );
    // Entrypoint + Cmd, Env, WorkingDir (created), User by name from the image's passwd.
    assert_eq!(
        run_ok(&root, &["--rm", &img]),
        "image-cmd hello /srv/app 1000:1000\n"
    );
    // COMMAND replaces Cmd, keeps the entrypoint; -e overrides, -w and -u override.
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "-e",
                "GREETING=hi",
                "-e",
                "EXTRA=x",
                "-w",
                "/tmp",
                "-u",
                "0:1000",
                &img,
                "echo $GREETING $EXTRA $(pwd) $(id -u):$(id -g) $HOME",
            ]
        ),
        "hi x /tmp 0:1000 /root\n"
    );
    // --entrypoint replaces the entrypoint and drops the image's Cmd.
    assert_eq!(
        run_ok(&root, &["--rm", "--entrypoint", "echo", &img, "plain"]),
        "plain\n"
    );
    // Numeric user not in passwd; user by name with a group name.
    assert_eq!(
        run_ok(
            &root,
            &["--rm", "--entrypoint", "id", "-u", "4242:65534", &img, "-u"]
        ),
        "4242\n"
    );
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "--entrypoint",
                "id",
                "-u",
                "app:nogroup",
                &img,
                "-g"
            ]
        ),
        "65534\n"
    );
    // --env-file.
    let dir = tempfile::tempdir().unwrap();
    let envf = dir.path().join("env");
    std::fs::write(&envf, "# comment\nFROMFILE=yes\n\n").unwrap();
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "--env-file",
                envf.to_str().unwrap(),
                &img,
                "echo $FROMFILE"
            ]
        ),
        "yes\n"
    );
    // An unknown user is vessel's failure.
    let o = run(&root, &["--rm", "-u", "nosuchuser", &img]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("nosuchuser"), "{}", stderr(&o));
}

#[test]
fn writes_land_in_the_containers_own_layer() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "layer");
    run_ok(
        &root,
        &[
            "--name",
            "one",
            &img,
            "sh",
            "-c",
            "echo one > /etc/marker; rm /bin/ls",
        ],
    );
    run_ok(
        &root,
        &["--name", "two", &img, "sh", "-c", "echo two > /etc/marker"],
    );
    let image_rootfs = ctr::image_rootfs(&root);
    assert!(
        !image_rootfs.join("etc/marker").exists(),
        "the image was written to"
    );
    assert!(
        image_rootfs.join("bin/ls").exists(),
        "a deletion reached the image"
    );
    let ps = ctr::ps_all(&root);
    let id = |name: &str| {
        ps.iter().find(|v| v["Names"] == name).unwrap()["ID"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let upper_one = ctr::containers_dir(&root).join(id("one")).join("upper");
    let upper_two = ctr::containers_dir(&root).join(id("two")).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper_one.join("etc/marker")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper_two.join("etc/marker")).unwrap(),
        "two\n"
    );
    // A third container sees neither write.
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                &img,
                "sh",
                "-c",
                "cat /etc/marker 2>/dev/null || echo absent; ls /bin/ls"
            ]
        ),
        "absent\n/bin/ls\n"
    );
    root.ok(&["rm", "one", "two"]);
    assert!(ctr::container_dirs(&root).is_empty());
}

#[test]
fn rm_flag_leaves_nothing_behind() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "rm");
    let o = run(
        &root,
        &[
            "--rm",
            "--memory",
            "64m",
            "--pids-limit",
            "50",
            &img,
            "sh",
            "-c",
            "echo x > /f; cat /proc/self/cgroup",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let cg = stdout(&o);
    let id = cg
        .lines()
        .find_map(|l| l.split("/vessel/").nth(1))
        .expect("the process is in a vessel cgroup")
        .trim()
        .to_string();
    assert!(
        ctr::container_dirs(&root).is_empty(),
        "{:?}",
        ctr::container_dirs(&root)
    );
    assert!(
        ctr::mounts_under(&root).is_empty(),
        "{:?}",
        ctr::mounts_under(&root)
    );
    assert!(
        ctr::cgroups_of(&id).is_empty(),
        "{:?}",
        ctr::cgroups_of(&id)
    );
    assert!(ctr::ps_all(&root).is_empty());
}

#[test]
fn namespaces_pid_uts_network() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "ns");
    // PID namespace: the process is PID 1 and sees only its own processes.
    let out = run_ok(
        &root,
        &[
            "--rm",
            &img,
            "sh",
            "-c",
            "echo $$; sleep 1 & ps -o pid,comm",
        ],
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"));
    let procs: Vec<&str> = lines.skip(1).collect();
    assert!(
        procs.len() <= 3,
        "ps shows more than its own processes: {procs:?}"
    );
    // Zombies are reaped: an orphan's exit leaves no zombie behind.
    let out = run_ok(
        &root,
        &[
            "--rm",
            &img,
            "sh",
            "-c",
            "(sleep 0.2 &) ; sleep 1; ps -o stat | grep -c Z || true",
        ],
    );
    assert_eq!(out.trim(), "0", "zombies: {out}");
    // UTS.
    assert_eq!(
        run_ok(&root, &["--rm", "--hostname", "box1", &img, "hostname"]),
        "box1\n"
    );
    // Network none: only loopback, and it is up.
    let out = run_ok(
        &root,
        &[
            "--rm",
            "--network",
            "none",
            &img,
            "sh",
            "-c",
            "ls /sys/class/net; cat /sys/class/net/lo/flags",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo", "interfaces: {out}");
    assert_eq!(lines.len(), 2, "interfaces: {out}");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down");
    // Network host: the host's interfaces (compared as sets, read around the run, so an
    // interface another test adds meanwhile does not matter).
    let host_ifaces = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = host_ifaces();
    let out = run_ok(
        &root,
        &["--rm", "--network", "host", &img, "ls", "/sys/class/net"],
    );
    let after = host_ifaces();
    let seen: std::collections::BTreeSet<String> = out.lines().map(str::to_string).collect();
    for i in before.intersection(&after) {
        assert!(seen.contains(i), "host interface {i} missing from {seen:?}");
    }
    assert!(
        seen.iter().all(|i| before.contains(i) || after.contains(i)),
        "{seen:?}"
    );
}

#[test]
fn security_defaults() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "sec");
    let status = run_ok(&root, &["--rm", &img, "cat", "/proc/self/status"]);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    // docker's default capability set.
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    let status = run_ok(
        &root,
        &[
            "--rm",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "CHOWN",
            &img,
            "cat",
            "/proc/self/status",
        ],
    );
    assert!(status.contains("CapEff:\t0000000000000001"), "{status}");
    // Masked and read-only paths, read-only /sys, minimal /dev.
    let out = run_ok(
        &root,
        &["--rm", &img, "sh", "-c",
          "cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/hostname 2>/dev/null || echo ro-proc; \
           touch /sys/x 2>/dev/null || echo ro-sys; ls /dev | sort | tr '\\n' ' '"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "0");
    assert_eq!(lines[1], "ro-proc");
    assert_eq!(lines[2], "ro-sys");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(
            lines[3].split(' ').any(|d| d == dev),
            "/dev lacks {dev}: {}",
            lines[3]
        );
    }
    // The default seccomp profile refuses what it lists even with the capability added:
    // with CAP_SYS_ADMIN alone, swapon on /dev/null would fail with EINVAL, not EPERM.
    let img2 = root.load(
        &TestImage::new("vessel-test/ctr:sec2").layer(Layer::new(vec![
            Entry::symlink("bin/swapon", "busybox"),
            Entry::symlink("bin/unshare", "busybox"),
        ])),
    );
    // Namespaces cannot be made without CAP_SYS_ADMIN (docker's profile), and can with it.
    let o = run(&root, &["--rm", &img2, "unshare", "-m", "true"]);
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        stderr(&o)
    );
    let o = run(
        &root,
        &[
            "--rm",
            "--cap-add",
            "SYS_ADMIN",
            &img2,
            "unshare",
            "-m",
            "true",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(
        &root,
        &[
            "--rm",
            "--cap-add",
            "SYS_ADMIN",
            &img2,
            "swapon",
            "/dev/null",
        ],
    );
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn read_only_root_tmpfs_and_bind_mounts() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "mounts");
    let o = run(&root, &["--rm", "--read-only", &img, "touch", "/x"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("Read-only"), "{}", stderr(&o));
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "--read-only",
                "--tmpfs",
                "/scratch",
                &img,
                "sh",
                "-c",
                "echo ok > /scratch/f && cat /scratch/f"
            ]
        ),
        "ok\n"
    );
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in"), "from host\n").unwrap();
    let h = host.path().to_str().unwrap();
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "-v",
                &format!("{h}:/data"),
                &img,
                "sh",
                "-c",
                "cat /data/in; echo written > /data/out"
            ]
        ),
        "from host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "written\n"
    );
    let o = run(
        &root,
        &[
            "--rm",
            "-v",
            &format!("{h}:/data:ro"),
            &img,
            "sh",
            "-c",
            "cat /data/in; echo no > /data/out2",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "from host\n");
    assert!(!host.path().join("out2").exists());
}

#[test]
fn memory_limit_kills_and_is_reported_as_oom() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "oom");
    // tail keeps the whole (newline-free) input in memory.
    let o = run(
        &root,
        &[
            "--name",
            "hog",
            "--memory",
            "32m",
            &img,
            "sh",
            "-c",
            "head -c 200m /dev/zero | tail > /dev/null",
        ],
    );
    let entry = ctr::ps_entry(&root, "hog").unwrap();
    assert_eq!(
        entry["OOMKilled"],
        true,
        "ps: {entry}, stderr: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("out of memory"),
        "stderr: {}",
        stderr(&o)
    );
    assert!(entry["Status"].as_str().unwrap().contains("OOM"), "{entry}");
    // Within the limit it runs normally.
    assert_eq!(
        run_ok(
            &root,
            &[
                "--rm",
                "--memory",
                "64m",
                &img,
                "sh",
                "-c",
                "head -c 8m /dev/zero | tail | wc -c"
            ]
        ),
        "8388608\n"
    );
    root.ok(&["rm", "hog"]);
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "pids");
    let out = run(&root, &["--rm", "--pids-limit", "10", &img, "sh", "-c",
        "i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done 2>/dev/null; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null; ls /proc | grep -c '^[0-9]'; kill $(jobs -p) 2>/dev/null; exit 0"]);
    let text = stdout(&out);
    let count: usize = text
        .lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(99);
    assert!(
        count <= 10,
        "{count} processes ran under a limit of 10: {text} {}",
        stderr(&out)
    );
    // The same loop without a limit starts them all.
    let out = run_ok(
        &root,
        &[
            "--rm",
            &img,
            "sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done; ls /proc | grep -c '^[0-9]'",
        ],
    );
    assert!(out.trim().parse::<usize>().unwrap() > 40, "{out}");
}

#[test]
fn cpu_quota_is_applied() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "cpu");
    root.ok(&[
        "run",
        "-d",
        "--isolation",
        "container",
        "--name",
        "quota",
        "--cpus",
        "1.5",
        &img,
        "sleep",
        "60",
    ]);
    let id = ctr::ps_entry(&root, "quota").unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = format!("/sys/fs/cgroup/cpu/vessel/{id}/cpu.cfs_quota_us");
    let v2 = format!("/sys/fs/cgroup/vessel/{id}/cpu.max");
    let quota = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .expect("the container's cpu cgroup");
    root.ok(&["rm", "-f", "quota"]);
    assert_eq!(quota.split_whitespace().next(), Some("150000"), "{quota}");
    assert!(ctr::cgroups_of(&id).is_empty());
}

#[test]
fn tty_gives_the_process_a_terminal() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "tty");
    let out = run_ok(
        &root,
        &[
            "--rm",
            "-t",
            &img,
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; echo $TERM",
        ],
    );
    assert_eq!(out.replace('\r', ""), "is-a-tty\nxterm\n");
    let out = run_ok(
        &root,
        &["--rm", &img, "sh", "-c", "test -t 1 || echo not-a-tty"],
    );
    assert_eq!(out, "not-a-tty\n");
    // -i -t with piped stdin: its end reaches the terminal as end of input (^D), also
    // after a line with no newline.
    let mut child = root
        .cmd()
        .args(["run", "--isolation", "container", "--rm", "-i", "-t", &img])
        .args(["sh", "-c", "cat >/dev/null; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo-without-newline")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
}

#[test]
fn ctrl_c_and_signals_reach_the_process() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "sigint");
    // Without a terminal, vessel forwards the SIGINT it receives.
    let mut child = ctr::run_cmd(
        &root,
        &[
            "--rm",
            "--name",
            "int",
            &img,
            "sh",
            "-c",
            "trap 'echo got-int; exit 9' INT; echo ready; while true; do sleep 0.1; done",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    ctr::watchdog(&root, child.id(), 60);
    // "ready" comes after the trap is set.
    use std::io::BufRead;
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(9), "stderr: {}", stderr(&out));
    assert_eq!(rest, "got-int\n");
}

#[test]
fn terminal_size_resizes_and_ctrl_c_through_the_pty() {
    if ctr::skip() {
        return;
    }
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let root = TestRoot::new();
    let img = root.load(
        &TestImage::new("vessel-test/ctr:pty")
            .layer(Layer::new(vec![Entry::symlink("bin/stty", "busybox")])),
    );
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = root
        .cmd()
        .args([
            "run",
            "--isolation",
            "container",
            "--rm",
            "-i",
            "-t",
            &img,
            "sh",
            "-c",
            "stty size; trap 'echo got-int; exit 4' INT; trap 'echo resized; stty size' WINCH; \
                echo waiting; while true; do sleep 0.1; done",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    ctr::watchdog(&root, child.id(), 60);
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let read_until = |master: &mut std::fs::File, seen: &mut String, buf: &mut [u8], pat: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !seen.contains(pat) && std::time::Instant::now() < deadline {
            match master.read(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen.contains(pat)
    };
    assert!(
        read_until(&mut master, &mut seen, &mut buf, "waiting"),
        "{seen:?}"
    );
    assert!(seen.contains("33 101"), "initial size not passed: {seen:?}");
    // Resize our terminal; vessel gets SIGWINCH (the kernel sends it to the foreground
    // process group) and passes the size on.
    let ws2 = nix::pty::Winsize {
        ws_row: 20,
        ws_col: 70,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws2) };
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGWINCH) };
    // The container's terminal changes size, so its shell gets SIGWINCH and reports.
    assert!(
        read_until(&mut master, &mut seen, &mut buf, "20 70"),
        "resize not passed: {seen:?}"
    );
    // Ctrl-C typed on the terminal reaches the container's process through its terminal.
    use std::io::Write;
    master.write_all(b"\x03").unwrap();
    assert!(
        read_until(&mut master, &mut seen, &mut buf, "got-int"),
        "{seen:?}"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{seen:?}");
}

#[test]
fn run_pulls_per_the_pull_policy() {
    if ctr::skip() {
        return;
    }
    let Some(registry) = common::Registry::start() else {
        return;
    };
    let root = TestRoot::new();
    registry.push_image(
        &TestImage::new("vessel-test/ctr:pull").cmd(&["echo", "v1"]),
        "ctr/pull:1",
    );
    let reference = registry.reference("ctr/pull:1");
    // never: a missing image is vessel's failure, and nothing is fetched.
    let o = run(&root, &["--rm", "--pull", "never", &reference]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    // missing (the default): pulled on first use.
    assert_eq!(run_ok(&root, &["--rm", &reference]), "v1\n");
    // The tag moves in the registry: missing keeps the stored image, always fetches.
    registry.push_image(
        &TestImage::new("vessel-test/ctr:pull").cmd(&["echo", "v2"]),
        "ctr/pull:1",
    );
    assert_eq!(run_ok(&root, &["--rm", &reference]), "v1\n");
    assert_eq!(
        run_ok(&root, &["--rm", "--pull", "always", &reference]),
        "v2\n"
    );
    assert_eq!(
        run_ok(&root, &["--rm", "--pull", "never", &reference]),
        "v2\n"
    );
}

/// A static test program that calls clone(2) with CLONE_NEWUSER and says how it went.
const CLONE_PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
int main(void) {
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid < 0) { printf("clone-newuser: %s\n", strerror(errno)); return 1; }
    waitpid(pid, 0, 0);
    printf("clone-newuser: ok\n");
    return 0;
}
"#;

#[test]
fn seccomp_refuses_clone_with_namespace_flags() {
    if ctr::skip() || common::skip_without(&["cc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("probe.c");
    std::fs::write(&src, CLONE_PROBE_C).unwrap();
    let bin = dir.path().join("probe");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    if !built.status.success() {
        eprintln!(
            "SKIP: cannot build a static C program: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        return;
    }
    let root = TestRoot::new();
    let img = root.load(
        &TestImage::new("vessel-test/ctr:clone").layer(Layer::new(vec![Entry::File {
            path: "bin/clone-probe".into(),
            data: std::fs::read(&bin).unwrap(),
            mode: 0o755,
        }])),
    );
    // Creating a user namespace needs no capability, so the kernel itself would allow
    // this clone; without CAP_SYS_ADMIN docker's profile refuses its namespace flag.
    // (Plain fork goes through the same rule: every other test forks.)
    let o = run(&root, &["--rm", &img, "clone-probe"]);
    assert_eq!(
        stdout(&o),
        "clone-newuser: Operation not permitted\n",
        "{}",
        stderr(&o)
    );
    let o = run(
        &root,
        &["--rm", "--cap-add", "SYS_ADMIN", &img, "clone-probe"],
    );
    assert_eq!(stdout(&o), "clone-newuser: ok\n", "{}", stderr(&o));
}
