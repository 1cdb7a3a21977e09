//! `run`, `ps`, `logs`, `stop`, `kill`, `rm`, `exec`: the container lifecycle commands, for
//! both isolation modes, plus the hidden supervisor a detached `run` starts.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use vessel_images::Store;

use crate::container::image::{self, PullPolicy};
use crate::container::process::{self, ImageDefaults, Overrides, ProcessSpec};
use crate::container::record::{Record, Records, State};
use crate::container::supervise::{self, Attach};
use crate::container::{layout, liveness, logs, names, now, recovery, user};
use crate::isolation::{
    self, BindMount, IsolationKind, LaunchSpec, NetworkMode, Resources, Target, VmOptions,
};

/// `run`'s status when vessel itself fails (docker's convention).
pub const EXIT_VESSEL_FAILED: u8 = 125;

/// Arguments of `vessel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Isolation: a microVM with its own kernel, or namespaces on the host kernel.
    #[arg(long, value_enum, default_value = "vm")]
    pub isolation: IsolationKind,
    /// VM monitor (VM isolation): auto, builtin or qemu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "builtin", "qemu"])]
    pub vmm: String,
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
    /// Network: none (loopback only) or host.
    #[arg(long, value_enum, default_value = "none")]
    pub network: NetworkMode,
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
    /// IMAGE [COMMAND [ARG...]]: everything after the image is the command, flags included.
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
}

/// Arguments of `vessel ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: table or json (one object per line).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
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
fn absolute(root: &Path) -> Result<PathBuf> {
    std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))
}

fn open(root: &Path) -> Result<(Store, Records)> {
    let store =
        Store::open(root).with_context(|| format!("opening the store at {}", root.display()))?;
    let records = Records::open(&store.db_path())?;
    recovery::recover(root, &records, &store);
    Ok((store, records))
}

fn parse_bind(v: &str) -> Result<BindMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, "rw"),
        [s, d, m] => (*s, *d, *m),
        _ => bail!("invalid volume {v:?}: expected HOST:CONTAINER[:ro|rw]"),
    };
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        m => bail!("invalid volume mode {m:?} in {v:?}: expected ro or rw"),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        bail!("invalid volume {v:?}: both paths must be absolute");
    }
    let source = Path::new(src)
        .canonicalize()
        .with_context(|| format!("volume source {src}"))?;
    Ok(BindMount {
        source,
        destination: PathBuf::from(dst),
        read_only,
    })
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

fn self_start() -> (i32, u64) {
    let me = std::process::id() as i32;
    (me, liveness::start_time(me).unwrap_or(0))
}

/// Rejects cgroup limits the kernel would refuse or that make no sense, with docker's
/// bounds. (VM isolation reads --memory and --cpus as the VM's size and checks them itself.)
fn check_limits(args: &RunArgs) -> Result<()> {
    if args.isolation != IsolationKind::Container {
        return Ok(());
    }
    if let Some(m) = args.memory {
        if m < 6 << 20 {
            bail!("--memory {m}: the minimum memory limit is 6m");
        }
    }
    if let Some(c) = args.cpus {
        let host = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        if !(0.01..=host).contains(&c) {
            bail!("--cpus {c}: the range of CPUs is from 0.01 to {host}");
        }
    }
    if let Some(p) = args.pids_limit {
        if p < 1 {
            bail!("--pids-limit {p}: must be at least 1");
        }
    }
    Ok(())
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
    check_limits(&args)?;
    let (store, records) = open(root)?;
    let img = image::resolve(&store, args.image(), args.pull)?;
    let id = names::new_id().context("generating a container ID")?;
    let name = match &args.name {
        Some(n) if !names::valid_name(n) => {
            bail!("invalid container name {n:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        }
        Some(n) => n.clone(),
        None => names::generated_name(&id),
    };
    let mut env = Vec::new();
    for f in &args.env_file {
        env.extend(process::read_env_file(f)?);
    }
    env.extend(args.env.iter().cloned());
    let overrides = Overrides {
        entrypoint: args.entrypoint.clone(),
        command: args.command().to_vec(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        terminal: args.tty,
    };
    let proc_spec = process::resolve(
        &ImageDefaults::from_oci(&img.config),
        &overrides,
        short(&id),
        &img.rootfs,
    )?;
    let binds = args
        .volume
        .iter()
        .map(|v| parse_bind(v))
        .collect::<Result<Vec<_>>>()?;
    for t in &args.tmpfs {
        if !t.starts_with('/') {
            bail!("--tmpfs {t:?}: the path must be absolute");
        }
    }
    let dir = layout::container_dir(root, &id);
    let spec = LaunchSpec {
        id: id.clone(),
        dir: dir.clone(),
        image_id: img.id.clone(),
        image_rootfs: img.rootfs.clone(),
        process: proc_spec,
        binds,
        tmpfs: args.tmpfs.iter().map(PathBuf::from).collect(),
        read_only: args.read_only,
        network: args.network,
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
    };

    let (me, start) = self_start();
    let record = Record {
        id: id.clone(),
        name,
        image: args.image().to_string(),
        image_id: img.id.clone(),
        command: spec.process.args.clone(),
        created: now(),
        isolation: args.isolation.as_str().to_string(),
        state: State::Created,
        pid: None,
        supervisor_pid: Some(me),
        supervisor_start: Some(start),
        exit_code: None,
        oom_killed: false,
        auto_remove: args.rm,
        finished: None,
        started: None,
    };
    records.insert(&record)?;
    store
        .add_lease(&id, &img.id)
        .context("recording that the container uses its image")?;
    let prepared = std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .and_then(|_| {
            std::fs::write(layout::launch_file(&dir), serde_json::to_vec_pretty(&spec)?)
                .context("writing launch.json")
        });
    if let Err(e) = prepared {
        let _ = recovery::remove(root, &records, &store, &record);
        return Err(e);
    }

    if args.detach {
        return start_detached(root, &records, &store, &record);
    }

    let backend = isolation::backend(args.isolation);
    let result = supervise::run_main(
        &records,
        backend.as_ref(),
        &spec,
        &Attach::Foreground {
            interactive: args.interactive,
            // An --rm container's log would be removed with it: skip the copy.
            log: (!args.rm).then(|| layout::log_file(&dir)),
        },
        &mut |_| {},
    );
    let code = match result {
        Ok(exit) => {
            if exit.oom_killed {
                eprintln!(
                    "vessel: container {} was killed by the kernel's OOM killer (out of memory)",
                    short(&id)
                );
            }
            Ok(ExitCode::from(exit.code().clamp(0, 255) as u8))
        }
        Err(e) => {
            let _ = records.set_exited(&id, None, false, now());
            Err(anyhow::Error::new(e))
        }
    };
    if args.rm {
        if let Err(e) = recovery::remove(root, &records, &store, &record) {
            eprintln!("vessel: removing container {}: {e}", short(&id));
        }
    }
    code
}

/// Starts `vessel __supervise` in its own session and waits until it reports the start.
fn start_detached(
    root: &Path,
    records: &Records,
    store: &Store,
    record: &Record,
) -> Result<ExitCode> {
    let dir = layout::container_dir(root, &record.id);
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the readiness pipe")?;
    supervise::clear_cloexec(&ready_w).context("passing the readiness pipe")?;
    let stderr = File::create(dir.join("supervisor.err")).context("creating supervisor.err")?;
    let exe = std::env::current_exe().context("locating the vessel executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .arg("__supervise")
        .arg("--ready-fd")
        .arg(ready_w.as_raw_fd().to_string())
        .arg(&record.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(ready_w);
    if let Err(e) = spawned {
        let _ = records.set_exited(&record.id, None, false, now());
        if record.auto_remove {
            let _ = recovery::remove(root, records, store, record);
        }
        return Err(e).context("starting the container's supervisor");
    }
    let mut msg = String::new();
    File::from(ready_r)
        .read_to_string(&mut msg)
        .context("waiting for the container to start")?;
    match msg.strip_prefix("ok") {
        Some(_) => {
            println!("{}", record.id);
            Ok(ExitCode::SUCCESS)
        }
        None if msg.is_empty() => bail!(
            "the container's supervisor exited before starting it (see {})",
            dir.join("supervisor.err").display()
        ),
        None => bail!("{}", msg.trim_start_matches("error: ").trim_end()),
    }
}

/// The hidden `__supervise` command: runs a detached container to its end.
pub fn supervise(root: &Path, args: SuperviseArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    // SAFETY: the descriptor was created for us by the parent `run -d` and passed by
    // number; nothing else in this process owns it.
    let mut ready = Some(unsafe { File::from_raw_fd(args.ready_fd) });
    let store = Store::open(root)?;
    let records = Records::open(&store.db_path())?;
    let record = records.find(&args.id)?;
    let (me, start) = self_start();
    records.set_supervisor(&record.id, me, start)?;
    let dir = layout::container_dir(root, &record.id);
    let spec: LaunchSpec = serde_json::from_slice(
        &std::fs::read(layout::launch_file(&dir)).context("reading launch.json")?,
    )
    .context("parsing launch.json")?;
    let kind = IsolationKind::parse(&record.isolation).unwrap_or(IsolationKind::Container);
    let backend = isolation::backend(kind);
    let mut report = |r: Result<(), String>| {
        if let Some(mut f) = ready.take() {
            let _ = match r {
                Ok(()) => f.write_all(b"ok\n"),
                Err(e) => f.write_all(format!("error: {e}\n").as_bytes()),
            };
        }
    };
    let result = supervise::run_main(
        &records,
        backend.as_ref(),
        &spec,
        &Attach::Log(layout::log_file(&dir)),
        &mut report,
    );
    if result.is_err() {
        let _ = records.set_exited(&record.id, None, false, now());
    }
    if record.auto_remove {
        recovery::remove(root, &records, &store, &record)?;
    }
    let exit = result?;
    Ok(ExitCode::from(exit.code().clamp(0, 255) as u8))
}

fn ago(secs: i64) -> String {
    let d = (now() - secs).max(0);
    match d {
        0..=1 => "Less than a second".to_string(),
        2..=59 => format!("{d} seconds"),
        60..=3599 => format!("{} minutes", d / 60),
        3600..=86399 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86400),
    }
}

fn status(r: &Record) -> String {
    match r.state {
        State::Created => "Created".to_string(),
        State::Running => format!("Up {}", ago(r.started.unwrap_or(r.created)).to_lowercase()),
        State::Exited => {
            let code = r
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "unknown".to_string());
            let oom = if r.oom_killed { " (OOM killed)" } else { "" };
            match r.finished {
                Some(f) => format!("Exited ({code}){oom} {} ago", ago(f).to_lowercase()),
                None => format!("Exited ({code}){oom}"),
            }
        }
    }
}

fn quote_command(args: &[String]) -> String {
    let s = args.join(" ");
    let s: String = if s.chars().count() > 20 {
        s.chars().take(19).chain(std::iter::once('…')).collect()
    } else {
        s
    };
    format!("\"{s}\"")
}

/// `vessel ps`.
pub fn ps(root: &Path, args: PsArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (_store, records) = open(root)?;
    let list: Vec<Record> = records
        .list()?
        .into_iter()
        .filter(|r| args.all || r.state == State::Running)
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in &list {
            writeln!(out, "{}", short(&r.id))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == "json" {
        for r in &list {
            let v = serde_json::json!({
                "ID": r.id,
                "Names": r.name,
                "Image": r.image,
                "ImageID": r.image_id,
                "Command": r.command,
                "Created": r.created,
                "State": match r.state { State::Created => "created", State::Running => "running", State::Exited => "exited" },
                "Status": status(r),
                "ExitCode": r.exit_code,
                "StartedAt": r.started,
                "FinishedAt": r.finished,
                "OOMKilled": r.oom_killed,
                "Isolation": r.isolation,
                "Pid": r.pid,
            });
            writeln!(out, "{v}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|r| {
            [
                short(&r.id).to_string(),
                r.image.clone(),
                quote_command(&r.command),
                format!("{} ago", ago(r.created)),
                status(r),
                r.name.clone(),
                r.isolation.clone(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
        "ISOLATION",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = *w));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(ExitCode::SUCCESS)
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

fn target(root: &Path, r: &Record) -> Target {
    Target {
        id: r.id.clone(),
        dir: layout::container_dir(root, &r.id),
        pid: r.pid,
    }
}

fn kind(r: &Record) -> IsolationKind {
    IsolationKind::parse(&r.isolation).unwrap_or(IsolationKind::Container)
}

/// Waits until the container is no longer running (its supervisor recorded the exit).
fn wait_stopped(
    root: &Path,
    records: &Records,
    store: &Store,
    id: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match records.get(id) {
            Ok(Some(r)) if r.state != State::Exited => {
                if !recovery::supervised(&r) {
                    recovery::recover(root, records, store);
                    return true;
                }
            }
            _ => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
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

/// How long a container may take to end after a delivered SIGKILL (a VM's guest still
/// reports the exit and powers off) before vessel kills it from the outside.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Ends a running container for good, and only then returns `Ok`: SIGKILL to its process,
/// and where that does not end it (the signal was not delivered: a hung, stopped or
/// full-disk VM; or the process outlived it), the backend's `kill_now`.
fn end_for_good(root: &Path, records: &Records, store: &Store, r: &Record) -> Result<()> {
    let backend = isolation::backend(kind(r));
    let t = target(root, r);
    let delivered = backend.signal(&t, libc::SIGKILL).is_ok();
    if delivered && wait_stopped(root, records, store, &r.id, KILL_GRACE) {
        return Ok(());
    }
    backend
        .kill_now(&t)
        .with_context(|| format!("killing {}", r.name))?;
    if wait_stopped(root, records, store, &r.id, KILL_GRACE) {
        Ok(())
    } else {
        bail!("container {} did not stop", r.name)
    }
}

/// `vessel stop`.
pub fn stop(root: &Path, args: StopArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        if r.state == State::Exited {
            return Ok(());
        }
        let backend = isolation::backend(kind(&r));
        // An undelivered SIGTERM (an unresponsive VM) has nothing to wait for.
        if backend.signal(&target(root, &r), libc::SIGTERM).is_ok()
            && wait_stopped(
                root,
                &records,
                &store,
                &r.id,
                Duration::from_secs(args.time),
            )
        {
            return Ok(());
        }
        end_for_good(root, &records, &store, &r)
    })
}

/// `vessel kill`: succeeds only for signals that were delivered; a SIGKILL succeeds only
/// once the container has ended.
pub fn kill(root: &Path, args: KillArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    let sig = parse_signal(&args.signal)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        if r.state != State::Running {
            bail!("container {c} is not running");
        }
        if sig == libc::SIGKILL {
            return end_for_good(root, &records, &store, &r);
        }
        isolation::backend(kind(&r))
            .signal(&target(root, &r), sig)
            .with_context(|| format!("signalling {c}"))
    })
}

/// `vessel rm`.
pub fn rm(root: &Path, args: RmArgs) -> Result<ExitCode> {
    let root = &absolute(root)?;
    let (store, records) = open(root)?;
    for_each(&args.containers, |c| {
        let r = records.find(c)?;
        if r.state != State::Exited {
            if !args.force {
                bail!("container {c} is running: stop it first or use rm -f");
            }
            end_for_good(root, &records, &store, &r)?;
        }
        match records.get(&r.id)? {
            Some(r) => recovery::remove(root, &records, &store, &r)
                .with_context(|| format!("removing {c}")),
            // An --rm container removes itself.
            None => Ok(()),
        }
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
    let container = &args.argv[0];
    let r = records.find(container)?;
    if r.state != State::Running {
        bail!("container {container} is not running");
    }
    let dir = layout::container_dir(root, &r.id);
    let spec: LaunchSpec = serde_json::from_slice(
        &std::fs::read(layout::launch_file(&dir)).context("reading launch.json")?,
    )
    .context("parsing launch.json")?;
    let mut p: ProcessSpec = spec.process.clone();
    p.args = args.argv[1..].to_vec();
    p.terminal = args.tty;
    for e in &args.env {
        let entry = if e.contains('=') {
            e.clone()
        } else {
            match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        p.env.retain(|x| x.split('=').next() != Some(key.as_str()));
        p.env.push(entry);
    }
    if let Some(w) = &args.workdir {
        if !w.starts_with('/') {
            bail!("working directory {w:?} is not an absolute path");
        }
        p.cwd = w.clone();
    }
    if let Some(u) = &args.user {
        let who = user::resolve(u, &spec.image_rootfs)?;
        p.uid = who.uid;
        p.gid = who.gid;
        p.additional_gids = who.additional_gids;
    }
    let backend = isolation::backend(kind(&r));
    let exit = supervise::run_exec(backend.as_ref(), &target(root, &r), &p, args.interactive)?;
    Ok(ExitCode::from(exit.code().clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let b = parse_bind("/tmp:/data:ro").unwrap();
        assert!(b.read_only);
        assert_eq!(b.destination, PathBuf::from("/data"));
        assert!(!parse_bind("/tmp:/data").unwrap().read_only);
        assert!(parse_bind("tmp:/data").is_err());
        assert!(parse_bind("/tmp:data").is_err());
        assert!(parse_bind("/tmp:/data:rx").is_err());
        assert!(parse_bind("/tmp").is_err());
        assert!(parse_bind("/no/such/dir/at/all:/data").is_err());
    }
}
