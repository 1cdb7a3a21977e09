//! The built-in backend: vessel's own VMM (`vessel-vmm --config FILE`), one process per VM.

use std::path::{Path, PathBuf};
use std::process::Command;
use vessel_agent::channel::AGENT_PORT;
use vessel_agent::disk::{CONTAINER_SERIAL, IMAGE_SERIAL};

use vessel_vmm::config::{ConsoleConfig, DiskConfig, FsConfig, NetConfig, SerialOutput, VmConfig};

use super::machine_spec::MachineSpec;

/// The `vessel-vmm` binary: `$VESSEL_VMM`, else beside the running `vessel`.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VESSEL_VMM") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("locating vessel: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    for c in [dir.join("vessel-vmm"), dir.join("../vessel-vmm")] {
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(format!(
        "vessel-vmm not found beside {} (build it with `cargo build -p vessel-vmm`, or set $VESSEL_VMM)",
        exe.display()
    ))
}

/// Writes the VM's config to `config_path` and returns the `vessel-vmm` command, which
/// reads it at `config_arg` (its path in the VMM's jail).
pub fn command(
    spec: &MachineSpec,
    config_path: &Path,
    config_arg: &Path,
    seccomp: bool,
) -> Result<Command, String> {
    let config = vm_config(spec);
    let json = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(config_path, json)
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let mut c = Command::new(binary()?);
    if !seccomp {
        c.arg("--no-seccomp");
    }
    c.arg("--config").arg(config_arg);
    Ok(c)
}

/// The built-in VMM's configuration for one VM: the disks carry the serials the agent
/// looks for, as QEMU's do.
fn vm_config(spec: &MachineSpec) -> VmConfig {
    VmConfig {
        kernel: spec.kernel.clone(),
        kernel_format: Default::default(),
        initrd: Some(spec.initrd.clone()),
        cmdline: spec.cmdline.clone(),
        vcpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disks: vec![
            DiskConfig {
                path: spec.image_disk.clone(),
                read_only: true,
                id: Some(IMAGE_SERIAL.into()),
            },
            DiskConfig {
                path: spec.container_disk.clone(),
                read_only: false,
                id: Some(CONTAINER_SERIAL.into()),
            },
        ],
        console: ConsoleConfig::Socket {
            path: spec.channel.clone(),
            listen: false,
        },
        console_port: Some(AGENT_PORT.into()),
        filesystems: spec
            .shares
            .iter()
            .map(|(tag, socket)| FsConfig {
                socket: socket.clone(),
                tag: tag.clone(),
            })
            .collect(),
        net: spec.net.as_ref().map(|(socket, mac)| NetConfig {
            socket: socket.clone(),
            mac: mac.clone(),
        }),
        serial: SerialOutput::File {
            path: spec.console_log.clone(),
        },
        timeout_ms: None,
        virtio_mmio_cmdline: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_carry_the_serials_the_agent_looks_for() {
        let spec = MachineSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            cpus: 1,
            memory_mib: 256,
            image_disk: "/image.ext4".into(),
            container_disk: "/container.ext4".into(),
            channel: "/c.sock".into(),
            console_log: "/log".into(),
            shares: Vec::new(),
            net: Some(("/n.sock".into(), "02:00:00:00:00:01".into())),
        };
        let c = vm_config(&spec);
        let json = serde_json::to_string(&c).unwrap();
        let back = VmConfig::from_json(&json).unwrap();
        assert_eq!(back.disks[0].id.as_deref(), Some(IMAGE_SERIAL));
        assert!(back.disks[0].read_only);
        assert_eq!(back.disks[1].id.as_deref(), Some(CONTAINER_SERIAL));
        assert!(!back.disks[1].read_only);
        assert_eq!(back.net.unwrap().mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
    }
}
