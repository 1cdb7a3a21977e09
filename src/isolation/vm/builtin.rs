//! The built-in backend: vessel's own VMM (`vessel-vmm --config FILE`), one process per VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use vessel_vmm::config::{ConsoleConfig, DiskConfig, SerialOutput, VmConfig};

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

/// Writes the VM's config next to its other files and returns the `vessel-vmm` command.
pub fn command(spec: &MachineSpec, config_path: &Path) -> Result<Command, String> {
    let config = VmConfig {
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
            },
            DiskConfig {
                path: spec.container_disk.clone(),
                read_only: false,
            },
        ],
        console: ConsoleConfig::Socket {
            path: spec.channel.clone(),
            listen: false,
        },
        serial: SerialOutput::File {
            path: spec.console_log.clone(),
        },
        timeout_ms: None,
        virtio_mmio_cmdline: false,
    };
    let json = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(config_path, json)
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let mut c = Command::new(binary()?);
    c.arg("--config").arg(config_path);
    Ok(c)
}
