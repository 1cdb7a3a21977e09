//! The default seccomp profile: docker's (moby's `profiles/seccomp/default.json`,
//! Apache-2.0), evaluated for x86-64 and the container's capabilities the way docker does.
//! Everything not allowed fails with EPERM; `clone3` fails with ENOSYS so C libraries fall
//! back to `clone`, whose namespace flags are refused without CAP_SYS_ADMIN.

use serde_json::{json, Value};

/// Allowed whatever the capabilities (moby's unconditional list, all architectures; names
/// the kernel or libseccomp does not know are skipped by the runtime).
const ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed only with a capability: (capability, system calls).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
    ("CAP_SYSLOG", &["syslog"]),
];

/// The namespace flags of clone(2) (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
/// CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME's old slot),
/// as moby masks them.
const CLONE_NAMESPACE_FLAGS: u64 = 2_114_060_288;

/// Whether the running kernel is at least `major.minor` (moby's `minKernel`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// The profile as an OCI `linux.seccomp` object for a process with `caps`
/// (`CAP_`-prefixed).
pub fn default_profile(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    // x86-64 only.
    allowed.extend(["arch_prctl", "modify_ldt"]);
    if kernel_at_least(4, 8) {
        // From 4.8 on, seccomp runs after ptrace, so ptrace cannot bypass it.
        allowed.extend(["process_vm_readv", "process_vm_writev", "ptrace"]);
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            allowed.extend_from_slice(names);
        }
    }
    allowed.sort_unstable();
    allowed.dedup();

    let mut rules = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    // personality(2): only the values glibc and setarch use (PER_LINUX, PER_LINUX32,
    // UNAME26 variants, and the query 0xffffffff).
    for value in [0u64, 8, 131_072, 131_080, 4_294_967_295] {
        rules.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
        }));
    }
    if !has("CAP_SYS_ADMIN") {
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            // (flags & CLONE_NAMESPACE_FLAGS) == 0. libcontainer 0.7 hands `valueTwo` to
            // libseccomp as the mask and `value` as the expected value, the reverse of
            // runc's reading of the OCI fields; this is written for libcontainer (and a
            // test forks and is refused a namespace to prove it).
            "args": [{"index": 0, "value": 0, "valueTwo": CLONE_NAMESPACE_FLAGS,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        rules.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        // docker also lists SCMP_ARCH_X32; each architecture is another copy of the filter
        // for libseccomp to compile at every start (with all three, the runtime's start
        // took 25-47 ms here, with these two 13-30 ms), and x32 is an ABI Debian's kernels
        // leave disabled. An x32 call matches no rule and gets EPERM.
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": rules,
    })
}

/// Compiles an OCI `linux.seccomp` profile (as [`default_profile`] writes it) into the
/// classic-BPF program the kernel loads, with libseccomp (the library libcontainer uses for
/// container mode, so both modes enforce the same filter): the guest agent installs these
/// bytes (`struct sock_filter` entries) for VM mode's processes. Names libseccomp does not
/// know are skipped, as runtimes do.
pub fn compile_bpf(profile: &Value) -> Result<Vec<u8>, String> {
    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;

    let action = |name: &str, errno: Option<&Value>| -> Result<ScmpAction, String> {
        let errno = errno.and_then(Value::as_i64).unwrap_or(libc::EPERM as i64) as i32;
        match name {
            "SCMP_ACT_ALLOW" => Ok(ScmpAction::Allow),
            "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(errno)),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Ok(ScmpAction::KillThread),
            "SCMP_ACT_KILL_PROCESS" => Ok(ScmpAction::KillProcess),
            other => Err(format!("seccomp action {other} is not supported")),
        }
    };
    let str_of = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let default = action(
        &str_of(profile, "defaultAction"),
        profile.get("defaultErrnoRet"),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| e.to_string())?;
    // The agent sets no_new_privs itself, before it loads the program.
    ctx.set_ctl_nnp(false).map_err(|e| e.to_string())?;
    for arch in profile["architectures"].as_array().into_iter().flatten() {
        let arch = match arch.as_str() {
            Some("SCMP_ARCH_X86_64") => ScmpArch::X8664,
            Some("SCMP_ARCH_X86") => ScmpArch::X86,
            Some("SCMP_ARCH_X32") => ScmpArch::X32,
            other => return Err(format!("seccomp architecture {other:?} is not supported")),
        };
        if !ctx.is_arch_present(arch).map_err(|e| e.to_string())? {
            ctx.add_arch(arch).map_err(|e| e.to_string())?;
        }
    }
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        let act = action(&str_of(rule, "action"), rule.get("errnoRet"))?;
        let mut conds = Vec::new();
        for a in rule["args"].as_array().into_iter().flatten() {
            let index = a["index"].as_u64().unwrap_or(0) as u32;
            let value = a["value"].as_u64().unwrap_or(0);
            let op = match a["op"].as_str() {
                Some("SCMP_CMP_EQ") => ScmpCompareOp::Equal,
                Some("SCMP_CMP_NE") => ScmpCompareOp::NotEqual,
                Some("SCMP_CMP_LT") => ScmpCompareOp::Less,
                Some("SCMP_CMP_LE") => ScmpCompareOp::LessOrEqual,
                Some("SCMP_CMP_GT") => ScmpCompareOp::Greater,
                Some("SCMP_CMP_GE") => ScmpCompareOp::GreaterEqual,
                // Read as libcontainer reads it (see the clone rule above): valueTwo is
                // the mask, value what the masked argument must equal.
                Some("SCMP_CMP_MASKED_EQ") => {
                    ScmpCompareOp::MaskedEqual(a["valueTwo"].as_u64().unwrap_or(0))
                }
                other => return Err(format!("seccomp operator {other:?} is not supported")),
            };
            conds.push(ScmpArgCompare::new(index, op, value));
        }
        for name in rule["names"].as_array().into_iter().flatten() {
            let Some(name) = name.as_str() else { continue };
            let Ok(nr) = libseccomp::ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if conds.is_empty() {
                ctx.add_rule(act, nr)
            } else {
                ctx.add_rule_conditional(act, nr, &conds)
            };
            // libseccomp refuses a rule whose action is the default's: nothing to add.
            if let Err(e) = added {
                if act != default {
                    return Err(format!("seccomp rule for {name}: {e}"));
                }
            }
        }
    }
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"vessel-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    ctx.export_bpf(&file).map_err(|e| e.to_string())?;
    let mut bpf = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(|e| e.to_string())?;
    if bpf.is_empty() || !bpf.len().is_multiple_of(8) {
        return Err(format!("libseccomp exported {} bytes of BPF", bpf.len()));
    }
    Ok(bpf)
}

#[cfg(test)]
mod bpf_tests {
    use super::*;

    /// Loads `bpf` in a child and reports what a few calls return there.
    fn in_filtered_child(bpf: &[u8]) -> i32 {
        let prog = libc::sock_fprog {
            len: (bpf.len() / 8) as u16,
            filter: bpf.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the child only makes raw system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above; `prog` points at `bpf`, alive in this copy of the memory.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const _) != 0
                {
                    libc::_exit(99);
                }
                let mut code = 0;
                // Allowed: getppid. Refused with EPERM: unshare (needs CAP_SYS_ADMIN),
                // mount. ENOSYS: clone3.
                if libc::getppid() <= 0 {
                    code |= 1;
                }
                if libc::unshare(libc::CLONE_NEWUTS) != -1
                    || *libc::__errno_location() != libc::EPERM
                {
                    code |= 2;
                }
                if libc::syscall(libc::SYS_clone3, 0usize, 0usize) != -1
                    || *libc::__errno_location() != libc::ENOSYS
                {
                    code |= 4;
                }
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_default_profile_compiles_and_is_enforced() {
        let caps: Vec<String> = crate::isolation::confinement::DEFAULT_CAPS
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
        let bpf = compile_bpf(&default_profile(&caps)).unwrap();
        assert_eq!(bpf.len() % 8, 0);
        assert!(bpf.len() / 8 > 100, "{} instructions", bpf.len() / 8);
        assert_eq!(in_filtered_child(&bpf), 0);
        // With CAP_SYS_ADMIN, unshare is allowed by the filter (EPERM would come from
        // the kernel only without the capability, and tests run as root).
        let mut admin = caps.clone();
        admin.push("CAP_SYS_ADMIN".into());
        let bpf = compile_bpf(&default_profile(&admin)).unwrap();
        let got = in_filtered_child(&bpf);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(got & 2, 2, "unshare was still refused: {got}");
        }
        assert!(compile_bpf(&serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"})).is_err());
    }
}
