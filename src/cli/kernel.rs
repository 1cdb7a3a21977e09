//! `vessel kernel`: which guest kernel, modules and VMM VM isolation will use, and why;
//! `vessel kernel install`: put a guest kernel under the state root.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::boot::{self, kernel::Kernel};
use crate::isolation::vm::choice;

/// `vessel kernel [install]`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    command: Option<KernelCommand>,
    /// Describe this kernel (a bzImage or an installed-layout directory) instead of the default.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Evaluate this VMM choice (auto, builtin or qemu).
    #[arg(long, default_value = "auto")]
    vmm: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum KernelCommand {
    /// Install a guest kernel under the state root (from an extracted tree or a linux-image .deb).
    Install(InstallArgs),
    /// Build vessel's own guest kernel (Debian's linux-source-6.1, everything built in) and
    /// install it under the state root; cached, so a second build is instant.
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// A config fragment to apply over allnoconfig instead of vessel's
    /// (guest-kernel/config-6.1-x86_64).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Parallel compile jobs (default: the number of CPUs).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Build (or find in the cache) only; leave the state root's kernel as it is.
    #[arg(long)]
    no_install: bool,
    /// Print the result as JSON (the cache directory, whether it was built now, how long
    /// it took).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// A directory with `vmlinuz` (or `boot/vmlinuz-*`) and `lib/modules/<release>`, or a
    /// Debian linux-image .deb. Default: the kernel scripts/setup.sh fetched.
    #[arg(long, value_name = "DEB_OR_DIR")]
    from: Option<PathBuf>,
}

/// Where scripts/setup.sh leaves Debian's cloud kernel.
const SETUP_CACHE: &str = "/var/cache/vessel/kernel";

/// Runs `vessel kernel`.
pub fn kernel(root: &Path, args: KernelArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(KernelCommand::Install(i)) => return install(root, i),
        Some(KernelCommand::Build(b)) => return build(root, b),
        None => {}
    }
    let k = boot::kernel::discover(root, args.kernel.as_deref())?;
    let mods: Vec<String> = match &k.modules {
        Some(m) => boot::modules::resolve(m, boot::modules::NEEDED)?
            .into_iter()
            .map(|m| m.name)
            .collect(),
        None => Vec::new(),
    };
    let initramfs = boot::initramfs::prepare(root, &k);
    let boot_image = boot::vmlinux::boot_image(root, &k.image);
    let kvm = choice::kvm_state();
    let chosen = choice::choose(&args.vmm);
    if args.json {
        let v = serde_json::json!({
            "kernel": k.image,
            "boot_image": boot_image.as_ref().ok(),
            "boot_image_error": boot_image.as_ref().err().map(|e| e.to_string()),
            "source": k.source.to_string(),
            "release": k.release,
            "origin": k.origin,
            "modules_dir": k.modules,
            "modules": mods,
            "initramfs": initramfs.as_ref().ok().map(|i| &i.path),
            "agent": initramfs.as_ref().ok().map(|i| &i.agent),
            "initramfs_error": initramfs.as_ref().err().map(|e| e.to_string()),
            "kvm_boots_linux": kvm.boots_linux,
            "kvm": kvm.detail,
            "vmm": chosen.as_ref().ok().map(|c| c.vmm.to_string()),
            "vmm_reason": match &chosen { Ok(c) => c.reason.clone(), Err(e) => e.clone() },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_kernel(&k, &mods);
    match &boot_image {
        Ok(b) if *b == k.image => println!("boots:     the image as it is"),
        Ok(b) => println!(
            "boots:     {} (the ELF vmlinux unpacked from it)",
            b.display()
        ),
        Err(e) => println!("boots:     cannot be prepared: {e}"),
    }
    match &initramfs {
        Ok(i) => println!(
            "initramfs: {}\nagent:     {}",
            i.path.display(),
            i.agent.display()
        ),
        Err(e) => println!("initramfs: cannot be packed: {e}"),
    }
    println!(
        "kvm:       {} ({})",
        match (kvm.usable, kvm.boots_linux) {
            (true, true) => "runs a full Linux guest",
            (true, false) => "usable, but cannot run a full Linux guest",
            (false, _) => "not usable",
        },
        kvm.detail
    );
    match &chosen {
        Ok(c) => println!("vmm:       {} [{}]", c.vmm, c.reason),
        Err(e) => println!("vmm:       none: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_kernel(k: &Kernel, mods: &[String]) {
    println!("kernel:    {} ({})", k.image.display(), k.source);
    println!("release:   {}", k.release.as_deref().unwrap_or("unknown"));
    if let Some(o) = &k.origin {
        println!("origin:    {o}");
    }
    match &k.modules {
        Some(m) => println!("modules:   {}", m.display()),
        None => println!("modules:   none (everything the guest needs must be built in, as in `vessel kernel build`'s)"),
    }
    println!(
        "packed:    {}",
        if mods.is_empty() {
            "(none)".into()
        } else {
            mods.join(" ")
        }
    );
}

fn install(root: &Path, args: InstallArgs) -> anyhow::Result<ExitCode> {
    let from = match args.from {
        Some(f) => f,
        None if Path::new(SETUP_CACHE).join("vmlinuz").is_file() => PathBuf::from(SETUP_CACHE),
        None => anyhow::bail!(
            "no kernel to install: pass --from DEB_OR_DIR (scripts/setup.sh fetches Debian's cloud kernel into {SETUP_CACHE})"
        ),
    };
    let k = boot::kernel::install(root, &from)
        .with_context(|| format!("installing the kernel from {}", from.display()))?;
    println!(
        "installed guest kernel {} under {}",
        k.release.as_deref().unwrap_or("(unknown release)"),
        boot::kernel::installed_dir(root).display()
    );
    let mods: Vec<String> = match &k.modules {
        Some(m) => boot::modules::resolve(m, boot::modules::NEEDED)?
            .into_iter()
            .map(|m| m.name)
            .collect(),
        None => Vec::new(),
    };
    print_kernel(&k, &mods);
    Ok(ExitCode::SUCCESS)
}

fn build(root: &Path, args: BuildArgs) -> anyhow::Result<ExitCode> {
    use boot::kernel_build;
    let (fragment, fragment_name) = match &args.config {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the config fragment {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            kernel_build::FRAGMENT.to_string(),
            "guest-kernel/config-6.1-x86_64".to_string(),
        ),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let recipe = kernel_build::Recipe {
        fragment,
        fragment_name,
        jobs,
    };
    let progress = kernel_build::ConsoleProgress::new();
    let built = kernel_build::build(&recipe, &progress)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "dir": built.dir,
                "fresh": built.fresh,
                "build_seconds": built.build_seconds,
            })
        );
    } else if built.fresh {
        println!(
            "built the guest kernel in {:.0} s: {}",
            built.build_seconds,
            built.dir.display()
        );
    } else {
        println!(
            "the guest kernel is already built (it took {:.0} s): {}",
            built.build_seconds,
            built.dir.display()
        );
    }
    if args.no_install {
        return Ok(ExitCode::SUCCESS);
    }
    let k = boot::kernel::install(root, &built.dir)
        .with_context(|| format!("installing the kernel from {}", built.dir.display()))?;
    println!(
        "installed guest kernel {} under {}; VM isolation boots it by default",
        k.release.as_deref().unwrap_or("(unknown release)"),
        boot::kernel::installed_dir(root).display()
    );
    print_kernel(&k, &[]);
    Ok(ExitCode::SUCCESS)
}
