//! The default seccomp profile: system calls a container has no business making fail with
//! EPERM. A deny-list in the spirit of docker's profile (which is an allow-list of ~350
//! calls): the calls docker withholds by default, gated on the same capabilities.

use serde_json::{json, Value};

/// Refused whatever the capabilities.
const ALWAYS_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Refused unless CAP_SYS_ADMIN was added.
const SYS_ADMIN_DENIED: &[&str] = &[
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "pivot_root",
    "setns",
    "umount",
    "umount2",
    "unshare",
    "name_to_handle_at",
];

/// The profile as an OCI `linux.seccomp` object; `caps` are the process's capabilities
/// (`CAP_`-prefixed).
pub fn default_profile(caps: &[String]) -> Value {
    let mut names: Vec<&str> = ALWAYS_DENIED.to_vec();
    if !caps.iter().any(|c| c == "CAP_SYS_ADMIN") {
        names.extend_from_slice(SYS_ADMIN_DENIED);
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM},
        ],
    })
}
