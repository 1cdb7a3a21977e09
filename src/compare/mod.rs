//! `vessel compare`: the same image and command in container and VM isolation, measured
//! side by side. Every row is measured on this host in this run, never asserted.

pub mod measure;
pub mod probe;
pub mod report;

use std::path::PathBuf;

use measure::{HostMarker, ModeRunner};
use report::{HostFacts, Report};

/// What to compare.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `vessel` executable to run (normally this one).
    pub exe: PathBuf,
    /// State root.
    pub root: PathBuf,
    /// Image reference or ID.
    pub image: String,
    /// Command (empty: the image's default).
    pub command: Vec<String>,
    /// Runs per mode for latency.
    pub runs: u32,
    /// `run` flags only VM isolation takes (`--vmm`, `--kernel`).
    pub vm_flags: Vec<String>,
    /// Column heading of the VM mode.
    pub vm_label: String,
}

/// The host's own facts, read the way the probe reads them inside.
pub fn host_facts() -> HostFacts {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    HostFacts {
        kernel: read("/proc/sys/kernel/osrelease"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        hostname: read("/proc/sys/kernel/hostname"),
    }
}

/// Runs both modes and builds the report.
pub fn compare(opts: &Options) -> std::io::Result<Report> {
    let marker = HostMarker::create()?;
    let container = ModeRunner {
        exe: opts.exe.clone(),
        root: opts.root.clone(),
        run_flags: vec!["--isolation".into(), "container".into()],
        label: "container".into(),
    };
    let mut vm_flags = vec!["--isolation".to_string(), "vm".to_string()];
    vm_flags.extend(opts.vm_flags.iter().cloned());
    let vm = ModeRunner {
        exe: opts.exe.clone(),
        root: opts.root.clone(),
        run_flags: vm_flags,
        label: opts.vm_label.clone(),
    };
    let c = container.measure(&opts.image, &opts.command, opts.runs, &marker);
    let v = vm.measure(&opts.image, &opts.command, opts.runs, &marker);
    Ok(report::build(
        &opts.image,
        &opts.command,
        opts.runs,
        host_facts(),
        [&c, &v],
    ))
}
