//! The jail every VMM process runs in (vessel-vmm and QEMU alike), after Firecracker's
//! jailer: vessel sets it up between `clone` and `exec`, so the VMM never runs a single
//! instruction outside it.
//!
//! - **Namespaces:** new mount, PID (the VMM is PID 1 of its own), IPC, UTS, network (no
//!   interfaces but a downed `lo`) and cgroup namespaces.
//! - **Filesystem:** a read-only tmpfs root, pivoted into, that holds the VM's files at
//!   short fixed paths (`/vm/kernel`, `/vm/container.ext4`, `/vm/agent.sock`, ...), the
//!   shared libraries a dynamically linked VMM loads (read-only), its own `/dev/kvm` and
//!   `/dev/null`/`/dev/urandom` nodes, and nothing else: no `/proc`, `/sys`, `/etc`, `/home`,
//!   no other VM.
//! - **Privilege:** a uid and gid of the VM's own ([`uid_for`]), which own only the files the
//!   VM writes (its container disk, its serial log, its sockets); every capability dropped,
//!   the bounding set emptied, no_new_privs.
//! - **Limits:** `RLIMIT_NOFILE` and `RLIMIT_NPROC`, the VM's cgroup (memory and CPU at
//!   what `--memory`/`--cpus` asked for plus an overhead, see `vm.rs`), and a baseline seccomp
//!   filter refusing what no VMM needs (module loading, ptrace, kexec, bpf, ...), below the
//!   VMM's own stricter filters (vessel-vmm's per-thread lists, QEMU's `-sandbox`).
//! - An environment of nothing but `VESSEL_VMM_*`/`RUST_BACKTRACE`.
//!
//! The child of `clone` is a copy of a multithreaded process: between `clone` and `execve`
//! it makes raw system calls only (no allocation, no locks, no glibc `setuid`, which would
//! signal threads that are not there). Everything it needs is prepared beforehand in
//! [`Prepared`].

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Where the VM's own files are inside the jail.
pub const VM_DIR: &str = "/vm";

/// The first uid (and gid) of the range VMs run as: far above login users and the
/// subordinate ranges `useradd` hands out.
pub const UID_BASE: u32 = 0x5e55_0000;

/// How many uids the range holds.
pub const UID_COUNT: u32 = 0x1_0000;

/// Open files a jailed process may hold (QEMU needs one per eventfd, disk and thread pool
/// member; vessel-vmm a few dozen).
const NOFILE: u64 = 4096;

/// Processes (threads) a jailed uid may have: vCPUs plus QEMU's worker pool.
const NPROC: u64 = 512;

/// System calls no VMM or helper needs, refused (EPERM) in every jailed process before its
/// own filter is installed: kernel modules, kexec, ptrace and cross-process memory access,
/// eBPF and perf, keyrings, userfaultfd, clock and swap control, handle-based opens.
const DENIED_CALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "open_by_handle_at",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "userfaultfd",
    "uselib",
    "vhangup",
];

/// A file or directory of the host made visible in the jail.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The host path (any path the supervisor can resolve, `/proc/<pid>/fd/...` aliases
    /// included).
    pub host: PathBuf,
    /// The absolute path inside the jail.
    pub inside: PathBuf,
    /// Whether the VMM may write it.
    pub writable: bool,
}

/// Everything a jailed process is given.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// A host directory of the VM's own, where the jail's root is mounted (in the jail's
    /// mount namespace only: the host sees an empty directory).
    pub root: PathBuf,
    /// The VM's files.
    pub binds: Vec<Bind>,
    /// Extra read-only host directories, at the same path inside (QEMU's firmware).
    pub system_dirs: Vec<PathBuf>,
    /// Whether the process gets a `/dev/kvm` (QEMU under TCG does not).
    pub kvm: bool,
    /// Whether the program's own directory exists (empty) in the jail: QEMU finds its
    /// modules relative to it (`/usr/bin/../lib/...`), which resolves only if it does.
    pub program_dir: bool,
    /// The uid and gid it runs as.
    pub uid: u32,
    /// `cgroup.procs` files it joins.
    pub cgroup_procs: Vec<PathBuf>,
    /// How much of the jail applies.
    pub mode: Mode,
}

impl JailSpec {
    /// A helper's jail (`mode` [`Mode::Helper`] or [`Mode::NetHelper`]): namespaces, the
    /// VM's cgroup, no_new_privs and the baseline filter; the helper sandboxes itself.
    pub fn helper(mode: Mode, cgroup_procs: &[PathBuf]) -> JailSpec {
        JailSpec {
            root: PathBuf::new(),
            binds: Vec::new(),
            system_dirs: Vec::new(),
            kvm: false,
            program_dir: false,
            uid: 0,
            cgroup_procs: cgroup_procs.to_vec(),
            mode,
        }
    }
}

/// How much of the jail a process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// All of it: the VMM.
    Full,
    /// A helper that sandboxes itself and serves files with root's capabilities
    /// (virtiofsd): only the namespaces, the cgroup, no_new_privs and the baseline filter;
    /// no filesystem jail, uid, capability drop or rlimits (`root`, `binds`, `kvm` and
    /// `uid` are ignored).
    Helper,
    /// A helper that must reach the host's network (passt): as [`Mode::Helper`], but in
    /// the host's network namespace. It drops to the VM's uid and sandboxes itself.
    NetHelper,
    /// Nothing but the cgroup, a session of its own and the parent-death signal: the
    /// baseline `VESSEL_VMM_UNCONFINED=1` measures the jail's cost against (benchmarks
    /// only; never what vessel does by itself).
    Off,
}

/// The uid (and gid) of a VM: from its container id, so the files one VM writes belong to
/// no other (two ids collide with probability 1/65536, and even then each VM sees only its
/// own files through its mount namespace).
pub fn uid_for(container_id: &str) -> u32 {
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    UID_BASE + (h % UID_COUNT)
}

/// A jailed process: the supervisor's child, PID 1 of its own PID namespace.
#[derive(Debug)]
pub struct Jailed {
    pid: i32,
    status: Option<ExitStatus>,
}

impl Jailed {
    /// Its pid in the supervisor's PID namespace.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            let mut st = 0;
            // SAFETY: waitpid on our own child with a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            if r == self.pid {
                self.status = Some(ExitStatus::from_raw(st));
            }
        }
        Ok(self.status)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        while self.status.is_none() {
            let mut st = 0;
            // SAFETY: as in try_wait, blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut st, 0) };
            if r == self.pid {
                self.status = Some(ExitStatus::from_raw(st));
            } else if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(self.status.expect("set above"))
    }

    /// SIGKILLs it (as PID 1 of its namespace it ignores every other signal it does not
    /// handle).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill of our own unreaped child: the pid cannot have been reused.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One step the child takes, in order; every path is absolute on the host (under the
/// jail root) as the child sees it before `pivot_root`.
enum Op {
    Mkdir(CString),
    /// An empty file to bind a non-directory onto.
    Touch(CString),
    Bind {
        src: CString,
        dst: CString,
        read_only: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// A character device of the jail's own, owned by the jail's uid.
    Node {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
        owned: bool,
    },
}

/// Which step failed, for the error message.
const STEPS: &[&str] = &[
    "joining the VM's cgroup",
    "making mounts private",
    "mounting the jail's tmpfs root",
    "creating a directory in the jail",
    "creating a mount point in the jail",
    "bind-mounting a file into the jail",
    "making a bind mount read-only",
    "creating a symlink in the jail",
    "creating a device node in the jail",
    "pivot_root into the jail",
    "detaching the host's root",
    "making the jail's root read-only",
    "entering a cgroup namespace",
    "setting rlimits",
    "dropping the capability bounding set",
    "changing to the VM's uid and gid",
    "setting no_new_privs and the parent-death signal",
    "installing the baseline seccomp filter",
    "setting up stdio",
    "executing the VMM",
];

/// A jail ready to be entered: every string and buffer the child will touch.
struct Prepared {
    mode: Mode,
    root: CString,
    ops: Vec<Op>,
    procs: Vec<CString>,
    uid: u32,
    last_cap: u32,
    bpf: Vec<u8>,
    exe: OwnedFd,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

/// `root` + `inside` (an absolute path in the jail).
fn under(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// The steps that create `inside` and its parents (once each).
fn mkdirs(
    root: &Path,
    inside: &Path,
    made: &mut Vec<PathBuf>,
    ops: &mut Vec<Op>,
) -> io::Result<()> {
    let mut cur = PathBuf::from("/");
    for c in inside.components().skip(1) {
        cur.push(c);
        if !made.contains(&cur) {
            made.push(cur.clone());
            ops.push(Op::Mkdir(cstr(under(root, &cur))?));
        }
    }
    Ok(())
}

/// `path` with its directory resolved: a bind source must be a path of the jail's own
/// mount namespace, and an alias through `/proc/<pid>/fd/<n>` (a socket in a deep
/// directory) leads into the supervisor's, which `mount` refuses (EINVAL).
fn real_path(path: &Path) -> io::Result<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => {
            Ok(std::fs::canonicalize(dir)?.join(name))
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// The host's library directories (`/lib`, `/lib64`, `/usr/lib`, `/usr/lib64`), as
/// directories to bind or, on a merged-/usr system, symlinks to recreate.
fn library_dirs() -> Vec<PathBuf> {
    ["/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64"]
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// The baseline filter (see [`DENIED_CALLS`]), as libseccomp compiles it.
pub(super) fn baseline_filter() -> io::Result<Vec<u8>> {
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{
            "names": DENIED_CALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
    });
    crate::isolation::seccomp::compile_bpf(&profile).map_err(io::Error::other)
}

/// The steps that build the jail's filesystem: libraries, the VM's files, the program's
/// directory, device nodes.
fn filesystem(spec: &JailSpec, program: &Path, ops: &mut Vec<Op>) -> io::Result<()> {
    let root = &spec.root;
    let mut made = Vec::new();
    for lib in library_dirs().iter().chain(&spec.system_dirs) {
        let meta = lib.symlink_metadata()?;
        if meta.file_type().is_symlink() {
            if let Some(parent) = lib.parent() {
                mkdirs(root, parent, &mut made, ops)?;
            }
            ops.push(Op::Symlink {
                target: cstr(std::fs::read_link(lib)?)?,
                link: cstr(under(root, lib))?,
            });
        } else {
            mkdirs(root, lib, &mut made, ops)?;
            ops.push(Op::Bind {
                src: cstr(lib)?,
                dst: cstr(under(root, lib))?,
                read_only: true,
            });
        }
    }
    for b in &spec.binds {
        if let Some(parent) = b.inside.parent() {
            mkdirs(root, parent, &mut made, ops)?;
        }
        if b.host.is_dir() {
            mkdirs(root, &b.inside, &mut made, ops)?;
        } else {
            ops.push(Op::Touch(cstr(under(root, &b.inside))?));
        }
        ops.push(Op::Bind {
            src: cstr(real_path(&b.host)?)?,
            dst: cstr(under(root, &b.inside))?,
            read_only: !b.writable,
        });
    }
    if let Some(dir) = program
        .parent()
        .filter(|d| spec.program_dir && d.is_absolute())
    {
        mkdirs(root, dir, &mut made, ops)?;
    }
    mkdirs(root, Path::new("/dev"), &mut made, ops)?;
    let mut nodes = vec![("null", 1, 3, false), ("urandom", 1, 9, false)];
    if spec.kvm {
        // The host's node may be root's alone (0600); the jail's is the VM uid's.
        nodes.push(("kvm", 10, 232, true));
    }
    for (name, major, minor, owned) in nodes {
        ops.push(Op::Node {
            path: cstr(under(root, &Path::new("/dev").join(name)))?,
            mode: libc::S_IFCHR | if owned { 0o600 } else { 0o666 },
            dev: libc::makedev(major, minor),
            owned,
        });
    }
    Ok(())
}

fn prepare(spec: &JailSpec, program: &Path, args: &[std::ffi::OsString]) -> io::Result<Prepared> {
    let root = &spec.root;
    let mut ops = Vec::new();
    if spec.mode == Mode::Full {
        filesystem(spec, program, &mut ops)?;
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    // Executed by descriptor: the binary itself need not be in the jail.
    let exe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(program)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", program.display())))?;
    let mut argv = vec![cstr(program)?];
    for a in args {
        argv.push(cstr(a)?);
    }
    let envp = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            k.starts_with("VESSEL_VMM_") || k == "RUST_BACKTRACE"
        })
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(OsStr::from_bytes(&kv))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Prepared {
        mode: spec.mode,
        root: cstr(root)?,
        ops,
        procs: spec
            .cgroup_procs
            .iter()
            .map(cstr)
            .collect::<io::Result<_>>()?,
        uid: spec.uid,
        last_cap,
        bpf: baseline_filter()?,
        exe: exe.into(),
        argv,
        envp,
    })
}

/// Starts `program args` in a jail made from `spec`, with `stdout` and `stderr` as its
/// output and `/dev/null` as its input. Returns once it has exec'd (or why it could not).
pub fn spawn(
    spec: &JailSpec,
    program: &Path,
    args: &[std::ffi::OsString],
    stdout: &OwnedFd,
    stderr: &OwnedFd,
) -> io::Result<Jailed> {
    let p = prepare(spec, program, args)?;
    let stdin = std::fs::File::open("/dev/null")?;
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = match p.mode {
        Mode::Off => 0,
        Mode::Full | Mode::Helper => {
            libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWNET
        }
        Mode::NetHelper => {
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS
        }
    };
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child gets a copy of this
    // process's memory and runs `enter` on it, which makes only raw system calls on memory
    // prepared above, and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: as above; fds[1] is the write end of the error pipe.
        unsafe {
            libc::close(fds[0]);
            let (step, errno) = enter(
                &p,
                &argv,
                &envp,
                [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
            );
            let report = [step as i32, errno];
            libc::write(
                fds[1],
                report.as_ptr().cast(),
                std::mem::size_of_val(&report),
            );
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the write end, which we own.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is ours; OwnedFd closes it.
    let reader = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut jailed = Jailed {
        pid: pid as i32,
        status: None,
    };
    // EOF (exec closed the close-on-exec pipe) means the VMM runs; 8 bytes are a failure.
    let mut report = [0i32; 2];
    let n = loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe {
            libc::read(
                reader.as_raw_fd(),
                report.as_mut_ptr().cast(),
                std::mem::size_of_val(&report),
            )
        };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    if n > 0 {
        let _ = jailed.wait();
        let step = STEPS
            .get(report[0] as usize)
            .copied()
            .unwrap_or("setting up the jail");
        let e = io::Error::from_raw_os_error(report[1]);
        return Err(io::Error::new(e.kind(), format!("jail: {step}: {e}")));
    }
    Ok(jailed)
}

/// The child's filesystem steps: a private mount tree, the tmpfs root with its binds,
/// links and nodes, `pivot_root` into it, the host's root detached, the new root read-only.
///
/// # Safety
/// As [`enter`].
unsafe fn build_root(p: &Prepared) -> Result<(), (usize, i32)> {
    macro_rules! check {
        ($step:expr, $call:expr) => {
            if $call < 0 {
                return Err(($step, errno()));
            }
        };
    }
    let null = std::ptr::null::<libc::c_char>();
    check!(
        1,
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null()
        )
    );
    check!(
        2,
        libc::mount(
            c"tmpfs".as_ptr(),
            p.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID,
            c"mode=0755,size=1m,nr_inodes=1024".as_ptr().cast()
        )
    );
    for op in &p.ops {
        match op {
            Op::Mkdir(path) => {
                if libc::mkdir(path.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                    return Err((3, errno()));
                }
            }
            Op::Touch(path) => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check!(4, fd);
                libc::close(fd);
            }
            Op::Bind {
                src,
                dst,
                read_only,
            } => {
                check!(
                    5,
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null()
                    )
                );
                let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                if *read_only {
                    flags |= libc::MS_RDONLY;
                }
                check!(
                    6,
                    libc::mount(null, dst.as_ptr(), null, flags, std::ptr::null())
                );
            }
            Op::Symlink { target, link } => {
                check!(7, libc::symlink(target.as_ptr(), link.as_ptr()));
            }
            Op::Node {
                path,
                mode,
                dev,
                owned,
            } => {
                check!(8, libc::mknod(path.as_ptr(), *mode, *dev));
                // mknod applies the umask; the mode must be exact.
                check!(8, libc::chmod(path.as_ptr(), *mode & 0o777));
                if *owned {
                    check!(8, libc::chown(path.as_ptr(), p.uid, p.uid));
                }
            }
        }
    }
    check!(9, libc::chdir(p.root.as_ptr()));
    check!(
        9,
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    );
    check!(10, libc::umount2(c".".as_ptr(), libc::MNT_DETACH));
    check!(10, libc::chdir(c"/".as_ptr()));
    check!(
        11,
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
            std::ptr::null()
        )
    );
    Ok(())
}

/// The calling thread's errno (no allocation: safe between clone and exec).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child's side: builds the jail, drops everything, and execs. Returns only on failure:
/// the index of the failed step in [`STEPS`] and errno.
///
/// # Safety
/// Only in the child of a fork-like clone; `argv` and `envp` are NULL-terminated arrays of
/// pointers into `p`.
unsafe fn enter(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [libc::c_int; 3],
) -> (usize, i32) {
    macro_rules! check {
        ($step:expr, $call:expr) => {
            if $call < 0 {
                return ($step, errno());
            }
        };
    }
    // Outside the terminal's process group, as every VMM: Ctrl-C reaches vessel only.
    libc::setsid();
    for procs in &p.procs {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check!(0, fd);
        let w = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        check!(0, w);
    }
    if p.mode == Mode::Off {
        check!(
            16,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
        );
        return exec(p, argv, envp, stdio);
    }
    if p.mode == Mode::Full {
        if let Err(failed) = build_root(p) {
            return failed;
        }
    }
    // After joining the cgroup: a cgroup namespace is rooted where its creator is.
    check!(12, libc::unshare(libc::CLONE_NEWCGROUP));
    libc::sethostname(c"vessel-vm".as_ptr(), 9);
    if p.mode == Mode::Full {
        for (res, value) in [(libc::RLIMIT_NOFILE, NOFILE), (libc::RLIMIT_NPROC, NPROC)] {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            check!(13, libc::setrlimit(res, &lim));
        }
        for cap in 0..=p.last_cap {
            check!(14, libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0));
        }
        // Raw calls: glibc's wrappers would try to change the credentials of threads this
        // copy of the process does not have.
        let id = p.uid as libc::c_long;
        check!(
            15,
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) as libc::c_int
        );
        check!(
            15,
            libc::syscall(libc::SYS_setresgid, id, id, id) as libc::c_int
        );
        check!(
            15,
            libc::syscall(libc::SYS_setresuid, id, id, id) as libc::c_int
        );
    }
    // A change of uid clears the parent-death signal: set it after.
    check!(16, libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    check!(
        16,
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
    );
    let prog = libc::sock_fprog {
        len: (p.bpf.len() / 8) as u16,
        filter: p.bpf.as_ptr() as *mut libc::sock_filter,
    };
    check!(
        17,
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const _
        ) as libc::c_int
    );
    exec(p, argv, envp, stdio)
}

/// The child's last steps: stdio, nothing else inherited, `execveat` of the program.
///
/// # Safety
/// As [`enter`].
unsafe fn exec(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [libc::c_int; 3],
) -> (usize, i32) {
    for (target, fd) in stdio.into_iter().enumerate() {
        if libc::dup2(fd, target as libc::c_int) < 0 {
            return (18, errno());
        }
    }
    // Whatever else the supervisor had open stays behind (best effort before 5.11).
    libc::syscall(
        libc::SYS_close_range,
        3u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    libc::syscall(
        libc::SYS_execveat,
        p.exe.as_raw_fd(),
        c"".as_ptr(),
        argv.as_ptr(),
        envp.as_ptr(),
        libc::AT_EMPTY_PATH,
    );
    (19, errno())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_in_the_range_and_stable() {
        let a = uid_for("0123456789abcdef");
        assert_eq!(a, uid_for("0123456789abcdef"));
        assert_ne!(a, uid_for("0123456789abcdee"));
        for id in ["", "x", "ffffffffffffffff"] {
            let u = uid_for(id);
            assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&u));
        }
    }

    #[test]
    fn steps_and_denied_calls_compile() {
        assert_eq!(STEPS.len(), 20);
        assert!(!baseline_filter().unwrap().is_empty());
    }
}
