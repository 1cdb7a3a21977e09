//! Volumes in a VM: one virtiofsd (the Rust `virtiofsd` crate, installed by
//! scripts/setup.sh) per shared host directory, started before the VMM, whose virtio-fs
//! device connects to it as a vhost-user frontend.
//!
//! virtiofsd runs with the sandbox its documentation recommends (`namespace`: its own
//! mount, PID and network namespaces, pivoted into the shared directory) and its seccomp
//! filter killing on anything unexpected, so a guest that subverts it reaches no more than
//! that directory. vessel starts it in the jail's namespaces (PID 1 of its own PID
//! namespace, its sandbox nesting another below), in the VM's cgroup, with no_new_privs and
//! the jail's baseline seccomp filter. It keeps
//! root and the capabilities it serves files with (it drops every other one itself):
//! CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP. It serves one frontend and exits when the VMM disconnects; vessel also
//! ends it with the VM (it dies with its supervisor, like the VMM, and `cleanup` kills what
//! a crash left).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::jail::{self, JailSpec, Jailed};
use super::machine::log_tail;
use super::socket_path::{socket_path, SocketPath};
use crate::liveness;

/// How long virtiofsd may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One shared directory.
#[derive(Debug, Clone)]
pub struct Share {
    /// The host directory.
    pub dir: PathBuf,
    /// Writes refused (`:ro`).
    pub read_only: bool,
}

/// A running virtiofsd and the socket the VMM connects to.
pub struct Daemon {
    /// The virtio-fs tag the guest mounts.
    pub tag: String,
    /// The vhost-user socket (a path short enough to connect to).
    pub socket: SocketPath,
    child: Jailed,
}

/// The virtiofsd binary: `$VESSEL_VIRTIOFSD`, else `virtiofsd` on `PATH`.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VESSEL_VIRTIOFSD") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("virtiofsd"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            "virtiofsd is not installed (scripts/setup.sh installs it: cargo install virtiofsd)"
                .to_string()
        })
}

/// The tag of share `i`.
pub fn tag(i: usize) -> String {
    format!("vessel-vol{i}")
}

fn pid_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("virtiofsd-{i}.pid"))
}

/// Starts one virtiofsd per share, with its socket, pid and log in the container
/// directory `dir`, in the VM's cgroup (`cgroup_procs`), and waits until each listens.
pub fn start(
    shares: &[Share],
    dir: &Path,
    cgroup_procs: &[PathBuf],
) -> Result<Vec<Daemon>, String> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let bin = binary()?;
    let mut daemons = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let name = format!("fs-{i}.sock");
        let _ = std::fs::remove_file(dir.join(&name));
        let socket = socket_path(dir, &name).map_err(|e| format!("naming {name}: {e}"))?;
        let log_path = dir.join(format!("virtiofsd-{i}.log"));
        let log =
            File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--shared-dir".into(),
            share.dir.clone().into(),
            "--socket-path".into(),
            socket.path.clone().into(),
        ];
        args.extend(
            [
                "--sandbox",
                "namespace",
                "--seccomp",
                "kill",
                "--log-level",
                "error",
            ]
            .map(Into::into),
        );
        if share.read_only {
            args.push("--readonly".into());
        }
        let log: std::os::fd::OwnedFd = log.into();
        // The jail's namespaces (its sandbox adds mount, PID and network namespaces of its
        // own below them), the VM's cgroup, no_new_privs and the baseline filter; it keeps
        // root and drops capabilities itself.
        let jail = JailSpec::helper(jail::Mode::Helper, cgroup_procs);
        let child = jail::spawn(&jail, &bin, &args, &log, &log)
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        // With its start time: the socket path may be an alias that does not name this
        // directory, so the command line cannot tell a reused pid from this daemon.
        liveness::record(&pid_file(dir, i), child.id() as i32);
        daemons.push(Daemon {
            tag: tag(i),
            socket,
            child,
        });
        let d = daemons.last_mut().expect("just pushed");
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !dir.join(&name).exists() {
            let failed = |why: String| {
                let mut msg = format!("virtiofsd for {}: {why}", share.dir.display());
                for l in log_tail(&log_path, 4) {
                    msg.push_str("\n  virtiofsd: ");
                    msg.push_str(&l);
                }
                msg
            };
            if let Ok(Some(st)) = d.child.try_wait() {
                let err = failed(format!("exited ({st}) before listening"));
                stop(&mut daemons);
                return Err(err);
            }
            if Instant::now() > deadline {
                let err = failed(format!("not listening after {LISTEN_TIMEOUT:?}"));
                stop(&mut daemons);
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(daemons)
}

/// Ends and reaps the daemons (they normally end by themselves when the VMM goes).
pub fn stop(daemons: &mut [Daemon]) {
    for d in daemons.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(1);
        while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = d.child.kill();
        let _ = d.child.wait();
    }
}

/// Kills the virtiofsd processes a crashed supervisor left for the container in `dir`
/// (each pid file's process, if it is still the one started) and removes their files.
pub fn cleanup(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("virtiofsd-") && name.ends_with(".pid") {
            liveness::kill_recorded(&e.path());
        }
        if name.starts_with("fs-") && name.ends_with(".sock") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
