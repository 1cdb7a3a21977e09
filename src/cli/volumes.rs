//! `vessel volume create|ls|inspect|rm`: named volumes, which both isolation modes mount
//! with `-v NAME:/path` and which outlive the containers that use them.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::container::{names, volumes};

/// `vessel volume`.
#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume (a random name when none is given); an existing one is kept.
    Create {
        /// Its name.
        name: Option<String>,
    },
    /// List volumes.
    Ls {
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show volumes as JSON: name, mountpoint, creation time, the containers using them.
    Inspect {
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes and what they hold (refused for one a container uses, unless -f).
    Rm {
        /// Remove even a volume containers use.
        #[arg(short = 'f', long)]
        force: bool,
        /// Volume names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs `vessel volume ...`.
pub fn volume(root: &Path, args: VolumeArgs) -> Result<ExitCode> {
    let root = &super::containers::absolute(root)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        VolumeCommand::Create { name } => {
            let name = match name {
                Some(n) => n,
                None => names::new_id()?,
            };
            writeln!(out, "{}", volumes::create(root, &name)?.name)?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Ls { quiet } => {
            let list = volumes::list(root)?;
            if !quiet {
                writeln!(out, "{:<40}   MOUNTPOINT", "VOLUME NAME")?;
            }
            for v in list {
                if quiet {
                    writeln!(out, "{}", v.name)?;
                } else {
                    writeln!(out, "{:<40}   {}", v.name, v.mountpoint.display())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { names } => {
            let mut all = Vec::new();
            for n in &names {
                let v = volumes::get(root, n)?;
                all.push(serde_json::json!({
                    "Name": v.name,
                    "Mountpoint": v.mountpoint,
                    "CreatedAt": v.created,
                    "UsedBy": volumes::users(root, n),
                }));
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { force, names } => {
            let mut failed = false;
            for n in &names {
                match volumes::remove(root, n, force) {
                    Ok(()) => writeln!(out, "{n}")?,
                    Err(e) => {
                        super::report(&anyhow::Error::new(e));
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(super::EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
