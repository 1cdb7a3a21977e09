//! Command-line front end: argument parsing, state-root selection, error reporting.
//!
//! Each group of subcommands lives in its own file; this file only dispatches.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod compare;
mod containers;
mod images;
mod inspect;
mod kernel;
mod ps;
mod volumes;

/// Exit status of a failed command other than `run` (which uses docker's 125/126/127 itself).
pub const EXIT_FAILED: u8 = 1;

/// vessel runs OCI container images in KVM microVMs (or, when asked, in namespaces on the host kernel).
#[derive(Debug, Parser)]
#[command(name = "vessel", version, about, propagate_version = true)]
pub struct Cli {
    /// State root (image store, containers, metadata). Default: /var/lib/vessel as root, else $XDG_DATA_HOME/vessel.
    #[arg(long, global = true, env = "VESSEL_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand vessel has.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Show containers or images as JSON (a container with what its host processes may do).
    Inspect(inspect::InspectArgs),
    /// Create a new reference to an existing image.
    Tag(images::TagArgs),
    /// Remove image references (and garbage-collect what no image uses).
    Rmi(images::RmiArgs),
    /// Load images from a docker-archive or OCI image-layout tarball.
    Load(images::LoadArgs),
    /// Save images to a docker-archive tarball.
    Save(images::SaveArgs),
    /// Store-wide maintenance: disk usage and consistency checks.
    System(images::SystemArgs),
    /// Run a command in a new container.
    Run(Box<containers::RunArgs>),
    /// List containers.
    Ps(containers::PsArgs),
    /// Show a container's output.
    Logs(containers::LogsArgs),
    /// List a container's published ports.
    Port(containers::PortArgs),
    /// Stop containers (SIGTERM, then SIGKILL after a grace period).
    Stop(containers::StopArgs),
    /// Send a signal to containers.
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Supervise a detached container (internal).
    #[command(name = "__supervise", hide = true)]
    Supervise(containers::SuperviseArgs),
    /// Manage named volumes (`-v NAME:/path`).
    Volume(volumes::VolumeArgs),
    /// Show the guest kernel, modules and VMM that VM isolation uses; install a guest kernel.
    Kernel(kernel::KernelArgs),
    /// Run an image in container and VM isolation and compare them side by side.
    Compare(compare::CompareArgs),
}

impl Cli {
    /// The state root: `--root`, then `$VESSEL_ROOT`, then the per-user default.
    pub fn state_root(&self) -> PathBuf {
        if let Some(root) = &self.root {
            return root.clone();
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/vessel");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        data.join("vessel")
    }
}

/// Parses the command line, runs the command, and turns failures into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.state_root();
    let result = match cli.command {
        Command::Pull(a) => images::pull(&root, a),
        Command::Images(a) => images::images(&root, a),
        Command::Inspect(a) => inspect::inspect(&root, a),
        Command::Tag(a) => images::tag(&root, a),
        Command::Rmi(a) => images::rmi(&root, a),
        Command::Load(a) => images::load(&root, a),
        Command::Save(a) => images::save(&root, a),
        Command::System(a) => images::system(&root, a),
        Command::Run(a) => {
            a.refuse_unknown_option();
            return containers::run(&root, *a);
        }
        Command::Exec(a) => return containers::exec(&root, a),
        Command::Ps(a) => containers::ps(&root, a),
        Command::Logs(a) => containers::logs(&root, a),
        Command::Port(a) => containers::port(&root, a),
        Command::Stop(a) => containers::stop(&root, a),
        Command::Kill(a) => containers::kill(&root, a),
        Command::Rm(a) => containers::rm(&root, a),
        Command::Supervise(a) => containers::supervise(&root, a),
        Command::Compare(a) => compare::compare(&root, a),
        Command::Kernel(a) => kernel::kernel(&root, a),
        Command::Volume(a) => volumes::volume(&root, a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Prints a failure as one line on stderr: `vessel: context: cause: cause`.
pub fn report(err: &anyhow::Error) {
    eprintln!("vessel: {}", error_line(err));
}

/// The error and its causes joined with `: `, leaving out a cause whose text the line
/// already carries (library errors often show their source in their own message too).
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_keeps_each_cause_once() {
        let plain = anyhow::anyhow!("disk full")
            .context("write blob")
            .context("loading a.tar");
        assert_eq!(error_line(&plain), "loading a.tar: write blob: disk full");
        // The store's I/O error shows its OS error and also reports it as its source.
        let store = vessel_images::StoreError::Io {
            op: "write blob",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let line = error_line(&anyhow::Error::new(store).context("loading a.tar"));
        assert_eq!(line.matches("os error 28").count(), 1, "{line}");
        assert!(line.starts_with("loading a.tar: write blob /x: "), "{line}");
    }
}
