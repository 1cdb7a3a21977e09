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
    if let Some(KernelCommand::Install(i)) = args.command {
        return install(root, i);
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
    match &k.modules {
        Some(m) => println!("modules:   {}", m.display()),
        None => println!("modules:   none found (the kernel must have virtio-mmio, virtio-blk, virtio-console, ext4 and overlayfs built in)"),
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
