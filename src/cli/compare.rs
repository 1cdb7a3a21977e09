//! `vessel compare`: container versus VM isolation for one image, side by side.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use vessel_images::Store;

use crate::compare::{self, report::command_differs, Options};

/// Output format of `vessel compare`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal.
    Table,
    /// JSON with the same rows, for scripts.
    Json,
    /// A markdown table, as docs/isolation.md shows.
    Markdown,
}

/// Arguments of `vessel compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Runs per mode for the latency rows.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// VM monitor for the VM column: auto, builtin or qemu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "builtin", "qemu"])]
    pub vmm: String,
    /// Guest kernel for the VM column.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Image to run in both modes.
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs `vessel compare`.
pub fn compare(root: &Path, args: CompareArgs) -> Result<ExitCode> {
    // Fail early and clearly on an image that is not there, rather than twice per mode.
    let store = Store::open(root).context("opening the image store")?;
    if let Err(e) = store.image(&args.image) {
        bail!("{}: {e} (pull or load it first)", args.image);
    }
    let mut vm_flags = vec!["--vmm".to_string(), args.vmm.clone()];
    if let Some(k) = &args.kernel {
        vm_flags.push("--kernel".into());
        vm_flags.push(k.display().to_string());
    }
    let opts = Options {
        exe: std::env::current_exe().context("locating the vessel executable")?,
        root: root.to_path_buf(),
        image: args.image.clone(),
        command: args.command.clone(),
        runs: args.runs,
        vm_flags,
        vm_label: format!("vm ({})", args.vmm),
    };
    let report = compare::compare(&opts).context("comparing isolation modes")?;
    match args.format {
        Format::Table => print!("{}", report.to_table()),
        Format::Json => println!("{}", report.to_json()),
        Format::Markdown => print!("{}", report.to_markdown()),
    }
    if command_differs(&report) {
        eprintln!("vessel compare: the command's result differs between the modes (flagged above)");
    }
    Ok(ExitCode::SUCCESS)
}
