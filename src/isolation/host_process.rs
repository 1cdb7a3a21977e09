//! What each host process of a container may do, read from `/proc` the way an
//! administrator would check it: uid, capabilities, seccomp mode, no_new_privs, which
//! namespaces it shares with vessel, and what its root directory holds. `vessel inspect`
//! and `vessel compare` report it; the tests compare it with `/proc` themselves.

use std::collections::BTreeMap;

use serde::Serialize;

/// The namespaces compared with the host's.
pub const NAMESPACES: [&str; 6] = ["mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// One host process of a container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostProcess {
    /// Its pid in vessel's PID namespace.
    pub pid: i32,
    /// Its command line, arguments joined by spaces.
    pub command: String,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective capabilities, as `/proc/PID/status` shows them (hex).
    pub cap_eff: String,
    /// Bounding set (hex).
    pub cap_bnd: String,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// Each namespace of [`NAMESPACES`]: `own` or `host`.
    pub namespaces: BTreeMap<String, String>,
    /// The entries of its root directory (sorted): a jail shows only its own.
    pub root: Vec<String>,
}

impl HostProcess {
    /// Whether it runs with no capability at all.
    pub fn capless(&self) -> bool {
        u64::from_str_radix(&self.cap_eff, 16) == Ok(0)
    }

    /// The namespaces it shares with vessel.
    pub fn shared_namespaces(&self) -> Vec<&str> {
        self.namespaces
            .iter()
            .filter(|(_, v)| *v == "host")
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Reads one process; `None` if it is gone (or was never there).
pub fn describe(pid: i32) -> Option<HostProcess> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let first =
        |key: &str| -> Option<u32> { field(&status, key)?.split_whitespace().next()?.parse().ok() };
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let namespaces = NAMESPACES
        .iter()
        .map(|ns| {
            let of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).ok();
            let same = of(&pid.to_string()).is_some_and(|mine| of("self") == Some(mine));
            (
                ns.to_string(),
                if same { "host" } else { "own" }.to_string(),
            )
        })
        .collect();
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    root.sort();
    Some(HostProcess {
        pid,
        command,
        uid: first("Uid")?,
        gid: first("Gid")?,
        cap_eff: field(&status, "CapEff")?.to_string(),
        cap_bnd: field(&status, "CapBnd")?.to_string(),
        seccomp: field(&status, "Seccomp")?.parse().ok()?,
        no_new_privs: field(&status, "NoNewPrivs")? == "1",
        namespaces,
        root,
    })
}

/// Every process in the container's cgroup: in VM mode the VMM and its helpers, in
/// container mode the workload's own processes.
///
/// Kernel threads are left out: KVM puts a worker of each VM (`kvm-nx-lpage-recovery`) in
/// the cgroup of the process that created the VM, so its CPU time is charged there, but it
/// runs kernel code only and has no seccomp mode, namespaces or root of a process.
pub fn of_container(id: &str) -> Vec<HostProcess> {
    super::cgroup::procs(id)
        .into_iter()
        .filter(|pid| !is_kernel_thread(*pid))
        .filter_map(describe)
        .collect()
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat`.
fn is_kernel_thread(pid: i32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The fields after the command, which may itself hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_unconfined_in_the_host_namespaces() {
        let me = describe(std::process::id() as i32).unwrap();
        assert_eq!(me.seccomp, 0);
        assert!(me.shared_namespaces().len() == NAMESPACES.len());
        assert!(me.root.iter().any(|e| e == "proc"));
        assert!(describe(-1).is_none());
        assert!(!is_kernel_thread(std::process::id() as i32));
        // kthreadd, the parent of every kernel thread, is pid 2 of the initial namespace.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(is_kernel_thread(2));
        }
    }
}
