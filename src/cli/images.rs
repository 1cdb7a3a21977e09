//! `pull`, `images`, `tag`, `rmi`, `load`, `save`, `system`: the image store's commands.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use vessel_images::list::Filter;
use vessel_images::pull::{Credentials, PullOptions};
use vessel_images::Store;

pub(super) fn open(root: &Path) -> Result<Store> {
    Store::open(root).with_context(|| format!("opening the image store at {}", root.display()))
}

/// Arguments of `vessel pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. alpine, library/alpine:3.20, 127.0.0.1:5000/x:1.
    pub reference: String,
    /// Platform to pull from a multi-platform image (os/arch[/variant]). Default: this host's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Registry host (host[:port]) that may be reached over plain HTTP. Loopback hosts always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// User name for basic auth (password from --password-stdin).
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Read the password from stdin.
    #[arg(long = "password-stdin", requires = "username")]
    pub password_stdin: bool,
    /// Credentials file (docker's config.json with "auths"). Default: $VESSEL_AUTH_FILE, then ~/.docker/config.json.
    #[arg(long = "authfile", value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Print only the image ID when done (no progress).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Output format of `vessel images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
}

/// Arguments of `vessel images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show manifest digests.
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate IDs.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// label=KEY[=VALUE], reference=PATTERN, dangling=true|false, before=IMAGE, since=IMAGE.
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
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
    /// Remove even if several names share the image or a container uses it
    /// (a used image loses its names but stays until the container is gone).
    #[arg(short, long)]
    pub force: bool,
    /// Images to remove.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `vessel load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Archive to read (docker-archive or OCI image layout tarball, optionally gzip/zstd).
    #[arg(short = 'i', long = "input")]
    pub input: PathBuf,
    /// Print only image IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `vessel save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Archive to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Images to save.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `vessel system`.
#[derive(Debug, Args)]
pub struct SystemArgs {
    #[command(subcommand)]
    command: SystemCommand,
}

#[derive(Debug, Subcommand)]
enum SystemCommand {
    /// Disk usage: images, shared and unique size, reclaimable.
    Df,
    /// Verify every blob's digest and every reference; report what is broken.
    Check {
        /// Remove what is broken (images missing blobs or trees, corrupt blobs).
        #[arg(long)]
        repair: bool,
    },
    /// Remove blobs, trees and disks no image uses.
    Gc,
}

/// Runs `vessel pull`.
pub fn pull(root: &Path, a: PullArgs) -> Result<ExitCode> {
    let store = open(root)?;
    vessel_images::interrupt::install();
    let mut opts = PullOptions {
        insecure_registries: a.insecure_registry,
        progress: !a.quiet,
        ..Default::default()
    };
    if let Some(p) = &a.platform {
        opts.platform = Some(
            vessel_images::platform::Platform::parse(p)
                .with_context(|| format!("--platform {p}"))?,
        );
    }
    if let Some(user) = a.username {
        let password = if a.password_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        } else {
            bail!("--username needs --password-stdin (passwords on the command line leak)");
        };
        opts.credentials = Some(Credentials::Basic {
            username: user,
            password,
        });
    } else {
        opts.authfile = a.authfile;
    }
    let img = store
        .pull_blocking(&a.reference, &opts)
        .with_context(|| format!("pulling {}", a.reference))?;
    if a.quiet {
        println!("{}", img.id);
    } else {
        if let Some(d) = &img.manifest_digest {
            println!("Digest: {d}");
        }
        println!("Image: {}", img.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{bytes}B");
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", UNITS[u])
}

fn ago(t: Option<i64>) -> String {
    let Some(t) = t else {
        return "N/A".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = (now - t).max(0);
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s if s < 86400 * 14 => (s / 86400, "day"),
        s if s < 86400 * 60 => (s / (86400 * 7), "week"),
        s if s < 86400 * 365 * 2 => (s / (86400 * 30), "month"),
        s => (s / (86400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn print_table(rows: &[Vec<String>]) {
    let mut widths = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Runs `vessel images`.
pub fn images(root: &Path, a: ImagesArgs) -> Result<ExitCode> {
    let store = open(root)?;
    let filters = a
        .filters
        .iter()
        .map(|f| f.parse::<Filter>())
        .collect::<Result<Vec<_>, _>>()?;
    let listing = store.list(&filters)?;
    let id_of = |id: &str| {
        if a.no_trunc {
            id.to_string()
        } else {
            id.trim_start_matches("sha256:").chars().take(12).collect()
        }
    };
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &listing.rows {
            if seen.insert(r.image.id.clone()) {
                println!("{}", id_of(&r.image.id));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.format == Format::Json {
        let rows: Vec<serde_json::Value> = listing
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "Repository": r.repository,
                    "Tag": r.tag,
                    "Digest": r.digest,
                    "ID": r.image.id,
                    "Created": r.image.created.map(|c| c.to_rfc3339()),
                    "Size": r.image.size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Vec::new();
    let mut head = vec!["REPOSITORY", "TAG"];
    if a.digests {
        head.push("DIGEST");
    }
    head.extend(["IMAGE ID", "CREATED", "SIZE"]);
    table.push(head.into_iter().map(String::from).collect());
    for r in &listing.rows {
        let mut row = vec![r.repository.clone(), r.tag.clone()];
        if a.digests {
            row.push(r.digest.clone().unwrap_or_else(|| "<none>".into()));
        }
        row.push(id_of(&r.image.id));
        row.push(ago(r.image.created.map(|c| c.timestamp())));
        row.push(human(r.image.size));
        table.push(row);
    }
    print_table(&table);
    if std::io::stdout().is_terminal() || !listing.rows.is_empty() {
        println!(
            "{} image{}, {} total (shared layers counted once)",
            listing.images,
            if listing.images == 1 { "" } else { "s" },
            human(listing.total_size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `vessel tag`.
pub fn tag(root: &Path, a: TagArgs) -> Result<ExitCode> {
    let store = open(root)?;
    store
        .tag(&a.source, &a.target)
        .with_context(|| format!("tagging {} as {}", a.source, a.target))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `vessel rmi`.
pub fn rmi(root: &Path, a: RmiArgs) -> Result<ExitCode> {
    let store = open(root)?;
    let mut failed = false;
    for name in &a.images {
        match store.remove(name, a.force) {
            Ok(report) => {
                for u in &report.untagged {
                    println!("Untagged: {u}");
                }
                for d in &report.deleted {
                    println!("Deleted: {d}");
                }
            }
            Err(e) => {
                eprintln!("vessel: removing {name}: {e}");
                failed = true;
            }
        }
    }
    store.gc().context("collecting garbage")?;
    Ok(if failed {
        ExitCode::from(super::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `vessel load`.
pub fn load(root: &Path, a: LoadArgs) -> Result<ExitCode> {
    let store = open(root)?;
    vessel_images::interrupt::install();
    let images = store
        .load(&a.input)
        .with_context(|| format!("loading {}", a.input.display()))?;
    for img in images {
        if a.quiet {
            println!("{}", img.id);
        } else if img.references.is_empty() {
            println!("Loaded image ID: {}", img.id);
        } else {
            for r in &img.references {
                println!("Loaded image: {r}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `vessel save`.
pub fn save(root: &Path, a: SaveArgs) -> Result<ExitCode> {
    let store = open(root)?;
    store
        .save(&a.images, &a.output)
        .with_context(|| format!("saving to {}", a.output.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `vessel system`.
pub fn system(root: &Path, a: SystemArgs) -> Result<ExitCode> {
    let store = open(root)?;
    match a.command {
        SystemCommand::Df => {
            let df = store.disk_usage()?;
            print_table(&[
                vec![
                    "TYPE".into(),
                    "TOTAL".into(),
                    "ACTIVE".into(),
                    "SIZE".into(),
                    "SHARED".into(),
                    "UNIQUE".into(),
                    "RECLAIMABLE".into(),
                ],
                vec![
                    "Images".into(),
                    df.images.to_string(),
                    df.active.to_string(),
                    human(df.size),
                    human(df.shared),
                    human(df.unique),
                    human(df.reclaimable),
                ],
            ]);
            println!(
                "Store on disk: blobs {}, unpacked trees {}, disks {}",
                human(df.blobs_bytes),
                human(df.rootfs_bytes),
                human(df.disks_bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        SystemCommand::Check { repair } => {
            let report = store.check(repair)?;
            for p in &report.problems {
                println!("{p}");
            }
            for r in &report.repaired {
                println!("repaired: {r}");
            }
            if report.problems.is_empty() {
                println!(
                    "ok: {} blobs, {} images, {} references verified",
                    report.blobs, report.images, report.references
                );
                Ok(ExitCode::SUCCESS)
            } else if repair {
                println!("{} problems found and repaired", report.problems.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{} problems found; run `vessel system check --repair` to remove what is broken",
                    report.problems.len()
                );
                Ok(ExitCode::from(super::EXIT_FAILED))
            }
        }
        SystemCommand::Gc => {
            let r = store.gc()?;
            println!(
                "removed {} blobs, {} trees, {} disks ({} freed)",
                r.blobs,
                r.trees,
                r.disks,
                human(r.bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
