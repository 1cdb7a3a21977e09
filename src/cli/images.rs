//! `pull`, `images`, `inspect`, `tag`, `rmi`, `load`, `save`, `system`: the image store's commands.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

/// Arguments of `vessel pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. alpine, library/alpine:3.20, 127.0.0.1:5000/x:1.
    pub reference: String,
}

/// Arguments of `vessel images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {}

/// Arguments of `vessel inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference or ID.
    pub image: String,
}

/// Arguments of `vessel tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// Existing image.
    pub source: String,
    /// New reference.
    pub target: String,
}

/// Arguments of `vessel rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `vessel load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Archive to read.
    #[arg(short = 'i', long = "input")]
    pub input: std::path::PathBuf,
}

/// Arguments of `vessel save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Archive to write.
    #[arg(short = 'o', long = "output")]
    pub output: std::path::PathBuf,
    /// Images to save.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `vessel system`.
#[derive(Debug, Args)]
pub struct SystemArgs {}

macro_rules! pending {
    ($($name:ident: $args:ty),*) => {$(
        /// Runs the subcommand of the same name.
        pub fn $name(_root: &Path, _args: $args) -> Result<ExitCode> {
            bail!(concat!("`vessel ", stringify!($name), "` is not built yet"))
        }
    )*};
}
pending!(pull: PullArgs, images: ImagesArgs, inspect: InspectArgs, tag: TagArgs, rmi: RmiArgs, load: LoadArgs, save: SaveArgs, system: SystemArgs);
