//! A container's life, for both isolation modes, in containerd's shape: [`prepare`] resolves
//! everything a container needs once (image, process, mounts, resources, privileges),
//! refuses what its isolation mode cannot honour before anything exists, records the
//! container and writes its launch description; a backend then only runs that
//! description, in the foreground ([`run_foreground`]) or under a detached supervisor
//! ([`start_detached`], [`supervise_detached`]). Stopping, killing and removing are here
//! too, so that they behave alike in both modes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vessel_images::Store;

use super::image::{self, PullPolicy};
use super::process::{self, ImageDefaults, Overrides};
use super::record::{Record, Records, State};
use super::supervise::{self, Attach};
use super::{layout, names, now, recovery};
use crate::isolation::network::{self, PortMapping};
use crate::isolation::options;
use crate::isolation::{
    self, BindMount, Exit, IsolationKind, LaunchSpec, NetworkMode, ProcessSpec, Resources, Target,
    VmOptions,
};
use crate::liveness;

/// How long a container may take to end after a delivered SIGKILL (a VM's guest still
/// reports the exit and powers off) before vessel kills it from the outside.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// What `vessel run` asks for, parsed from its command line.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// `--isolation`.
    pub isolation: IsolationKind,
    /// The image reference.
    pub image: String,
    /// `--pull`.
    pub pull: PullPolicy,
    /// `--name`.
    pub name: Option<String>,
    /// Entrypoint, command, environment, working directory, user, hostname, terminal.
    pub overrides: Overrides,
    /// `-v`, parsed.
    pub binds: Vec<BindMount>,
    /// `--tmpfs`.
    pub tmpfs: Vec<PathBuf>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--network`.
    pub network: NetworkMode,
    /// `-p`, parsed (host port 0: chosen at start).
    pub ports: Vec<PortMapping>,
    /// `-P`: also publish the image's exposed ports.
    pub publish_all: bool,
    /// `--memory`, `--cpus`, `--pids-limit`.
    pub resources: Resources,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--vmm`, `--kernel`, `--debug`.
    pub vm: VmOptions,
    /// `-i`.
    pub interactive: bool,
    /// `--rm`.
    pub rm: bool,
}

/// A container recorded and ready to start.
pub struct Prepared {
    /// Its record.
    pub record: Record,
    /// Its launch description (also in `launch.json`).
    pub spec: LaunchSpec,
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn self_start() -> (i32, u64) {
    let me = std::process::id() as i32;
    (me, liveness::start_time(me).unwrap_or(0))
}

/// The options `req` gives, for the mode's decision.
fn asked(req: &RunRequest) -> options::Asked {
    use options::RunOption::*;
    let ov = &req.overrides;
    options::Asked {
        options: Vec::new(),
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
    }
    .with(req.vm.vmm.is_some(), Vmm)
    .with(req.vm.kernel.is_some(), Kernel)
    .with(req.vm.debug, Debug)
    .with(req.resources.cpus.is_some(), Cpus)
    .with(req.resources.memory.is_some(), Memory)
    .with(req.resources.pids.is_some(), PidsLimit)
    .with(req.interactive, Interactive)
    .with(ov.terminal, Tty)
    .with(!ov.env.is_empty(), Env)
    .with(ov.workdir.is_some(), Workdir)
    .with(ov.user.is_some(), User)
    .with(ov.entrypoint.is_some(), Entrypoint)
    .with(!req.binds.is_empty(), Volume)
    .with(!req.tmpfs.is_empty(), Tmpfs)
    .with(req.read_only, ReadOnly)
    .with(req.network == NetworkMode::Default, NetworkDefault)
    .with(!req.ports.is_empty(), Publish)
    .with(req.publish_all, PublishAll)
    .with(req.network == NetworkMode::None, NetworkNone)
    .with(req.network == NetworkMode::Host, NetworkHost)
    .with(ov.hostname.is_some(), Hostname)
    .with(!req.cap_add.is_empty(), CapAdd)
    .with(!req.cap_drop.is_empty(), CapDrop)
}

/// Resolves `req` into a launch description, refuses what its mode cannot honour, and
/// records the container (record, image lease, directory, `launch.json`). Nothing exists
/// for a refused run.
pub fn prepare(
    root: &Path,
    store: &Store,
    records: &Records,
    req: &RunRequest,
) -> Result<Prepared> {
    let backend = isolation::backend(req.isolation);
    options::check(req.isolation, backend.as_ref(), &asked(req))?;
    if (!req.ports.is_empty() || req.publish_all) && req.network != NetworkMode::Default {
        bail!(
            "{} needs the default network: a container on --network {} has no ports to publish",
            if req.ports.is_empty() { "-P" } else { "-p" },
            match req.network {
                NetworkMode::None => "none",
                _ => "host (it binds the host's ports itself)",
            }
        );
    }
    let img = image::resolve(store, &req.image, req.pull)?;
    let mut ports = req.ports.clone();
    if req.publish_all {
        let exposed = img
            .config
            .config()
            .as_ref()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        for key in exposed {
            let m = network::ports::exposed(&key)
                .with_context(|| format!("the image exposes {key:?}, which is not a port"))?;
            if !ports
                .iter()
                .any(|p| p.container_port == m.container_port && p.protocol == m.protocol)
            {
                ports.push(m);
            }
        }
    }
    // Before anything exists: a port another process holds fails the run here.
    network::ports::reserve(&mut ports)?;
    let id = names::new_id().context("generating a container ID")?;
    let name = match &req.name {
        Some(n) if !names::valid_name(n) => {
            bail!("invalid container name {n:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        }
        Some(n) => n.clone(),
        None => names::generated_name(&id),
    };
    let process = process::resolve(
        &ImageDefaults::from_oci(&img.config),
        &req.overrides,
        short(&id),
        &img.rootfs,
    )?;
    let dir = layout::container_dir(root, &id);
    let mut spec = LaunchSpec {
        id: id.clone(),
        isolation: req.isolation,
        state_root: root.to_path_buf(),
        dir: dir.clone(),
        image_id: img.id.clone(),
        image_rootfs: img.rootfs.clone(),
        image_disk: None,
        process,
        binds: req.binds.clone(),
        tmpfs: req.tmpfs.clone(),
        read_only: req.read_only,
        network: req.network,
        ports,
        resources: req.resources.clone(),
        cap_add: req.cap_add.clone(),
        cap_drop: req.cap_drop.clone(),
        vm: req.vm.clone(),
    };
    for note in backend.validate(&spec)? {
        eprintln!("vessel: {note}");
    }
    if req.isolation == IsolationKind::Vm {
        // Built once per image, under the store's lock (concurrent first runs of one image
        // build it once, and GC cannot remove the tree while mke2fs reads it).
        spec.image_disk = Some(
            store
                .image_disk(&img)
                .context("preparing the image's disk for the VM")?,
        );
    }

    let (me, start) = self_start();
    let record = Record {
        id: id.clone(),
        name,
        image: req.image.clone(),
        image_id: img.id.clone(),
        command: spec.process.args.clone(),
        created: now(),
        isolation: req.isolation,
        state: State::Created,
        pid: None,
        supervisor_pid: Some(me),
        supervisor_start: Some(start),
        exit_code: None,
        oom_killed: false,
        auto_remove: req.rm,
        finished: None,
        started: None,
    };
    records.insert(&record)?;
    store
        .add_lease(&id, &img.id)
        .context("recording that the container uses its image")?;
    let written = std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .and_then(|_| {
            std::fs::write(layout::launch_file(&dir), serde_json::to_vec_pretty(&spec)?)
                .context("writing launch.json")
        });
    if let Err(e) = written {
        let _ = recovery::remove(root, records, store, &record);
        return Err(e);
    }
    Ok(Prepared { record, spec })
}

/// Runs a prepared container in the foreground to its end; removes it afterwards with
/// `--rm`.
pub fn run_foreground(
    root: &Path,
    store: &Store,
    records: &Records,
    p: &Prepared,
    interactive: bool,
) -> Result<Exit> {
    let backend = isolation::backend(p.spec.isolation);
    let result = supervise::run_main(
        records,
        backend.as_ref(),
        &p.spec,
        &Attach::Foreground {
            interactive,
            // An --rm container's log would be removed with it: skip the copy.
            log: (!p.record.auto_remove).then(|| layout::log_file(&p.spec.dir)),
        },
        &mut |_| {},
    );
    let exit = match result {
        Ok(exit) => {
            if exit.oom_killed {
                eprintln!(
                    "vessel: container {} was killed by the kernel's OOM killer (out of memory)",
                    short(&p.record.id)
                );
            }
            Ok(exit)
        }
        Err(e) => {
            let _ = records.set_exited(&p.record.id, None, false, now());
            Err(anyhow::Error::new(e))
        }
    };
    if p.record.auto_remove {
        if let Err(e) = recovery::remove(root, records, store, &p.record) {
            eprintln!("vessel: removing container {}: {e}", short(&p.record.id));
        }
    }
    exit
}

/// Starts `vessel __supervise` for a prepared container in a session of its own and waits
/// until it reports the start.
pub fn start_detached(root: &Path, store: &Store, records: &Records, p: &Prepared) -> Result<()> {
    let record = &p.record;
    let dir = &p.spec.dir;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the readiness pipe")?;
    supervise::clear_cloexec(&ready_w).context("passing the readiness pipe")?;
    let stderr = File::create(dir.join("supervisor.err")).context("creating supervisor.err")?;
    let exe = std::env::current_exe().context("locating the vessel executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("__supervise")
        .arg("--ready-fd")
        .arg(ready_w.as_raw_fd().to_string())
        .arg(&record.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(ready_w);
    if let Err(e) = spawned {
        let _ = records.set_exited(&record.id, None, false, now());
        if record.auto_remove {
            let _ = recovery::remove(root, records, store, record);
        }
        return Err(e).context("starting the container's supervisor");
    }
    let mut msg = String::new();
    File::from(ready_r)
        .read_to_string(&mut msg)
        .context("waiting for the container to start")?;
    match msg.strip_prefix("ok") {
        Some(_) => Ok(()),
        None if msg.is_empty() => bail!(
            "the container's supervisor exited before starting it (see {})",
            dir.join("supervisor.err").display()
        ),
        None => bail!("{}", msg.trim_start_matches("error: ").trim_end()),
    }
}

/// The detached supervisor: runs container `id` to its end, reporting its start on
/// `ready` (the pipe `start_detached` waits on).
pub fn supervise_detached(root: &Path, id: &str, mut ready: Option<File>) -> Result<Exit> {
    let store = Store::open(root)?;
    let records = Records::open(&store.db_path())?;
    let record = records.find(id)?;
    let (me, start) = self_start();
    records.set_supervisor(&record.id, me, start)?;
    let dir = layout::container_dir(root, &record.id);
    let spec = read_launch(&dir)?;
    let backend = isolation::backend(spec.isolation);
    let mut report = |r: Result<(), String>| {
        if let Some(mut f) = ready.take() {
            let _ = match r {
                Ok(()) => f.write_all(b"ok\n"),
                Err(e) => f.write_all(format!("error: {e}\n").as_bytes()),
            };
        }
    };
    let result = supervise::run_main(
        &records,
        backend.as_ref(),
        &spec,
        &Attach::Log(layout::log_file(&dir)),
        &mut report,
    );
    if result.is_err() {
        let _ = records.set_exited(&record.id, None, false, now());
    }
    if record.auto_remove {
        recovery::remove(root, &records, &store, &record)?;
    }
    Ok(result?)
}

/// A container's launch description, as `prepare` wrote it.
pub fn read_launch(dir: &Path) -> Result<LaunchSpec> {
    serde_json::from_slice(&std::fs::read(layout::launch_file(dir)).context("reading launch.json")?)
        .context("parsing launch.json")
}

/// How other vessel processes address a container's backend.
pub fn target(root: &Path, r: &Record) -> Target {
    Target {
        id: r.id.clone(),
        dir: layout::container_dir(root, &r.id),
        pid: r.pid,
    }
}

/// Waits until the container is no longer running (its supervisor recorded the exit, or
/// died and recovery cleaned up after it). False when `timeout` passed first.
pub fn wait_stopped(
    root: &Path,
    records: &Records,
    store: &Store,
    id: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match records.get(id) {
            Ok(Some(r)) if r.state != State::Exited => {
                if !recovery::supervised(&r) {
                    recovery::recover(root, records, store);
                    return true;
                }
            }
            _ => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Ends a running container for good, and only then returns `Ok`: SIGKILL to its process,
/// and where that does not end it (the signal was not delivered: a hung, stopped or
/// full-disk VM; or the process outlived it), the backend's `kill_now`.
pub fn end_for_good(root: &Path, records: &Records, store: &Store, r: &Record) -> Result<()> {
    let backend = isolation::backend(r.isolation);
    let t = target(root, r);
    let delivered = backend.signal(&t, libc::SIGKILL).is_ok();
    if delivered && wait_stopped(root, records, store, &r.id, KILL_GRACE) {
        return Ok(());
    }
    backend
        .kill_now(&t)
        .with_context(|| format!("killing {}", r.name))?;
    if wait_stopped(root, records, store, &r.id, KILL_GRACE) {
        Ok(())
    } else {
        bail!("container {} did not stop", r.name)
    }
}

/// `stop`: SIGTERM, then after `grace` (or at once, if the SIGTERM was not delivered)
/// [`end_for_good`].
pub fn stop(
    root: &Path,
    records: &Records,
    store: &Store,
    r: &Record,
    grace: Duration,
) -> Result<()> {
    if r.state == State::Exited {
        return Ok(());
    }
    let backend = isolation::backend(r.isolation);
    if backend.signal(&target(root, r), libc::SIGTERM).is_ok()
        && wait_stopped(root, records, store, &r.id, grace)
    {
        return Ok(());
    }
    end_for_good(root, records, store, r)
}

/// `kill`: succeeds only for a signal that was delivered; a SIGKILL only once the
/// container has ended.
pub fn kill(root: &Path, records: &Records, store: &Store, r: &Record, sig: i32) -> Result<()> {
    if r.state != State::Running {
        bail!("container {} is not running", r.name);
    }
    if sig == libc::SIGKILL {
        return end_for_good(root, records, store, r);
    }
    isolation::backend(r.isolation)
        .signal(&target(root, r), sig)
        .with_context(|| format!("signalling {}", r.name))
}

/// `rm`: removes a stopped container; with `force`, ends a running one first.
pub fn remove(
    root: &Path,
    records: &Records,
    store: &Store,
    r: &Record,
    force: bool,
) -> Result<()> {
    if r.state != State::Exited {
        if !force {
            bail!(
                "container {} is running: stop it first or use rm -f",
                r.name
            );
        }
        end_for_good(root, records, store, r)?;
    }
    match records.get(&r.id)? {
        Some(r) => recovery::remove(root, records, store, &r)
            .with_context(|| format!("removing {}", r.name)),
        // An --rm container removes itself.
        None => Ok(()),
    }
}

/// What `vessel exec` changes in the container's process.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The command.
    pub command: Vec<String>,
    /// `-e` entries (`K=V`, or `K` for the host's value).
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
}

/// Runs a process in running container `r` in the foreground and waits for it.
pub fn exec(root: &Path, r: &Record, req: &ExecRequest) -> Result<Exit> {
    if r.state != State::Running {
        bail!("container {} is not running", r.name);
    }
    let launch = read_launch(&layout::container_dir(root, &r.id))?;
    let p: ProcessSpec = process::for_exec(
        &launch.process,
        &Overrides {
            command: req.command.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            user: req.user.clone(),
            terminal: req.tty,
            ..Overrides::default()
        },
        &launch.image_rootfs,
    )?;
    let backend = isolation::backend(r.isolation);
    Ok(supervise::run_exec(
        backend.as_ref(),
        &target(root, r),
        &p,
        req.interactive,
    )?)
}
