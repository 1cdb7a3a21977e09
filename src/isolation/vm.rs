//! VM isolation: every container boots in a microVM of its own, with its own kernel.
//!
//! `start` finds the guest kernel, packs (or reuses) the initramfs with the guest agent,
//! gets the image's ext4 disk and a fresh container disk, boots the VMM chosen for this
//! host, waits for the agent, and asks it to run the container's process. The vessel
//! process that called `start` supervises the VM: it owns the agent channel and serves a
//! control socket so other vessel processes can `exec` and `kill`. See docs/vm-mode.md.

mod builtin;
pub mod choice;
mod disk;
mod jail;
mod machine;
mod machine_spec;
mod mux;
mod passt;
mod process;
mod qemu;
mod socket_path;
mod stream;
mod virtiofs;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vessel_agent::{
    Confinement, FileSpec, FrameWriter, Message, NetworkSpec, RootfsSpec, VolumeSpec,
};

use super::cgroup;
use super::options::{RunOption, Support};
use super::{
    confinement, network, seccomp, Backend, BindMount, IsolationError, LaunchSpec, NetworkMode,
    Process, Stdio, Target,
};
use crate::boot;
use crate::isolation::ProcessSpec;
use choice::Vmm;
use machine::{HostConfinement, Machine};
use machine_spec::MachineSpec;
use mux::Mux;
use process::{ExecProcess, Timings, VmProcess};
use stream::StreamEnd;

pub(crate) use machine::log_tail;

/// Default guest memory when `--memory` is not given.
const DEFAULT_MEMORY_MIB: u32 = 256;
/// Smallest guest memory the Debian kernel and agent boot in comfortably.
const MIN_MEMORY_MIB: u32 = 96;
/// How long a boot may take before it is declared hung (TCG on a busy host is slow).
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to assemble the root and start the process.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The VM backend.
pub struct VmBackend;

/// What the host can give a VM.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// Physical memory, in MiB.
    pub memory_mib: u64,
}

/// This host's CPUs (those vessel may run on) and memory.
pub fn host_limits() -> HostLimits {
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib >> 10);
    HostLimits {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib,
    }
}

/// A VM's size from `--cpus` and `--memory`, with a note for each value that was rounded.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSize {
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// What was rounded, for the user.
    pub notes: Vec<String>,
}

/// `--cpus` is the vCPU count (rounded up to whole vCPUs) and `--memory` the guest's RAM
/// (at least what the guest kernel boots in). Values no VM here can have are refused: a
/// guest with more vCPUs than the host has CPUs crawls (and under TCG pegs every core until
/// the boot times out), and more memory than the host has is promised, not there.
pub fn size_of(r: &super::Resources, host: &HostLimits) -> Result<VmSize, String> {
    let mut notes = Vec::new();
    let cpus = match r.cpus {
        None => 1,
        Some(c) if c.is_nan() || c <= 0.0 => {
            return Err(format!("--cpus {c}: must be more than 0"))
        }
        Some(c) => {
            let whole = c.ceil();
            if whole > host.cpus as f64 || whole > vessel_vmm::config::MAX_VCPUS as f64 {
                return Err(format!(
                    "--cpus {c}: a VM here can have at most {} vCPUs (this host has {} CPUs)",
                    host.cpus.min(vessel_vmm::config::MAX_VCPUS as usize),
                    host.cpus
                ));
            }
            if whole != c {
                notes.push(format!("--cpus {c}: a VM has whole vCPUs; it gets {whole}"));
            }
            whole as u8
        }
    };
    let memory_mib = match r.memory {
        None => DEFAULT_MEMORY_MIB,
        Some(b) => {
            let mib = b.div_ceil(1 << 20);
            if mib > host.memory_mib {
                return Err(format!(
                    "--memory {mib}m: more than this host's {} MiB of memory",
                    host.memory_mib
                ));
            }
            if mib < MIN_MEMORY_MIB as u64 {
                notes.push(format!(
                    "--memory {mib}m: raised to {MIN_MEMORY_MIB}m, the least the guest kernel boots in"
                ));
                MIN_MEMORY_MIB
            } else {
                if b % (1 << 20) != 0 {
                    notes.push(format!("--memory: rounded up to {mib}m (whole MiB)"));
                }
                mib as u32
            }
        }
    };
    Ok(VmSize {
        cpus,
        memory_mib,
        notes,
    })
}

fn unavailable(msg: impl std::fmt::Display) -> IsolationError {
    IsolationError::Unavailable(format!("VM isolation: {msg}"))
}

/// The pid of this container's VMM, if it runs: the pid file's, checked against the
/// process's command line (which names the container directory), so that a reused pid is
/// never taken for it.
fn own_vmm(dir: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(machine::pid_file(dir))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    // The VMM runs in the container's cgroup (its command line names only jail paths).
    let id = dir.file_name()?.to_string_lossy();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = cgroup::path(&id);
    cgroups
        .lines()
        .any(|l| l.rsplit(':').next() == Some(own.as_str()))
        .then_some(pid)
}

/// Present while a VM is being killed on purpose (`kill_now`).
pub(crate) fn killed_marker(dir: &Path) -> PathBuf {
    dir.join("killed")
}

/// The host directory each bind shares: the source itself, or a file's parent directory
/// (single-file binds share the directory and bind the one file in the guest).
fn shares_of(binds: &[BindMount]) -> Result<Vec<virtiofs::Share>, IsolationError> {
    binds
        .iter()
        .map(|b| {
            let dir = if b.source.is_dir() {
                b.source.clone()
            } else {
                b.source
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| IsolationError::runtime("sharing a volume", "no parent"))?
            };
            Ok(virtiofs::Share {
                dir,
                read_only: b.read_only,
            })
        })
        .collect()
}

/// The guest's view of the binds: which virtio-fs tag to mount where.
fn volume_specs(binds: &[BindMount]) -> Result<Vec<VolumeSpec>, IsolationError> {
    binds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let file = if b.source.is_dir() {
                None
            } else {
                Some(
                    b.source
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .ok_or_else(|| {
                            IsolationError::runtime("sharing a volume", "no file name")
                        })?,
                )
            };
            Ok(VolumeSpec {
                tag: virtiofs::tag(i),
                destination: b.destination.to_string_lossy().into_owned(),
                read_only: b.read_only,
                file,
            })
        })
        .collect()
}

/// The guest's view of the process spec. Only the first start carries the root
/// filesystem and the confinement; the agent applies that confinement to every process of
/// the container, exec sessions included.
fn agent_spec(
    p: &ProcessSpec,
    rootfs: Option<RootfsSpec>,
    confinement: Option<Confinement>,
) -> vessel_agent::ProcessSpec {
    vessel_agent::ProcessSpec {
        argv: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: p.uid,
        gid: p.gid,
        groups: p.additional_gids.clone(),
        tty: p.terminal,
        rootfs,
        confinement,
    }
}

/// What confines the container's processes in the guest: the same capabilities and
/// seccomp filter as container mode on the host (compiled here, loaded by the agent), and
/// no_new_privs.
fn confinement_of(spec: &LaunchSpec) -> Result<Confinement, IsolationError> {
    let caps = confinement::capabilities(&spec.cap_add, &spec.cap_drop)?;
    let prefixed: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
    let seccomp = seccomp::compile_bpf(&seccomp::default_profile(&prefixed))
        .map_err(|e| IsolationError::runtime("compiling the seccomp filter", e))?;
    Ok(Confinement {
        capabilities: caps.iter().filter_map(|c| confinement::number(c)).collect(),
        no_new_privs: true,
        seccomp,
    })
}

/// The host TSC frequency in kHz; TCG guests need it on their command line because their
/// own calibration against the emulated PIT fails often enough to hang boots.
fn host_tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(k) = s.trim().parse() {
            return Some(k);
        }
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The network card's MAC address: locally administered, unicast, from the container ID.
fn mac_of(id: &str) -> String {
    let hex: Vec<&str> = (0..5)
        .map(|i| id.get(2 * i..2 * i + 2).unwrap_or("00"))
        .collect();
    format!("02:{}", hex.join(":"))
}

/// The guest kernel command line for a VMM.
pub fn kernel_cmdline(vmm: Vmm, debug: bool) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        "panic=-1".into(),
        "rdinit=/init".into(),
        "edd=off".into(),
        "cryptomgr.notests".into(),
        "8250.nr_uarts=1".into(),
        "random.trust_cpu=on".into(),
        if debug { "loglevel=7" } else { "loglevel=4" }.into(),
    ];
    match vmm {
        Vmm::Builtin => c.push("reboot=k".into()),
        Vmm::Qemu { kvm: false } => {
            if let Some(khz) = host_tsc_khz() {
                c.push(format!("tsc_early_khz={khz}"));
            }
        }
        Vmm::Qemu { kvm: true } => {}
    }
    // A debugging aid (and how the tests break a boot on purpose).
    if let Ok(extra) = std::env::var("VESSEL_KERNEL_ARGS") {
        c.push(extra);
    }
    c.join(" ")
}

/// Memory the VMM may use beyond the guest's own (its code, device buffers, page tables,
/// and for QEMU under TCG its translation cache, bounded by `tb-size`), in MiB.
pub fn vmm_overhead_mib(vmm: Vmm) -> u64 {
    match vmm {
        Vmm::Builtin => 64,
        Vmm::Qemu { kvm: true } => 192,
        Vmm::Qemu { kvm: false } => 192 + qemu::TCG_CACHE_MIB,
    }
}

/// Memory each virtiofsd may use, in MiB (its thread pool and buffers; the guest memory
/// it maps is the VMM's, charged once).
pub const VIRTIOFSD_OVERHEAD_MIB: u64 = 64;

/// Memory passt may use, in MiB: about 30 MiB resident when idle (its flow tables and
/// buffers), plus the socket buffers of the connections it relays, which the cgroup
/// charges to it.
pub const PASST_OVERHEAD_MIB: u64 = 64;

/// What the VM's host processes may use together: its memory plus the overheads above,
/// its vCPUs plus one CPU for the VMM's own threads and the helpers, and 512 threads.
fn host_limits_of(
    vmm: Vmm,
    cpus: u8,
    memory_mib: u32,
    shares: usize,
    networked: bool,
) -> cgroup::Limits {
    let mib = u64::from(memory_mib)
        + vmm_overhead_mib(vmm)
        + VIRTIOFSD_OVERHEAD_MIB * shares as u64
        + if networked { PASST_OVERHEAD_MIB } else { 0 };
    cgroup::Limits {
        memory: mib << 20,
        cpu_quota_us: (u64::from(cpus) + 1) * cgroup::CPU_PERIOD_US,
        pids: 512,
    }
}

fn boot_timeout() -> Duration {
    std::env::var("VESSEL_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_BOOT_TIMEOUT)
}

fn dup(fd: i32) -> Result<File, IsolationError> {
    // SAFETY: F_DUPFD_CLOEXEC on a standard descriptor returns a new descriptor we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(IsolationError::io(
            "duplicating a standard stream",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: n is a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(n) })
}

/// The host end of a `-t` process: a pseudo-terminal whose master goes to the caller and
/// whose slave, in raw mode (the guest's terminal already did the line discipline), carries
/// the guest's bytes.
fn host_pty() -> Result<(OwnedFd, File), IsolationError> {
    let io = |e| IsolationError::io("allocating a terminal", e);
    let pty = nix::pty::openpty(None, None).map_err(|e| io(std::io::Error::from(e)))?;
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).map_err(|e| io(e.into()))?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t)
        .map_err(|e| io(e.into()))?;
    for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own only sets close-on-exec.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((pty.master, File::from(pty.slave)))
}

/// Output files, stdin source and optional terminal master for a process's stdio.
fn wire(
    stdio: Stdio,
    terminal: bool,
) -> Result<(File, File, File, Option<OwnedFd>), IsolationError> {
    if terminal {
        let (master, slave) = host_pty()?;
        let c = |f: &File| {
            f.try_clone()
                .map_err(|e| IsolationError::io("duplicating the terminal", e))
        };
        return Ok((c(&slave)?, c(&slave)?, slave, Some(master)));
    }
    let pick = |fd: Option<OwnedFd>, std: i32| match fd {
        Some(fd) => Ok(File::from(fd)),
        None => dup(std),
    };
    Ok((
        pick(stdio.stdout, 1)?,
        pick(stdio.stderr, 2)?,
        pick(stdio.stdin, 0)?,
        None,
    ))
}

/// Follows the kernel log onto stderr while the VM runs (`--debug`).
fn follow_console(path: PathBuf, end: Arc<StreamEnd>) {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut pos = 0usize;
        loop {
            let done = end.is_done();
            if let Ok(mut f) = File::open(&path) {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() && buf.len() > pos {
                    let _ = std::io::stderr().write_all(&buf[pos..]);
                    pos = buf.len();
                }
            }
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// `--vmm`, or `auto`.
fn requested_vmm(spec: &LaunchSpec) -> &str {
    spec.vm.vmm.as_deref().unwrap_or("auto")
}

impl Backend for VmBackend {
    fn validate(&self, spec: &LaunchSpec) -> Result<Vec<String>, IsolationError> {
        choice::choose(requested_vmm(spec))
            .map_err(|e| IsolationError::Refused(format!("VM isolation: {e}")))?;
        if !spec.binds.is_empty() {
            virtiofs::binary().map_err(|e| IsolationError::Refused(format!("--volume: {e}")))?;
        }
        if spec.network == NetworkMode::Default {
            network::helper::binary("passt").map_err(IsolationError::Refused)?;
        }
        let size = size_of(&spec.resources, &host_limits()).map_err(IsolationError::Refused)?;
        // The start request, without the confinement the start adds (its seccomp program
        // is a few KiB): one the protocol cannot carry is refused before anything boots.
        let probe = Message::Start {
            stream: 0,
            spec: Box::new(agent_spec(&spec.process, None, None)),
        };
        let encoded = vessel_agent::frame::encode(&probe)
            .map_err(|e| IsolationError::Refused(e.to_string()))?;
        if encoded.len() + (64 << 10) > vessel_agent::frame::MAX_START {
            return Err(IsolationError::Refused(
                vessel_agent::FrameError::StartTooLarge(encoded.len()).to_string(),
            ));
        }
        Ok(size.notes)
    }

    fn supports(&self, option: RunOption) -> Support {
        use RunOption::*;
        match option {
            NetworkHost => Support::No(
                "a VM has a kernel and network stack of its own and cannot share the \
                 host's; use --isolation container for --network host",
            ),
            Vmm | Kernel | Debug | Cpus | Memory | PidsLimit | Interactive | Tty | Env
            | Workdir | User | Entrypoint | Volume | Tmpfs | ReadOnly | NetworkNone | Hostname
            | CapAdd | CapDrop | NetworkDefault | Publish | PublishAll => Support::Yes,
        }
    }

    fn start(&self, spec: &LaunchSpec, stdio: Stdio) -> Result<Box<dyn Process>, IsolationError> {
        let begin = Instant::now();
        let debug = spec.vm.debug;
        let rootfs = RootfsSpec {
            hostname: spec.process.hostname.clone(),
            readonly: spec.read_only,
            masked_paths: confinement::MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            readonly_paths: confinement::READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            tmpfs: spec
                .tmpfs
                .iter()
                .map(|t| t.to_string_lossy().into_owned())
                .collect(),
            pids_limit: spec.resources.pids,
            volumes: volume_specs(&spec.binds)?,
            network: (spec.network == NetworkMode::Default).then_some(NetworkSpec {
                address: network::ADDRESS,
                prefix_len: network::PREFIX_LEN,
                gateway: network::GATEWAY,
            }),
            files: network::etc_files(&spec.process.hostname, spec.network)
                .into_iter()
                .map(|(name, contents)| FileSpec {
                    path: format!("/etc/{name}"),
                    contents,
                })
                .collect(),
        };
        let start = Message::Start {
            stream: 0,
            spec: Box::new(agent_spec(
                &spec.process,
                Some(rootfs),
                Some(confinement_of(spec)?),
            )),
        };
        let size = size_of(&spec.resources, &host_limits()).map_err(IsolationError::Refused)?;
        let (cpus, memory_mib) = (size.cpus, size.memory_mib);
        let choice = choice::choose(requested_vmm(spec)).map_err(unavailable)?;
        let root = &spec.state_root;
        let kernel =
            boot::kernel::discover(root, spec.vm.kernel.as_deref()).map_err(unavailable)?;
        let initramfs = boot::initramfs::prepare(root, &kernel).map_err(unavailable)?;
        let boot_image = boot::vmlinux::boot_image(root, &kernel.image).map_err(unavailable)?;
        if debug {
            eprintln!("vessel: vm backend: {} ({})", choice.vmm, choice.reason);
            eprintln!(
                "vessel: vm kernel: {} ({}), release {}, modules {}",
                kernel.image.display(),
                kernel.source,
                kernel.release.as_deref().unwrap_or("unknown"),
                kernel
                    .modules
                    .as_ref()
                    .map_or("none".into(), |m| m.display().to_string())
            );
            eprintln!(
                "vessel: vm initramfs: {} (agent {})",
                initramfs.path.display(),
                initramfs.agent.display()
            );
        }
        let image_disk = spec.image_disk.clone().ok_or_else(|| {
            IsolationError::runtime("starting the VM", "the launch has no image disk")
        })?;
        let container_disk = disk::create_container_disk(&spec.dir)
            .map_err(|e| IsolationError::runtime("creating the container disk", e))?;
        let channel_path = socket_path::socket_path(&spec.dir, "agent.sock")
            .map_err(|e| IsolationError::io("naming the agent socket", e))?;
        let shares = shares_of(&spec.binds)?;
        let confine = HostConfinement {
            uid: jail::uid_for(&spec.id),
            cgroup_procs: cgroup::create(
                &spec.id,
                host_limits_of(
                    choice.vmm,
                    cpus,
                    memory_mib,
                    shares.len(),
                    spec.network == NetworkMode::Default,
                ),
            )
            .map_err(|e| IsolationError::runtime("creating the VM's cgroup", e))?,
        };
        let mut daemons = virtiofs::start(&shares, &spec.dir, &confine.cgroup_procs)
            .map_err(|e| IsolationError::runtime("sharing the volumes", e))?;
        let passt = if spec.network == NetworkMode::Default {
            match passt::start(
                &spec.dir,
                &spec.id,
                &spec.ports,
                confine.uid,
                &confine.cgroup_procs,
            ) {
                Ok(p) => Some(p),
                Err(e) => {
                    virtiofs::stop(&mut daemons);
                    return Err(IsolationError::runtime("starting the network (passt)", e));
                }
            }
        } else {
            None
        };
        let mspec = MachineSpec {
            net: passt.as_ref().map(|p| (p.socket.clone(), mac_of(&spec.id))),
            shares: daemons
                .iter()
                .map(|d| (d.tag.clone(), d.socket.path.clone()))
                .collect(),
            kernel: boot_image,
            initrd: initramfs.path.clone(),
            cmdline: kernel_cmdline(choice.vmm, debug),
            cpus,
            memory_mib,
            image_disk,
            container_disk,
            channel: channel_path.path.clone(),
            console_log: spec.dir.join("console.log"),
        };
        let assets_ready = Instant::now();
        let (stdout, stderr, stdin, pty) = wire(stdio, spec.process.terminal)?;
        let end = Arc::new(StreamEnd::new(stdout, stderr));
        if debug {
            follow_console(mspec.console_log.clone(), end.clone());
        }
        let mut machine = Machine::boot(
            &mspec,
            choice.vmm,
            &spec.dir,
            boot_timeout(),
            daemons,
            passt,
            &confine,
        )
        .map_err(|m| IsolationError::Runtime {
            context: "booting the VM",
            message: m,
        })?;
        if debug {
            eprintln!("vessel: vm guest kernel {} is up", machine.kernel_release);
        }
        let timings = Timings {
            begin,
            assets_ready,
            vmm_started: machine.started_at,
            jail_cpu_ms: machine.jail_cpu_ms,
            agent_ready: machine.ready_at,
        };
        let channel = machine
            .channel
            .try_clone()
            .map_err(|e| IsolationError::io("the VM channel", e))?;
        let mux = Mux::start(channel).map_err(|e| IsolationError::io("the VM channel", e))?;
        mux.attach_local(0, end.clone());
        let started = if mux.send(&start) {
            end.wait_started(START_TIMEOUT)
        } else {
            Err("the VM closed the agent channel".into())
        };
        if let Err(why) = started {
            mux.send(&Message::Shutdown);
            machine.stop(Duration::from_secs(3));
            return Err(IsolationError::Runtime {
                context: "starting the container's process in the VM",
                message: machine.failure(&why),
            });
        }
        {
            let (mux, end) = (mux.clone(), end.clone());
            std::thread::spawn(move || {
                stream::pump_stdin(stdin, 0, |m| mux.send(&m), || end.is_done())
            });
        }
        mux.serve_control(&spec.dir)
            .map_err(|e| IsolationError::io("serving the VM control socket", e))?;
        Ok(Box::new(VmProcess {
            machine: Mutex::new(machine),
            mux,
            end,
            pty: Mutex::new(pty),
            dir: spec.dir.clone(),
            debug,
            timings,
        }))
    }

    fn exec(
        &self,
        target: &Target,
        process: &ProcessSpec,
        stdio: Stdio,
    ) -> Result<Box<dyn Process>, IsolationError> {
        let (stdout, stderr, stdin, pty) = wire(stdio, process.terminal)?;
        let end = Arc::new(StreamEnd::new(stdout, stderr));
        let p = ExecProcess::start(
            &target.dir,
            agent_spec(process, None, None),
            stdin,
            end,
            pty,
        )?;
        Ok(Box::new(p))
    }

    fn signal(&self, target: &Target, signal: i32) -> Result<(), IsolationError> {
        let path = mux::control_socket(&target.dir);
        let short = socket_path::socket_path(&target.dir, mux::CONTROL_SOCKET)
            .map_err(|e| IsolationError::io("naming the control socket", e))?;
        let conn = std::os::unix::net::UnixStream::connect(&short.path).map_err(|e| {
            IsolationError::runtime(
                "signalling the VM",
                format!(
                    "{} is not reachable (is the container running?): {e}",
                    path.display()
                ),
            )
        })?;
        let unanswered = || {
            IsolationError::Unresponsive(format!(
                "the VM did not confirm the signal within {:?} (hung, stopped or out of disk?); \
                 `vessel kill -s KILL` ends it",
                mux::SIGNAL_ANSWER_TIMEOUT
            ))
        };
        let io = |e| IsolationError::io("signalling the VM", e);
        FrameWriter::new(conn.try_clone().map_err(io)?)
            .write(&Message::Signal { stream: 0, signal })
            .map_err(|e| IsolationError::runtime("signalling the VM", e))?;
        conn.set_read_timeout(Some(mux::SIGNAL_ANSWER_TIMEOUT + Duration::from_secs(1)))
            .map_err(io)?;
        match vessel_agent::FrameReader::new(conn).read() {
            Ok(Some(Message::Signaled { result: 0, .. })) => Ok(()),
            Ok(Some(Message::Signaled { result, .. })) if result == libc::ESRCH => Err(
                IsolationError::runtime("signalling the VM", "its process has already exited"),
            ),
            Ok(Some(Message::Signaled { result, .. })) => {
                Err(io(std::io::Error::from_raw_os_error(result)))
            }
            _ => Err(unanswered()),
        }
    }

    fn kill_now(&self, target: &Target) -> Result<(), IsolationError> {
        // The supervisor sees its VMM die; this tells it the death was asked for.
        std::fs::write(killed_marker(&target.dir), b"")
            .map_err(|e| IsolationError::io("marking the VM as killed", e))?;
        if let Some(pid) = own_vmm(&target.dir) {
            // SAFETY: kill takes plain integers; the pid was checked to be our VMM.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }

    fn cleanup(&self, target: &Target) -> Result<(), IsolationError> {
        let pidf = machine::pid_file(&target.dir);
        if let Some(pid) = own_vmm(&target.dir) {
            // SAFETY: kill takes plain integers; the pid was checked to be our VMM.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                // SAFETY: reaping our own child if it is one; harmless otherwise.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        virtiofs::cleanup(&target.dir);
        passt::cleanup(&target.dir, &target.id);
        cgroup::remove(&target.id);
        let jail = target.dir.join("jail");
        if jail.exists() {
            std::fs::remove_dir(&jail)
                .map_err(|e| IsolationError::io(format!("removing {}", jail.display()), e))?;
        }
        for f in [
            pidf,
            killed_marker(&target.dir),
            mux::control_socket(&target.dir),
            target.dir.join("agent.sock"),
            target.dir.join("vmm.json"),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(IsolationError::io(format!("removing {}", f.display()), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::Resources;

    const HOST: HostLimits = HostLimits {
        cpus: 2,
        memory_mib: 24 * 1024,
    };

    fn size(cpus: Option<f64>, memory: Option<u64>) -> Result<VmSize, String> {
        size_of(
            &Resources {
                cpus,
                memory,
                pids: None,
            },
            &HOST,
        )
    }

    #[test]
    fn defaults_and_whole_values_pass_quietly() {
        let s = size(None, None).unwrap();
        assert_eq!((s.cpus, s.memory_mib), (1, DEFAULT_MEMORY_MIB));
        assert!(s.notes.is_empty());
        let s = size(Some(2.0), Some(512 << 20)).unwrap();
        assert_eq!((s.cpus, s.memory_mib, s.notes.len()), (2, 512, 0));
    }

    #[test]
    fn rounding_is_said() {
        let s = size(Some(0.5), Some(32 << 20)).unwrap();
        assert_eq!((s.cpus, s.memory_mib), (1, MIN_MEMORY_MIB));
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(s.notes[0].contains("gets 1"), "{:?}", s.notes);
        assert!(s.notes[1].contains("raised to 96m"), "{:?}", s.notes);
        let s = size(None, Some((200 << 20) + 1)).unwrap();
        assert_eq!(s.memory_mib, 201);
        assert!(s.notes[0].contains("201m"), "{:?}", s.notes);
    }

    #[test]
    fn what_the_host_cannot_give_is_refused() {
        let e = size(Some(64.0), None).unwrap_err();
        assert!(e.contains("at most 2 vCPUs"), "{e}");
        assert!(size(Some(2.5), None).is_err());
        assert!(size(Some(0.0), None).is_err());
        assert!(size(Some(f64::NAN), None).is_err());
        let e = size(None, Some(64 << 30)).unwrap_err();
        assert!(e.contains("24576 MiB"), "{e}");
    }
}
