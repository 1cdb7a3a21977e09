//! End-to-end tests of the container lifecycle in container isolation: detached runs,
//! `ps`, `logs`, `exec`, `kill`, `stop`, `rm`, and recovery after vessel is killed.

mod common;
#[path = "common/container.rs"]
mod ctr;

use std::process::Stdio;

use common::{TestImage, TestRoot};

fn busybox(root: &TestRoot, tag: &str) -> String {
    root.load(&TestImage::new(&format!("vessel-test/life:{tag}")))
}

fn detached(root: &TestRoot, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--isolation", "container"];
    all.extend_from_slice(args);
    root.ok(&all).trim().to_string()
}

fn id_of(root: &TestRoot, name: &str) -> String {
    ctr::ps_entry(root, name).expect("container listed")["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn detached_ps_logs_exec_stop_rm() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "cycle");
    let id = detached(
        &root,
        &[
            "--name",
            "web",
            "-e",
            "MARK=m1",
            &img,
            "sh",
            "-c",
            "echo started; echo warning >&2; while true; do sleep 1; done",
        ],
    );
    assert_eq!(id.len(), 64, "run -d prints the ID: {id}");
    assert_eq!(id_of(&root, "web"), id);

    // ps: running, listed without -a, with its isolation; -q lists the short ID.
    let entry = ctr::ps_entry(&root, "web").unwrap();
    assert_eq!(entry["State"], "running");
    assert_eq!(entry["Isolation"], "container");
    let table = root.ok(&["ps"]);
    assert!(
        table.contains("web") && table.contains("container"),
        "{table}"
    );
    assert_eq!(root.ok(&["ps", "-q"]).trim(), &id[..12]);

    // logs: stdout and stderr each to their own stream.
    assert!(ctr::wait_for(10, || root
        .ok(&["logs", "web"])
        .contains("started")));
    let out = root.run(&["logs", "web"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "warning\n");

    // exec: joins the container's namespaces with its environment; exit status passes through.
    let out = root.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo $MARK $(hostname); cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(out.starts_with(&format!("m1 {}\n", &id[..12])), "{out}");
    assert!(
        out.contains("while true"),
        "exec does not see the container's PID 1: {out}"
    );
    let o = root.run(&["exec", "web", "sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    let o = root.run(&["exec", "web", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    let o = root.run(&[
        "exec",
        "-e",
        "X=from-exec",
        "-w",
        "/tmp",
        "web",
        "sh",
        "-c",
        "echo $X $(pwd)",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-exec /tmp\n");

    // rm refuses a running container without -f.
    let err = root.fails(&["rm", "web"]);
    assert!(err.contains("running"), "{err}");

    // stop: sh as PID 1 ignores SIGTERM, so the grace period ends in SIGKILL.
    let started = std::time::Instant::now();
    root.ok(&["stop", "-t", "1", "web"]);
    assert!(started.elapsed().as_secs() < 8);
    let entry = ctr::ps_entry(&root, "web").unwrap();
    assert_eq!(entry["State"], "exited");
    assert_eq!(entry["ExitCode"], 137);
    assert!(
        root.ok(&["ps"]).lines().count() == 1,
        "stopped containers are hidden without -a"
    );
    // Logs survive the exit.
    assert!(root.ok(&["logs", "web"]).contains("started"));
    let dir = ctr::containers_dir(&root).join(&id);
    assert!(dir.join("upper").is_dir());
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

    root.ok(&["rm", "web"]);
    assert!(!dir.exists());
    assert!(ctr::ps_all(&root).is_empty());
    let err = root.fails(&["logs", "web"]);
    assert!(err.contains("no such container"), "{err}");
}

#[test]
fn stop_with_a_process_that_handles_sigterm_and_kill_signal() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "term");
    detached(
        &root,
        &[
            "--name",
            "polite",
            &img,
            "sh",
            "-c",
            "trap 'echo bye; exit 7' TERM; echo trapped; while true; do sleep 0.2; done",
        ],
    );
    assert!(ctr::wait_for(20, || root
        .ok(&["logs", "polite"])
        .contains("trapped")));
    root.ok(&["stop", "-t", "10", "polite"]);
    let entry = ctr::ps_entry(&root, "polite").unwrap();
    assert_eq!(entry["ExitCode"], 7, "{entry}");
    assert!(root.ok(&["logs", "polite"]).contains("bye"));

    detached(&root, &["--name", "victim", &img, "sleep", "100"]);
    root.ok(&["kill", "-s", "KILL", "victim"]);
    assert!(ctr::wait_for(10, || ctr::ps_entry(&root, "victim")
        .is_some_and(|v| v["State"] == "exited")));
    assert_eq!(ctr::ps_entry(&root, "victim").unwrap()["ExitCode"], 137);
    root.ok(&["rm", "polite", "victim"]);
}

#[test]
fn logs_follow_ends_with_the_container_and_rm_flags() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "follow");
    detached(
        &root,
        &[
            "--name",
            "short",
            &img,
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; sleep 0.3; done",
        ],
    );
    let out = root.ok(&["logs", "-f", "short"]);
    assert_eq!(out, "line1\nline2\nline3\n");

    // -d --rm: the container removes itself when it ends.
    let id = detached(&root, &["--rm", "--name", "gone", &img, "true"]);
    assert!(ctr::wait_for(10, || ctr::ps_entry(&root, "gone").is_none()));
    assert!(!ctr::containers_dir(&root).join(&id).exists());

    // rm -f kills a running container and removes it.
    let id = detached(&root, &["--name", "forced", &img, "sleep", "100"]);
    root.ok(&["rm", "-f", "forced"]);
    assert!(ctr::ps_entry(&root, "forced").is_none());
    assert!(!ctr::containers_dir(&root).join(&id).exists());
    assert!(ctr::cgroups_of(&id).is_empty());

    // Names are unique.
    let o = ctr::run(&root, &["--name", "short", &img, "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        ctr::stderr(&o).contains("already in use"),
        "{}",
        ctr::stderr(&o)
    );
    root.ok(&["rm", "short"]);
    assert!(ctr::mounts_under(&root).is_empty());
}

/// Starts a foreground run, waits until it runs, kills vessel with SIGKILL, and returns
/// the container's ID and host PID.
fn run_and_kill_vessel(root: &TestRoot, img: &str, name: &str, rm: bool) -> (String, i64) {
    let mut args = vec!["--name", name];
    if rm {
        args.push("--rm");
    }
    args.extend_from_slice(&[img, "sleep", "300"]);
    let mut child = ctr::run_cmd(root, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(ctr::wait_for(20, || ctr::ps_entry(root, name)
        .is_some_and(|v| v["State"] == "running")));
    let entry = ctr::ps_entry(root, name).unwrap();
    let id = entry["ID"].as_str().unwrap().to_string();
    let pid = entry["Pid"].as_i64().unwrap();
    // The root's overlay and the name of its network namespace (for pasta).
    assert_eq!(ctr::mounts_under(root).len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    (id, pid)
}

fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Dead, waiting for whoever adopted it to reap it.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn next_invocation_cleans_up_after_vessel_is_killed() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "crash");

    let (id, pid) = run_and_kill_vessel(&root, &img, "orphan", false);
    // The container outlived its supervisor...
    assert!(!process_gone(pid));
    // ...until the next vessel command, which kills it and releases its mount and cgroup.
    let entry = ctr::ps_entry(&root, "orphan").unwrap();
    assert_eq!(entry["State"], "exited", "{entry}");
    assert!(
        ctr::wait_for(5, || process_gone(pid)),
        "the container's process survived"
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
    root.ok(&["rm", "orphan"]);
    assert!(ctr::container_dirs(&root).is_empty());

    // With --rm, the next invocation removes it entirely.
    let (id, pid) = run_and_kill_vessel(&root, &img, "orphan-rm", true);
    assert!(ctr::ps_all(&root).is_empty());
    assert!(ctr::wait_for(5, || process_gone(pid)));
    assert!(
        ctr::container_dirs(&root).is_empty(),
        "{:?}",
        ctr::container_dirs(&root)
    );
    assert!(ctr::mounts_under(&root).is_empty());
    assert!(ctr::cgroups_of(&id).is_empty());
}

#[test]
fn killing_a_detached_supervisor_is_recovered_too() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "crash-d");
    let id = detached(&root, &["--name", "bg", &img, "sleep", "300"]);
    let sup = ctr::supervisor_of(&id).expect("the detached supervisor runs");
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    assert!(ctr::wait_for(5, || process_gone(sup as i64)));
    let entry = ctr::ps_entry(&root, "bg").unwrap();
    assert_eq!(entry["State"], "exited");
    assert!(ctr::mounts_under(&root).is_empty());
    assert!(ctr::cgroups_of(&id).is_empty());
    root.ok(&["rm", "bg"]);
}

#[test]
fn a_finished_foreground_container_keeps_its_logs() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "fglogs");
    let o = ctr::run(
        &root,
        &[
            "--name",
            "fg",
            &img,
            "sh",
            "-c",
            "echo shown; echo warned >&2",
        ],
    );
    assert_eq!(ctr::stdout(&o), "shown\n");
    assert_eq!(ctr::stderr(&o), "warned\n");
    let out = root.run(&["logs", "fg"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shown\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "warned\n");
    root.ok(&["rm", "fg"]);
}

#[test]
fn detached_and_exec_terminals() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let img = busybox(&root, "dtty");
    detached(
        &root,
        &[
            "-t",
            "--name",
            "term",
            &img,
            "sh",
            "-c",
            "test -t 1 && echo has-tty; sleep 100",
        ],
    );
    assert!(ctr::wait_for(10, || root
        .ok(&["logs", "term"])
        .contains("has-tty")));
    let out = root.ok(&[
        "exec",
        "-t",
        "term",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo exec-tty",
    ]);
    assert_eq!(out.replace('\r', ""), "exec-tty\n");
    let out = root.ok(&["exec", "term", "sh", "-c", "test -t 1 || echo exec-pipe"]);
    assert_eq!(out, "exec-pipe\n");
    // exec -u resolves the user through the image's passwd; capabilities stay the container's.
    assert_eq!(
        root.ok(&["exec", "-u", "app", "term", "id", "-u"]),
        "1000\n"
    );
    let status = root.ok(&["exec", "term", "cat", "/proc/self/status"]);
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    root.ok(&["rm", "-f", "term"]);
    assert!(ctr::mounts_under(&root).is_empty());
}
