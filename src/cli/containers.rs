//! `run`, `ps`, `logs`, `stop`, `kill`, `rm`, `exec` and the hidden supervisor of a
//! detached `run`: their arguments, and the thin layer that turns them into calls of the
//! container lifecycle (`crate::container::lifecycle`), which does the work for both modes.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use vessel_images::Store;

use crate::container::image::PullPolicy;
use crate::container::lifecycle::{self, ExecRequest, RunRequest};
use crate::container::process::{self, Overrides};
use crate::container::record::{Records, State};
use crate::container::{layout, logs, recovery, volumes};
use crate::isolation::{
    network, BindMount, Exit, IsolationKind, NetworkMode, Resources, VmOptions,
};

pub use super::ps::{ps, PsArgs};

/// `run`'s status when vessel itself fails (docker's convention).
pub const EXIT_VESSEL_FAILED: u8 = 125;

/// Arguments of `vessel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Isolation: a microVM with its own kernel, or namespaces on the host kernel.
    #[arg(long, value_enum, default_value = "vm")]
    pub isolation: IsolationKind,
    /// VM monitor (VM isolation): auto (the default), builtin or qemu.
    #[arg(long, value_parser = ["auto", "builtin", "qemu"])]
    pub vmm: Option<String>,
    /// Guest kernel (VM isolation).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Show the guest kernel log and backend decisions (VM isolation).
    #[arg(long)]
    pub debug: bool,
    /// CPUs: a quota in container mode, the vCPU count in VM mode.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. 256m, 1g.
    #[arg(long, short = 'm', value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Maximum number of processes (container mode).
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and pass it to the process.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the host's).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User[:group], by name or number.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Bind mount HOST:CONTAINER[:ro|rw].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
    /// Mount a tmpfs at this path.
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Network: default (alias bridge: an address of its own, outbound TCP/UDP, DNS,
    /// published ports), none (loopback only) or host (container isolation only).
    #[arg(long, value_enum, default_value = "default")]
    pub network: NetworkMode,
    /// Publish a container port: [IP:][HOSTPORT:]CTRPORT[/tcp|/udp], ranges allowed.
    #[arg(short = 'p', long = "publish", value_name = "[IP:][HP:]CP[/PROTO]")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Add a capability.
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop a capability (ALL drops every default).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// When to pull the image.
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: PullPolicy,
    /// IMAGE [COMMAND [ARG...]]: everything after the image is the command, flags included
    /// (an option before the image that vessel does not know is clap's error, see
    /// [`RunArgs::refuse_unknown_option`]).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    pub argv: Vec<String>,
}

impl RunArgs {
    /// The image reference.
    fn image(&self) -> &str {
        &self.argv[0]
    }

    /// The command that overrides the image's Cmd.
    fn command(&self) -> &[String] {
        &self.argv[1..]
    }

    /// An option vessel does not know, before the image, reaches the image's place (the
    /// command after the image must keep its own options): stopped here with clap's usual
    /// error and exit status 2, not taken for an image reference.
    pub fn refuse_unknown_option(&self) {
        if self.image().starts_with('-') {
            use clap::CommandFactory;
            let mut cli = super::Cli::command();
            cli.build();
            let mut run = cli
                .find_subcommand("run")
                .cloned()
                .unwrap_or_else(super::Cli::command);
            run.error(
                clap::error::ErrorKind::UnknownArgument,
                format!("unexpected argument '{}' found", self.image()),
            )
            .exit();
        }
    }
}

/// Arguments of `vessel logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the output until the container exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Container name or ID.
    pub container: String,
}

/// Arguments of `vessel port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// Container name or ID.
    pub container: String,
    /// Only this container port: PORT[/tcp|/udp].
    pub port: Option<String>,
}

/// Arguments of `vessel stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `vessel kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal name or number.
    #[arg(short = 's', long = "signal", default_value = "KILL")]
    pub signal: String,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `vessel rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Containers.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `vessel exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pass stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User[:group].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// CONTAINER COMMAND [ARG...]: everything after the container is the command.
    #[arg(
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CONTAINER COMMAND [ARG...]"
    )]
    pub argv: Vec<String>,
}

/// Arguments of the hidden supervisor of a detached container.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Descriptor to report the start on.
    #[arg(long)]
    pub ready_fd: i32,
    /// Container ID.
    pub id: String,
}

/// Parses 256m, 1g, 512k, 1024 (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    if n <= 0.0 {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}

/// The state root as an absolute path: it ends up in mount options and runtime specs,
/// which must not depend on the current directory.
pub(super) fn absolute(root: &Path) -> Result<PathBuf> {
    std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))
}

pub(super) fn open(root: &Path) -> Result<(Store, Records)> {
    let store =
        Store::open(root).with_context(|| format!("opening the store at {}", root.display()))?;
    let records = Records::open(&store.db_path())?;
    recovery::recover(root, &records, &store);
    Ok((store, records))
}

/// Parses `-v HOST:CTR[:ro|rw]` or `-v NAME:CTR[:ro|rw]`; a named volume is created under
/// `root` when it does not exist yet (as docker does).
fn parse_bind(root: &Path, v: &str) -> Result<BindMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, "rw"),
        [s, d, m] => (*s, *d, *m),
        _ => {
            bail!("invalid volume {v:?}: expected HOST:CONTAINER[:ro|rw] or NAME:CONTAINER[:ro|rw]")
        }
    };
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        m => bail!("invalid volume mode {m:?} in {v:?}: expected ro or rw"),
    };
    if !dst.starts_with('/') {
        bail!("invalid volume {v:?}: the container path must be absolute");
    }
    if volumes::is_volume_name(src) {
        let vol = volumes::create(root, src)?;
        return Ok(BindMount {
            source: vol.mountpoint,
            destination: PathBuf::from(dst),
            read_only,
            volume: Some(src.to_string()),
        });
    }
    if !src.starts_with('/') {
        bail!("invalid volume {v:?}: a host path must be absolute (or name a volume: [a-zA-Z0-9][a-zA-Z0-9_.-]*)");
    }
    let source = Path::new(src)
        .canonicalize()
        .with_context(|| format!("volume source {src}"))?;
    Ok(BindMount {
        source,
        destination: PathBuf::from(dst),
        read_only,
        volume: None,
    })
}

fn exit_code(exit: Exit) -> ExitCode {
    ExitCode::from(exit.code().clamp(0, 255) as u8)
}

/// `vessel run`: exit status of the process, or 125 when vessel fails.
pub fn run(root: &Path, args: RunArgs) -> ExitCode {
    match run_inner(root, args) {
        Ok(code) => code,
        Err(e) => {
            super::report(&e);
            ExitCode::from(EXIT_VESSEL_FAILED)
        }
    }
}

fn run_inner(root: &Path, args: RunArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let mut env = Vec::new();
    for f in &args.env_file {
        env.extend(process::read_env_file(f)?);
    }
    env.extend(args.env.iter().cloned());
    for t in &args.tmpfs {
        if !t.starts_with('/') {
            bail!("--tmpfs {t:?}: the path must be absolute");
        }
    }
    let req = RunRequest {
        isolation: args.isolation,
        image: args.image().to_string(),
        pull: args.pull,
        name: args.name.clone(),
        overrides: Overrides {
            entrypoint: args.entrypoint.clone(),
            command: args.command().to_vec(),
            env,
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            hostname: args.hostname.clone(),
            terminal: args.tty,
        },
        binds: args
            .volume
            .iter()
            .map(|v| parse_bind(root, v))
            .collect::<Result<Vec<_>>>()?,
        tmpfs: args.tmpfs.iter().map(PathBuf::from).collect(),
        read_only: args.read_only,
        network: args.network,
        ports: args
            .publish
            .iter()
            .map(|p| network::ports::parse(p))
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        publish_all: args.publish_all,
        resources: Resources {
            memory: args.memory,
            cpus: args.cpus,
            pids: args.pids_limit,
        },
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        vm: VmOptions {
            vmm: args.vmm.clone(),
            kernel: args.kernel.clone(),
            debug: args.debug,
        },
        interactive: args.interactive,
        rm: args.rm,
    };
    let (store, records) = open(root)?;
    let prepared = lifecycle::prepare(root, &store, &records, &req)?;
    if args.detach {
        lifecycle::start_detached(root, &store, &records, &prepared)?;
        println!("{}", prepared.record.id);
        return Ok(ExitCode::SUCCESS);
    }
    let exit = lifecycle::run_foreground(root, &store, &records, &prepared, args.interactive)?;
    Ok(exit_code(exit))
}

/// The hidden `__supervise` command: runs a detached container to its end.
pub fn supervise(root: &Path, args: SuperviseArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    // SAFETY: the descriptor was created for us by the parent `run -d` and passed by
    // number; nothing else in this process owns it.
    let ready = unsafe { File::from_raw_fd(args.ready_fd) };
    let exit = lifecycle::supervise_detached(root, &args.id, Some(ready))?;
    Ok(exit_code(exit))
}

fn is_live(records: &Records, id: &str) -> bool {
    match records.get(id) {
        Ok(Some(r)) => r.state != State::Exited && recovery::supervised(&r),
        _ => false,
    }
}

/// `vessel logs`.
pub fn logs(root: &Path, args: LogsArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (_store, records) = open(root)?;
    let r = records.find(&args.container)?;
    let path = layout::log_file(&layout::container_dir(root, &r.id));
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    logs::copy_out(&path, &mut out, &mut err, args.follow, &mut || {
        is_live(&records, &r.id)
    })
    .context("reading the log")?;
    Ok(ExitCode::SUCCESS)
}

/// A container's published ports, from its launch description; none once it is removed.
pub fn published(root: &Path, id: &str) -> Vec<network::PortMapping> {
    lifecycle::read_launch(&layout::container_dir(root, id))
        .map(|l| l.ports)
        .unwrap_or_default()
}

/// `vessel port`: docker's `80/tcp -> 0.0.0.0:8080` lines, or just the host side of one.
pub fn port(root: &Path, args: PortArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (_store, records) = open(root)?;
    let r = records.find(&args.container)?;
    let ports = published(root, &r.id);
    let mut out = std::io::stdout().lock();
    match &args.port {
        None => {
            for m in &ports {
                writeln!(out, "{} -> {}", m.container_side(), m.host_side())?;
            }
        }
        Some(p) => {
            let want = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            let found: Vec<_> = ports
                .iter()
                .filter(|m| m.container_side() == want)
                .collect();
            if found.is_empty() {
                bail!("no public port {want:?} published for {}", args.container);
            }
            for m in found {
                writeln!(out, "{}", m.host_side())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}");
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| anyhow::anyhow!("invalid signal {s:?}"))
}

fn for_each(refs: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<ExitCode> {
    let mut failed = false;
    for r in refs {
        match f(r) {
            Ok(()) => println!("{r}"),
            Err(e) => {
                super::report(&e);
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

/// `vessel stop`.
pub fn stop(root: &Path, args: StopArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        lifecycle::stop(root, &records, &store, &r, Duration::from_secs(args.time))
    })
}

/// `vessel kill`: succeeds only for signals that were delivered; a SIGKILL only once the
/// container has ended.
pub fn kill(root: &Path, args: KillArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    let sig = parse_signal(&args.signal)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        lifecycle::kill(root, &records, &store, &r, sig)
    })
}

/// `vessel rm`.
pub fn rm(root: &Path, args: RmArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        lifecycle::remove(root, &records, &store, &r, args.force)
    })
}

/// `vessel exec`: exit status of the process, or 125/126/127 as `run`.
pub fn exec(root: &Path, args: ExecArgs) -> ExitCode {
    match exec_inner(root, args) {
        Ok(code) => code,
        Err(e) => {
            super::report(&e);
            ExitCode::from(EXIT_VESSEL_FAILED)
        }
    }
}

fn exec_inner(root: &Path, args: ExecArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (_store, records) = open(root)?;
    let r = records.find(&args.argv[0])?;
    if let Some(w) = &args.workdir {
        if !w.starts_with('/') {
            bail!("working directory {w:?} is not an absolute path");
        }
    }
    let req = ExecRequest {
        command: args.argv[1..].to_vec(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        interactive: args.interactive,
    };
    Ok(exit_code(lifecycle::exec(root, &r, &req)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_flag_is_decided_for_each_mode() {
        use crate::isolation::options::{of_flag, RunOption, Support};
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            args: RunArgs,
        }
        let cmd = Run::command();
        let mut seen = Vec::new();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            let Some(options) = of_flag(id) else {
                panic!("`vessel run` flag {id} is not in isolation::options::of_flag: decide what each mode does with it");
            };
            seen.extend(options.unwrap_or_default().iter().copied());
        }
        for o in RunOption::ALL {
            assert!(seen.contains(o), "{o:?} is no flag's");
            for kind in [IsolationKind::Vm, IsolationKind::Container] {
                // Each backend answers for each option; a refusal says what to do instead.
                if let Support::No(why) = crate::isolation::backend(kind).supports(*o) {
                    assert!(why.len() > 20, "{o:?} in {kind:?}: {why}");
                }
            }
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("m").is_err());
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn binds() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let b = parse_bind(r, "/tmp:/data:ro").unwrap();
        assert!(b.read_only);
        assert_eq!(b.destination, PathBuf::from("/data"));
        assert!(!parse_bind(r, "/tmp:/data").unwrap().read_only);
        assert!(parse_bind(r, "/tmp:data").is_err());
        assert!(parse_bind(r, "/tmp:/data:rx").is_err());
        assert!(parse_bind(r, "/tmp").is_err());
        assert!(parse_bind(r, "/no/such/dir/at/all:/data").is_err());
        assert!(parse_bind(r, "./rel:/data").is_err());
        // A name is a volume, made on first use.
        let v = parse_bind(r, "cache:/data").unwrap();
        assert_eq!(v.volume.as_deref(), Some("cache"));
        assert!(v.source.is_dir() && v.source.starts_with(r));
    }
}
