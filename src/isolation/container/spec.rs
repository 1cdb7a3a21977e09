//! The OCI runtime spec (config.json) that libcontainer runs: runc's and docker's defaults
//! plus what the `run` flags ask for.

use serde_json::{json, Value};

use crate::isolation::cgroup;
use crate::isolation::confinement::{capabilities, MASKED_PATHS, READONLY_PATHS};
use crate::isolation::seccomp;
use crate::isolation::{IsolationError, LaunchSpec, NetworkMode};

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
    // Before -v: a volume at /etc/hosts wins, as in docker.
    for (name, _) in crate::isolation::network::etc_files(&p.hostname, spec.network) {
        mounts.push(
            json!({"destination": format!("/etc/{name}"), "type": "bind",
                           "source": spec.dir.join("etc").join(name),
                           "options": ["rbind", "rprivate"]}),
        );
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
    if spec.network != NetworkMode::Host {
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

    use crate::isolation::ProcessSpec;
    use crate::isolation::{BindMount, Resources, VmOptions};

    fn launch(network: NetworkMode) -> LaunchSpec {
        LaunchSpec {
            id: "abc".into(),
            isolation: crate::isolation::IsolationKind::Container,
            state_root: "/state".into(),
            dir: "/state/containers/abc".into(),
            image_id: "sha256:x".into(),
            image_rootfs: "/state/rootfs/x".into(),
            image_disk: None,
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
                volume: None,
            }],
            tmpfs: vec!["/scratch".into()],
            read_only: true,
            network,
            ports: Vec::new(),
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
}
