//! The default network of a container: pasta (Debian's `passt` package) attached to the
//! container's network namespace. It creates the namespace's interface (a tap device it
//! serves), gives it the address plan both modes share, translates the container's TCP and
//! UDP to host sockets, forwards DNS to the host's resolver, and binds the published ports.
//!
//! pasta joins the namespace through a bind mount of it (`<dir>/netns`), as `ip netns`
//! names them: its own `/proc/<pid>/ns/net` would need ptrace access to the container's
//! init, which pasta, having dropped its other capabilities, no longer has. It keeps root
//! with CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_NET_BIND_SERVICE (it needs them to enter and
//! configure a namespace that belongs to the host's user namespace), in a session of its
//! own, dying with its supervisor; [`cleanup`] ends what a crashed supervisor left.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::isolation::network::{helper, PortMapping};
use crate::isolation::IsolationError;

/// The bind mount of the container's network namespace.
fn netns_file(dir: &Path) -> PathBuf {
    dir.join("netns")
}

/// Whether the network namespace of `pid` has a default route (pasta configured it).
fn routed(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/net/route"))
        .map(|t| {
            t.lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
        })
        .unwrap_or(false)
}

/// Attaches pasta to the network namespace of the container's init `pid` and waits until
/// the interface is configured and every published port bound.
pub fn start(dir: &Path, pid: i32, ports: &[PortMapping]) -> Result<(), IsolationError> {
    let fail = |e: String| IsolationError::runtime("starting the network (pasta)", e);
    let bin = helper::binary("pasta").map_err(fail)?;
    let ns = netns_file(dir);
    File::create(&ns).map_err(|e| IsolationError::io(format!("creating {}", ns.display()), e))?;
    mount(
        Some(Path::new(&format!("/proc/{pid}/ns/net"))),
        &ns,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| IsolationError::runtime("naming the container's network namespace", e))?;
    let log_path = helper::log_path(dir);
    let log = File::create(&log_path)
        .map_err(|e| IsolationError::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| IsolationError::io("duplicating the log", e))?;
    let mut cmd = Command::new(&bin);
    cmd.args(helper::common_args(ports))
        .args(["--config-net", "--ns-ifname", "eth0", "--runas", "0:0"])
        // Nothing from the namespace to the host's ports: the host is reached through the
        // gateway address only.
        .args(["--tcp-ns", "none", "--udp-ns", "none", "--netns"])
        .arg(&ns)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid, close_range and prctl are async-signal-safe system calls with no memory effects
    // on the parent.
    unsafe {
        cmd.pre_exec(|| {
            // Ctrl-C at vessel's terminal does not reach it; it dies with its supervisor.
            libc::setsid();
            // Nothing of the supervisor's: an inherited pipe end (the detached run's
            // ready pipe) would keep its reader waiting as long as pasta lives.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("running {}: {e}", bin.display())))?;
    helper::record(dir, child.id() as i32);
    let ready = helper::wait_ready(
        "pasta",
        ports,
        &log_path,
        || child.try_wait(),
        || routed(pid),
    );
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(e));
    }
    // Not waited for here: cleanup kills it by its recorded pid, and it dies with this
    // supervisor in any case.
    drop(child);
    Ok(())
}

/// Ends the container's pasta and releases its namespace's name.
pub fn cleanup(dir: &Path) {
    helper::cleanup(dir);
    let ns = netns_file(dir);
    let _ = umount2(&ns, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(ns);
}
