//! The network stack behind a VM's network card: one passt per VM (Debian's `passt`),
//! which the VMM's virtio-net backend (or QEMU's `-netdev stream`) connects to over a Unix
//! socket, and which turns the guest's TCP and UDP into host sockets and binds the
//! published ports.
//!
//! passt runs in the VM's cgroup, in mount, PID, IPC and UTS namespaces of its own (not a
//! network one: it must reach the host's network), with no_new_privs and the jail's
//! baseline seccomp filter; it then drops to the VM's uid and sandboxes itself further
//! (its own user and mount namespaces, an empty root, its own seccomp filter). It serves
//! one VMM (`--one-off`): when the VMM goes, passt goes, and its ports are released. It
//! also dies with its supervisor (parent-death signal), and [`cleanup`] ends what a
//! crashed supervisor left.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::jail::{self, JailSpec, Jailed};
use crate::isolation::network::{helper, PortMapping};

/// The directory of one VM's passt socket: short (a Unix socket path has 107 bytes),
/// whatever the state root, and owned by the VM's uid, which passt runs as.
fn socket_dir(id: &str) -> PathBuf {
    Path::new("/run/vessel/net").join(id)
}

/// A running passt.
pub struct Passt {
    /// The socket the VMM connects to.
    pub socket: PathBuf,
    child: Jailed,
}

/// Whether a Unix socket is listening at `path` (in this network namespace).
fn listening(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Flags 00010000: __SO_ACCEPTCON, a listening socket.
        f.len() >= 8 && f[3] == "00010000" && f[7] == want
    })
}

/// Starts passt for the container in `dir` (ID `id`), as `uid`, in the VM's cgroup, and
/// waits until it listens and holds every published port.
pub fn start(
    dir: &Path,
    id: &str,
    ports: &[PortMapping],
    uid: u32,
    cgroup_procs: &[PathBuf],
) -> Result<Passt, String> {
    let bin = helper::binary("passt")?;
    let sdir = socket_dir(id);
    let _ = std::fs::remove_dir_all(&sdir);
    std::fs::create_dir_all(&sdir).map_err(|e| format!("creating {}: {e}", sdir.display()))?;
    std::os::unix::fs::chown(&sdir, Some(uid), Some(uid))
        .and_then(|()| std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("handing {} to the VM's uid: {e}", sdir.display()))?;
    let socket = sdir.join("passt.sock");
    let mut args = helper::common_args(ports);
    args.extend([
        OsString::from("--one-off"),
        "--socket".into(),
        socket.clone().into(),
        "--runas".into(),
        format!("{uid}:{uid}").into(),
    ]);
    let log_path = helper::log_path(dir);
    let log: std::os::fd::OwnedFd = File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?
        .into();
    let spec = JailSpec::helper(jail::Mode::NetHelper, cgroup_procs);
    let mut child = jail::spawn(&spec, &bin, &args, &log, &log)
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    helper::record(dir, child.id() as i32);
    let ready = helper::wait_ready(
        "passt",
        ports,
        &log_path,
        || child.try_wait(),
        || listening(&socket),
    );
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(Passt { socket, child })
}

impl Passt {
    /// Ends passt (it normally ends by itself when its VMM disconnects) and reaps it.
    pub fn stop(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ends the passt a crashed supervisor left for container `id` in `dir`, and removes its
/// socket directory.
pub fn cleanup(dir: &Path, id: &str) {
    helper::cleanup(dir);
    let _ = std::fs::remove_dir_all(socket_dir(id));
}
