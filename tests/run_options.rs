//! Every `vessel run` option, in each isolation mode: it works (its effect is seen from
//! inside the container) or it is refused before anything starts, in one line that names
//! the option and the mode, with exit status 125. A test lists the flags `vessel run
//! --help` shows and fails for any flag these tests do not cover in both modes.

mod common;
#[path = "common/container.rs"]
mod ctr;
mod vm_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{TestImage, TestRoot};

/// The long flags `vessel run --help` lists.
fn run_flags() -> BTreeSet<String> {
    let out = TestRoot::new().run(&["run", "--help"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .to_string()
        })
        // vessel's own global flags, not run's.
        .filter(|w| !["", "help", "root", "version"].contains(&w.as_str()))
        .collect()
}

/// One mode's runs: `vessel run --isolation MODE ...` with the test image.
struct Mode {
    /// The state root and VM environment (VM mode), or the state root alone.
    vm: Option<vm_support::VmEnv>,
    root: Option<TestRoot>,
    image: String,
    isolation: &'static str,
    covered: BTreeSet<&'static str>,
}

impl Mode {
    fn vessel(&self, args: &[&str]) -> Command {
        match (&self.vm, &self.root) {
            (Some(vm), _) => vm.cmd(args),
            (None, Some(root)) => {
                let mut c = root.cmd();
                c.args(args).stdin(Stdio::null());
                c
            }
            (None, None) => unreachable!("a mode has a root"),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.vessel(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out).1);
        text(&out).0
    }

    fn cmd(&self, opts: &[&str], cmd: &[&str]) -> Command {
        let mut args = vec!["run", "--isolation", self.isolation];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.vessel(&args)
    }

    fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        self.cmd(opts, cmd).output().unwrap()
    }

    /// `flags` work: the run succeeds and its output has every one of `expect`.
    fn works(&mut self, flags: &[&'static str], opts: &[&str], cmd: &[&str], expect: &[&str]) {
        let out = self.run(opts, cmd);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} {opts:?}:\nstdout: {stdout}\nstderr: {stderr}",
            self.isolation
        );
        for e in expect {
            assert!(
                stdout.contains(e),
                "{} {opts:?}: no {e:?} in\n{stdout}\nstderr: {stderr}",
                self.isolation
            );
        }
        self.covered.extend(flags);
    }

    /// `flag` is refused in this mode: 125, one line naming it and the mode, nothing left.
    fn refused(&mut self, flag: &'static str, opts: &[&str]) {
        let out = self.run(opts, &["true"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(125), "{opts:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{opts:?}: {stderr}");
        assert!(
            stderr.contains(&format!("--{flag}"))
                && stderr.contains(&format!("{} isolation", self.isolation)),
            "{opts:?}: {stderr}"
        );
        let ps = self.ok(&["ps", "-aq"]);
        assert!(ps.trim().is_empty(), "a refused run left a container: {ps}");
        self.covered.insert(flag);
    }

    /// Every flag of `vessel run` was covered.
    fn all_covered(&self) {
        let missing: Vec<String> = run_flags()
            .into_iter()
            .filter(|f| !self.covered.contains(f.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{} mode: no test for {missing:?}",
            self.isolation
        );
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The options both modes honour alike, in a few runs.
fn common_options(m: &mut Mode) {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("vars.env");
    std::fs::write(&env_file, "FROM_FILE=yes\n").unwrap();
    let env_file = env_file.to_str().unwrap().to_string();
    let script = "echo env=$A,$FROM_FILE; echo cwd=$(pwd); echo id=$(id -u):$(id -g); \
                  echo host=$(hostname); touch /x 2>/dev/null || echo ro-root; \
                  touch /scratch/y && echo tmpfs-rw; \
                  grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs-mounted; \
                  echo caps=$(grep CapBnd /proc/self/status | cut -f2); \
                  echo links=$(ls /sys/class/net | tr '\\n' ' ')";
    m.works(
        &[
            "env",
            "env-file",
            "workdir",
            "user",
            "entrypoint",
            "hostname",
            "read-only",
            "tmpfs",
            "cap-add",
            "cap-drop",
            "network",
            "name",
            "rm",
            "pull",
            "isolation",
        ],
        &[
            "--rm",
            "--name",
            "opts",
            "--pull",
            "never",
            "-e",
            "A=1",
            "--env-file",
            &env_file,
            "-w",
            "/work",
            "-u",
            "1000:1000",
            "--entrypoint",
            "sh",
            "--hostname",
            "opt-host",
            "--read-only",
            "--tmpfs",
            "/scratch",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--network",
            "none",
        ],
        &["-c", script],
        &[
            "env=1,yes\n",
            "cwd=/work\n",
            "id=1000:1000\n",
            "host=opt-host\n",
            "ro-root\n",
            "tmpfs-rw\n",
            "tmpfs-mounted\n",
            // CAP_NET_ADMIN only.
            "caps=0000000000001000\n",
            "links=lo\n",
        ],
    );
    // The default network with published ports (tests/network.rs serves through them).
    m.works(
        &["publish", "publish-all"],
        &["--rm", "-p", "127.0.0.1::8080", "-P"],
        &["sh", "-c", "cat /etc/hosts; ls /sys/class/net"],
        &["host.vessel.internal", "eth0\n"],
    );
    // --pids-limit 8: of 12 background sleeps, some cannot be forked. (--cpus and --memory
    // are each mode's own: see the mode's test.)
    let out = m.run(
        &["--rm", "--pids-limit", "8"],
        &[
            "sh",
            "-c",
            // A shell that fails to fork exits: let an inner one do the forking. Counted
            // with the shell's own glob: a command would need a fork.
            "sh -c 'i=0; while [ $i -lt 12 ]; do sleep 3 & i=$((i+1)); done' 2>/dev/null; \
             set -- /proc/[0-9]*; echo $#",
        ],
    );
    let procs: usize = text(&out).0.trim().parse().unwrap();
    assert!(
        (2..=8).contains(&procs),
        "{procs} processes under --pids-limit 8"
    );
    m.covered.insert("pids-limit");
    // -i and -t.
    let mut child = m
        .cmd(
            &["--rm", "-i"],
            &["sh", "-c", "cat; test -t 1 || echo not-a-tty"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out).0, "piped in\nnot-a-tty\n");
    m.works(
        &["interactive", "tty"],
        &["--rm", "-t"],
        &["sh", "-c", "test -t 1 && echo is-a-tty"],
        &["is-a-tty"],
    );
    // A bind mount.
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), "shared\n").unwrap();
    let bind = format!("{}:/data:ro", share.path().display());
    m.works(
        &["volume"],
        &["--rm", "-v", &bind],
        &["cat", "/data/f"],
        &["shared\n"],
    );
    // -d.
    let out = m.run(&["-d", "--name", "bg"], &["sleep", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let id = text(&out).0.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    m.ok(&["rm", "-f", "bg"]);
    m.covered.insert("detach");
}

#[test]
fn options_in_container_mode() {
    if ctr::skip() {
        return;
    }
    let root = TestRoot::new();
    let image = root.load(&TestImage::new("vessel-test/opts:latest"));
    let mut m = Mode {
        vm: None,
        root: Some(root),
        image,
        isolation: "container",
        covered: BTreeSet::new(),
    };
    common_options(&mut m);
    // A CPU quota and a memory limit (their effects are tested in container_run.rs:
    // cpu_quota_is_applied, memory_limit_kills_and_is_reported_as_oom).
    m.works(
        &["cpus", "memory"],
        &["--rm", "--cpus", "1", "--memory", "128m"],
        &["true"],
        &[],
    );
    // The host's network namespace: more than loopback.
    let out = m.run(
        &["--rm", "--network", "host"],
        &["sh", "-c", "ls /sys/class/net | grep -vc '^lo$'"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_ne!(text(&out).0.trim(), "0", "--network host saw only loopback");
    for (flag, opts) in [
        ("vmm", &["--vmm", "qemu"][..]),
        ("kernel", &["--kernel", "/boot/vmlinuz"][..]),
        ("debug", &["--debug"][..]),
    ] {
        m.refused(flag, opts);
    }
    m.all_covered();
}

#[test]
fn options_in_vm_mode() {
    let Some(env) = vm_support::setup("qemu") else {
        return;
    };
    let image = env.image.clone();
    let mut m = Mode {
        vm: Some(env),
        root: None,
        image,
        isolation: "vm",
        covered: BTreeSet::new(),
    };
    common_options(&mut m);
    // The VM's size.
    m.works(
        &["cpus", "memory"],
        &["--rm", "--cpus", "1", "--memory", "128m"],
        &[
            "sh",
            "-c",
            "echo cpus=$(nproc); grep MemTotal /proc/meminfo",
        ],
        &["cpus=1\n", "MemTotal:"],
    );
    m.works(
        &["vmm", "kernel", "debug"],
        &[
            "--rm",
            "--vmm",
            "qemu",
            "--kernel",
            &vm_support::kernel_dir().unwrap().display().to_string(),
            "--debug",
        ],
        &["true"],
        &[],
    );
    m.refused("network", &["--network", "host"]);
    m.all_covered();
}

/// An option vessel does not know, before the image, is clap's error (exit 2), never an
/// image reference; after the image it is the command's.
#[test]
fn unknown_options_before_the_image_are_usage_errors() {
    let root = TestRoot::new();
    let out = root.run(&["run", "-X", "8080:80", "busybox", "true"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unexpected argument '-X'"), "{stderr}");
    assert!(stderr.contains("Usage: vessel run"), "{stderr}");
    assert!(!stderr.contains("invalid reference"), "{stderr}");
    let out = root.run(&["run", "--bogus", "busybox"]);
    assert_eq!(out.status.code(), Some(2));
}
