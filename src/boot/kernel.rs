//! Guest kernel discovery and installation.
//!
//! Order: `--kernel`, `$VESSEL_KERNEL`, the kernel installed under the state root
//! (`<root>/kernel/vmlinuz` + `<root>/kernel/lib/modules/<release>`), then the host's own
//! `/boot/vmlinuz-$(uname -r)` with `/lib/modules/$(uname -r)`. A kernel path may be a
//! bzImage file or a directory in the installed layout.

use std::fmt;
use std::path::{Path, PathBuf};

use super::BootError;

/// Where a kernel was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSource {
    /// `--kernel`.
    Flag,
    /// `$VESSEL_KERNEL`.
    Env,
    /// Installed under the state root by `vessel kernel install`.
    Installed,
    /// The host's running kernel from /boot.
    Host,
}

impl fmt::Display for KernelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelSource::Flag => "--kernel",
            KernelSource::Env => "$VESSEL_KERNEL",
            KernelSource::Installed => "installed under the state root",
            KernelSource::Host => "the host's /boot",
        })
    }
}

/// A guest kernel and its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage.
    pub image: PathBuf,
    /// `lib/modules/<release>` for this kernel, if one was found.
    pub modules: Option<PathBuf>,
    /// The kernel release, from the bzImage header.
    pub release: Option<String>,
    /// Where discovery found it.
    pub source: KernelSource,
    /// How it was made, from the `origin.json` beside it (`vessel kernel build`'s record,
    /// or what `vessel kernel install` installed it from).
    pub origin: Option<String>,
}

/// How the kernel in `dir` was made, in one line, from its `origin.json`.
fn origin_in(dir: &Path) -> Option<String> {
    let data = std::fs::read(dir.join("origin.json")).ok()?;
    if let Ok(built) = serde_json::from_slice::<super::kernel_build::Origin>(&data) {
        return Some(built.describe());
    }
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    v["how"].as_str().map(str::to_string)
}

/// The installed kernel's directory under a state root.
pub fn installed_dir(root: &Path) -> PathBuf {
    root.join("kernel")
}

/// Finds the guest kernel to boot.
pub fn discover(root: &Path, flag: Option<&Path>) -> Result<Kernel, BootError> {
    let mut tried = Vec::new();
    if let Some(p) = flag {
        return from_path(p, KernelSource::Flag);
    }
    if let Some(p) = std::env::var_os("VESSEL_KERNEL").filter(|p| !p.is_empty()) {
        return from_path(Path::new(&p), KernelSource::Env);
    }
    let inst = installed_dir(root);
    if inst.join("vmlinuz").is_file() {
        return from_path(&inst, KernelSource::Installed);
    }
    tried.push(inst.join("vmlinuz").display().to_string());
    // SAFETY: utsname is plain data and uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } == 0 {
        // SAFETY: uname NUL-terminates release.
        let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
        let host = PathBuf::from(format!("/boot/vmlinuz-{rel}"));
        if std::fs::File::open(&host).is_ok() {
            let modules = PathBuf::from(format!("/lib/modules/{rel}"));
            return Ok(Kernel {
                release: release_of(&host).or(Some(rel.into_owned())),
                image: host,
                modules: modules.is_dir().then_some(modules),
                source: KernelSource::Host,
                origin: Some("the host's own kernel".into()),
            });
        }
        tried.push(host.display().to_string());
    }
    Err(BootError::NoKernel(tried.join(", ")))
}

fn from_path(p: &Path, source: KernelSource) -> Result<Kernel, BootError> {
    let (image, base) = if p.is_dir() {
        (p.join("vmlinuz"), Some(p.to_path_buf()))
    } else {
        (p.to_path_buf(), p.parent().map(Path::to_path_buf))
    };
    std::fs::File::open(&image)
        .map_err(|e| BootError::io(format!("guest kernel {}", image.display()), e))?;
    let release = release_of(&image);
    // Modules: beside the kernel (installed layout) first, then the host's /lib/modules.
    let modules = release.as_ref().and_then(|rel| {
        let mut c: Vec<PathBuf> = base
            .iter()
            .map(|b| b.join("lib/modules").join(rel))
            .collect();
        c.push(PathBuf::from("/lib/modules").join(rel));
        c.into_iter().find(|d| d.is_dir())
    });
    // A lone modules directory beside the kernel is used even when the release is unknown.
    let modules = modules.or_else(|| {
        let dir = base?.join("lib/modules");
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        (entries.len() == 1).then(|| entries.remove(0))
    });
    let origin = if p.is_dir() { origin_in(p) } else { None };
    Ok(Kernel {
        image,
        modules,
        release,
        source,
        origin,
    })
}

/// The release string a bzImage carries in its setup header (`kernel_version`).
pub fn release_of(image: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).ok()?;
    let mut hdr = [0u8; 0x210];
    f.read_exact(&mut hdr).ok()?;
    if &hdr[0x202..0x206] != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes([hdr[0x20e], hdr[0x20f]]) as u64;
    if off == 0 {
        return None;
    }
    f.seek(SeekFrom::Start(off + 0x200)).ok()?;
    let mut s = [0u8; 256];
    let n = f.read(&mut s).ok()?;
    let s = &s[..n];
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    let rel = std::str::from_utf8(&s[..end]).ok()?;
    (!rel.is_empty()).then(|| rel.to_string())
}

/// Installs a kernel under the state root from an extracted directory (`vmlinuz` +
/// `lib/modules/<release>`, as scripts/setup.sh leaves it, or a `boot/` + `lib/modules`
/// tree) or a Debian `linux-image-*.deb` (extracted with `dpkg-deb -x`).
pub fn install(root: &Path, from: &Path) -> Result<Kernel, BootError> {
    let io = |c: String| move |e| BootError::io(c, e);
    let dest = installed_dir(root);
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let stage = root.join(format!("kernel.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(io(format!("creating {}", stage.display())))?;
    let result = (|| {
        let tree = if from.is_dir() {
            from.to_path_buf()
        } else {
            let x = stage.join("deb");
            let st = std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(from)
                .arg(&x)
                .status()
                .map_err(io("running dpkg-deb (is dpkg installed?)".into()))?;
            if !st.success() {
                return Err(BootError::NoKernel(format!(
                    "dpkg-deb -x {} failed",
                    from.display()
                )));
            }
            x
        };
        let image = [tree.join("vmlinuz")]
            .into_iter()
            .chain(
                std::fs::read_dir(tree.join("boot"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                    }),
            )
            .find(|p| p.is_file())
            .ok_or_else(|| {
                BootError::NoKernel(format!(
                    "no vmlinuz or boot/vmlinuz-* in {}",
                    from.display()
                ))
            })?;
        let rel = release_of(&image)
            .ok_or_else(|| BootError::NoKernel(format!("{} is not a bzImage", image.display())))?;
        let out = stage.join("kernel");
        std::fs::create_dir_all(out.join("lib/modules"))
            .map_err(io("creating the kernel dir".into()))?;
        std::fs::copy(&image, out.join("vmlinuz"))
            .map_err(io(format!("copying {}", image.display())))?;
        // How it was made: a build's own record, else where it was installed from.
        let origin = if tree.join("origin.json").is_file() {
            std::fs::read(tree.join("origin.json")).map_err(io("reading origin.json".into()))?
        } else {
            let how = if from.is_dir() {
                format!("vessel kernel install --from {}", from.display())
            } else {
                format!(
                    "vessel kernel install --from {} (Debian package)",
                    from.display()
                )
            };
            serde_json::to_vec_pretty(&serde_json::json!({ "how": how }))
                .map_err(|e| io("writing origin.json".into())(std::io::Error::other(e)))?
        };
        std::fs::write(out.join("origin.json"), origin)
            .map_err(io("writing origin.json".into()))?;
        let mods = tree.join("lib/modules").join(&rel);
        if mods.is_dir() {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&mods)
                .arg(out.join("lib/modules"))
                .status()
                .map_err(io("running cp".into()))?;
            if !st.success() {
                return Err(BootError::NoKernel(format!(
                    "copying {} failed",
                    mods.display()
                )));
            }
        }
        let old = root.join(format!("kernel.old-{}", std::process::id()));
        if dest.exists() {
            std::fs::rename(&dest, &old).map_err(io(format!("moving aside {}", dest.display())))?;
        }
        std::fs::rename(&out, &dest).map_err(io(format!("installing {}", dest.display())))?;
        let _ = std::fs::remove_dir_all(&old);
        from_path(&dest, KernelSource::Installed)
    })();
    let _ = std::fs::remove_dir_all(&stage);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_of_debians_bzimage() {
        let p = Path::new("/var/cache/vessel/kernel/vmlinuz");
        if !p.exists() {
            eprintln!(
                "SKIP: no Debian kernel at {} (run scripts/setup.sh)",
                p.display()
            );
            return;
        }
        let want = std::fs::read_to_string("/var/cache/vessel/kernel/version").unwrap();
        assert_eq!(release_of(p).as_deref(), Some(want.trim()));
        let k = from_path(p.parent().unwrap(), KernelSource::Flag).unwrap();
        assert!(k.modules.unwrap().ends_with(want.trim()));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), vec![0u8; 4096]).unwrap();
        assert_eq!(release_of(t.path()), None);
    }
}
