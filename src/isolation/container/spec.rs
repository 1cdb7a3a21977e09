//! The OCI runtime spec (config.json) that libcontainer runs: runc's and docker's defaults
//! plus what the `run` flags ask for.

use serde_json::{json, Value};

use super::cgroup;
use super::seccomp;
use crate::isolation::{IsolationError, LaunchSpec, NetworkMode};

/// docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability name the kernel knows (for `--cap-add ALL` and name checks).
pub const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// runc's default masked paths.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Normalises a capability name ("cap_net_admin" → "NET_ADMIN") and checks it exists.
pub fn normalize_cap(name: &str) -> Result<String, IsolationError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper).to_string();
    if bare == "ALL" || ALL_CAPS.contains(&bare.as_str()) {
        Ok(bare)
    } else {
        Err(IsolationError::runtime(
            "capabilities",
            format!("unknown capability {name:?}"),
        ))
    }
}

/// The capability set after `--cap-add`/`--cap-drop`, docker's order of application
/// (drop, then add).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, IsolationError> {
    let add: Vec<String> = add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_, _>>()?;
    let drop: Vec<String> = drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<_, _>>()?;
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|c| c == "ALL") {
        caps = ALL_CAPS.iter().map(|c| c.to_string()).collect();
    } else {
        for c in add {
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    Ok(caps)
}

/// Builds the runtime spec for a container whose merged root filesystem is at `rootfs`.
pub fn build(spec: &LaunchSpec, rootfs: &std::path::Path) -> Result<Value, IsolationError> {
    let caps: Vec<String> = capabilities(&spec.cap_add, &spec.cap_drop)?
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let p = &spec.process;

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for t in &spec.tmpfs {
        mounts.push(json!({"destination": t, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"]}));
    }
    for b in &spec.binds {
        let mut options = vec!["rbind", "rprivate"];
        if b.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind",
                           "source": b.source, "options": options}));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if spec.network == NetworkMode::None {
        namespaces.push(json!({"type": "network"}));
    }

    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}]
    });
    if let Some(limit) = spec.resources.memory {
        let mut memory = json!({"limit": limit});
        // Without swap accounting the limit alone applies; with it, forbid swapping
        // past the limit so the OOM killer acts as docker's does.
        if cgroup::has_swap_accounting() {
            memory["swap"] = json!(limit);
        }
        resources["memory"] = memory;
    }
    if let Some(cpus) = spec.resources.cpus {
        let period: u64 = 100_000;
        resources["cpu"] =
            json!({"quota": (cpus * period as f64).round() as i64, "period": period});
    }
    if let Some(pids) = spec.resources.pids {
        resources["pids"] = json!({"limit": pids});
    }

    let value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": p.terminal,
            "user": {"uid": p.uid, "gid": p.gid, "additionalGids": p.additional_gids},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": spec.read_only},
        "hostname": p.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroup::path(&spec.id),
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp::default_profile(&caps),
        },
    });
    // Round-trip through oci-spec's types so a malformed spec fails here, not in the runtime.
    serde_json::from_value::<oci_spec::runtime::Spec>(value.clone())
        .map_err(|e| IsolationError::runtime("building the runtime spec", e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::container::process::ProcessSpec;
    use crate::isolation::{BindMount, Resources, VmOptions};

    fn launch(network: NetworkMode) -> LaunchSpec {
        LaunchSpec {
            id: "abc".into(),
            dir: "/state/containers/abc".into(),
            image_id: "sha256:x".into(),
            image_rootfs: "/state/rootfs/x".into(),
            process: ProcessSpec {
                args: vec!["true".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 1000,
                gid: 1000,
                additional_gids: vec![50],
                hostname: "h".into(),
                terminal: false,
            },
            binds: vec![BindMount {
                source: "/host".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            tmpfs: vec!["/scratch".into()],
            read_only: true,
            network,
            resources: Resources {
                memory: Some(64 << 20),
                cpus: Some(0.5),
                pids: Some(10),
            },
            cap_add: vec![],
            cap_drop: vec![],
            vm: VmOptions::default(),
        }
    }

    #[test]
    fn spec_carries_the_launch() {
        let v = build(&launch(NetworkMode::None), std::path::Path::new("/r")).unwrap();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 10);
        assert_eq!(v["linux"]["cgroupsPath"], "/vessel/abc");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"pid"));
        let mounts = v["mounts"].as_array().unwrap();
        let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
        assert!(data["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/scratch" && m["type"] == "tmpfs"));
        let host = build(&launch(NetworkMode::Host), std::path::Path::new("/r")).unwrap();
        assert!(!host["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn seccomp_admin_calls_follow_cap_sys_admin() {
        let allowed = |caps: &[String]| -> Vec<String> {
            seccomp::default_profile(caps)["syscalls"][0]["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        let has = |v: &[String], n: &str| v.iter().any(|x| x == n);
        let plain = allowed(&["CAP_CHOWN".into()]);
        assert!(has(&plain, "read") && has(&plain, "execve") && has(&plain, "arch_prctl"));
        assert!(!has(&plain, "mount") && !has(&plain, "kexec_load") && !has(&plain, "clone"));
        let admin = allowed(&["CAP_SYS_ADMIN".into()]);
        assert!(has(&admin, "mount") && has(&admin, "clone") && !has(&admin, "kexec_load"));
        let profile = seccomp::default_profile(&["CAP_CHOWN".into()]);
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = profile["syscalls"].as_array().unwrap();
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == libc::ENOSYS));
        assert!(rules
            .iter()
            .any(|r| r["names"][0] == "clone" && r["args"].is_array()));
        // Every rule must parse as OCI seccomp.
        serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(profile).unwrap();
    }

    #[test]
    fn cap_add_and_drop() {
        let c = capabilities(&["net_admin".into()], &["CAP_CHOWN".into()]).unwrap();
        assert!(c.contains(&"NET_ADMIN".to_string()));
        assert!(!c.contains(&"CHOWN".to_string()));
        assert!(capabilities(&[], &["ALL".into()]).unwrap().is_empty());
        assert!(capabilities(&["BOGUS".into()], &[]).is_err());
    }
}
