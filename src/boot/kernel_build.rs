//! `vessel kernel build`: vessel's own guest kernel, from Debian's `linux-source-6.1` and
//! the config fragment in `guest-kernel/config-6.1-x86_64` (everything built in, no
//! modules).
//!
//! The build is reproducible and cached: the key is a hash of the source package's version,
//! the fragment, the compiler's version and [`RECIPE`]; the same key always builds in the
//! same directory with the same `KBUILD_BUILD_*` settings, so it gives the same bytes, and
//! a key already built is not built again. Results land in `<cache>/<key>/` (`vmlinuz`,
//! `vmlinux`, `config`, `origin.json`), written to a temporary directory and renamed.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::BootError;

/// The config fragment, as the repository has it (`--config` replaces it).
pub const FRAGMENT: &str = include_str!("../../guest-kernel/config-6.1-x86_64");

/// Bumped whenever the build steps change what they produce.
pub const RECIPE: u32 = 1;

/// The Debian package that holds the source.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The tarball that package installs.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// The Debian packages a build needs, and a file each one provides (how we tell whether it
/// is installed without asking dpkg about every one).
const BUILD_DEPS: &[(&str, &str)] = &[
    (SOURCE_PACKAGE, SOURCE_TARBALL),
    ("make", "/usr/bin/make"),
    ("gcc", "/usr/bin/gcc"),
    ("bc", "/usr/bin/bc"),
    ("bison", "/usr/bin/bison"),
    ("flex", "/usr/bin/flex"),
    ("libelf-dev", "/usr/include/gelf.h"),
    ("libssl-dev", "/usr/include/openssl/opensslv.h"),
    ("xz-utils", "/usr/bin/xz"),
    ("cpio", "/usr/bin/cpio"),
];

/// Where builds are cached: `$VESSEL_KERNEL_BUILD_CACHE`, else
/// `/var/cache/vessel/kernel-build` (shared by every state root, like the Debian kernel
/// scripts/setup.sh fetches).
pub fn cache_root() -> PathBuf {
    std::env::var_os("VESSEL_KERNEL_BUILD_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vessel/kernel-build"))
}

/// What a build is made from.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The config fragment applied over `allnoconfig`.
    pub fragment: String,
    /// Where the fragment came from (for the record).
    pub fragment_name: String,
    /// Parallel compile jobs.
    pub jobs: usize,
}

/// A finished build in the cache.
#[derive(Debug, Clone)]
pub struct Built {
    /// `<cache>/<key>`: `vmlinuz`, `vmlinux`, `config`, `origin.json`.
    pub dir: PathBuf,
    /// Whether this call built it (false: it was cached).
    pub fresh: bool,
    /// How long the build took when it was made (from its record).
    pub build_seconds: f64,
}

/// What a long step reports as it goes.
pub trait Progress {
    /// A step begins.
    fn step(&self, what: &str);
    /// The compile step has compiled or linked `done` files; `last` is the latest.
    fn compiled(&self, done: u64, last: &str, elapsed: Duration);
    /// The compile step is over.
    fn finish(&self);
}

/// Progress on a terminal (a spinner line, from the first compiled file on) or as
/// occasional lines (logs, CI).
pub struct ConsoleProgress {
    terminal: bool,
    bar: std::cell::OnceCell<indicatif::ProgressBar>,
    last_line: std::cell::Cell<Instant>,
}

impl ConsoleProgress {
    /// A spinner when stderr is a terminal.
    pub fn new() -> ConsoleProgress {
        ConsoleProgress {
            terminal: std::io::stderr().is_terminal(),
            bar: std::cell::OnceCell::new(),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for ConsoleProgress {
    fn step(&self, what: &str) {
        match self.bar.get() {
            Some(b) => b.println(what),
            None => eprintln!("{what}"),
        }
    }

    fn compiled(&self, done: u64, last: &str, elapsed: Duration) {
        let secs = elapsed.as_secs();
        let msg = format!(
            "compiling: {done} files, {}m{:02}s ({last})",
            secs / 60,
            secs % 60
        );
        if self.terminal {
            let bar = self.bar.get_or_init(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.enable_steady_tick(Duration::from_millis(200));
                b
            });
            bar.set_message(msg);
        } else if self.last_line.get().elapsed() >= Duration::from_secs(30) {
            self.last_line.set(Instant::now());
            eprintln!("{msg}");
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let context = context.into();
    move |e| BootError::io(context, e)
}

fn failed(what: impl Into<String>) -> BootError {
    BootError::KernelBuild(what.into())
}

/// Installs the build dependencies that are missing (`apt-get`, as root); says which.
pub fn install_dependencies(progress: &dyn Progress) -> Result<(), BootError> {
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(failed(format!(
            "missing build dependencies ({}); install them as root (scripts/setup.sh does) or run this as root",
            missing.join(" ")
        )));
    }
    progress.step(&format!(
        "installing build dependencies: {}",
        missing.join(" ")
    ));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let ok = install().is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && install().is_ok_and(|s| s.success()));
    if !ok {
        return Err(failed(format!(
            "apt-get install {} failed",
            missing.join(" ")
        )));
    }
    Ok(())
}

fn output_of(cmd: &str, args: &[&str]) -> Result<String, BootError> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map_err(io(format!("running {cmd}")))?;
    if !out.status.success() {
        return Err(failed(format!("{cmd} {} failed", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The installed source package's version (e.g. `6.1.192-3`).
pub fn source_version() -> Result<String, BootError> {
    output_of("dpkg-query", &["-W", "-f=${Version}", SOURCE_PACKAGE])
}

/// What the cache key and the record are made of.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// Always `vessel kernel build`.
    pub how: String,
    /// `linux-source-6.1`.
    pub source_package: String,
    /// Its Debian version.
    pub source_version: String,
    /// The kernel release (`uname -r` in the guest).
    pub release: String,
    /// Where the fragment came from.
    pub config: String,
    /// sha256 of the fragment.
    pub config_sha256: String,
    /// `gcc --version`, first line.
    pub compiler: String,
    /// [`RECIPE`].
    pub recipe: u32,
    /// The cache key.
    pub key: String,
    /// Seconds the build took.
    pub build_seconds: f64,
    /// Compile jobs it ran with.
    pub jobs: usize,
    /// sha256 of the bzImage.
    pub vmlinuz_sha256: String,
}

impl Origin {
    /// One line for `vessel kernel`.
    pub fn describe(&self) -> String {
        format!(
            "vessel kernel build: {} {} with {} (sha256 {}), in {:.0} s with {} jobs",
            self.source_package,
            self.source_version,
            self.config,
            self.config_sha256.get(..12).unwrap_or(&self.config_sha256),
            self.build_seconds,
            self.jobs
        )
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The cache key for `recipe` with this machine's source and compiler.
pub fn key(recipe: &Recipe, source_version: &str, compiler: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("{RECIPE}\n{SOURCE_PACKAGE} {source_version}\n{compiler}\n").as_bytes());
    h.update(recipe.fragment.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// The symbols a fragment (or a resolved `.config`) sets, and to what.
pub fn fragment_symbols(fragment: &str) -> Vec<(String, String)> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The fragment's lines a resolved `.config` did not keep (a dependency missing, a typo).
pub fn not_taken(fragment: &str, config: &str) -> Vec<String> {
    let set: std::collections::HashMap<String, String> =
        fragment_symbols(config).into_iter().collect();
    fragment_symbols(fragment)
        .into_iter()
        .filter(|(k, v)| {
            let want_off = v == "n";
            match set.get(k.as_str()) {
                Some(got) => want_off || got != v,
                None => !want_off,
            }
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The build in the cache for `recipe`, building it first when it is not there.
pub fn build(recipe: &Recipe, progress: &dyn Progress) -> Result<Built, BootError> {
    install_dependencies(progress)?;
    let version = source_version()?;
    let compiler = output_of("gcc", &["--version"])?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let key = key(recipe, &version, &compiler);
    let cache = cache_root();
    let dir = cache.join(&key);
    // A build is there once its record is: the directory is renamed into place whole.
    let cached = || -> Option<Built> {
        let o: Origin =
            serde_json::from_slice(&std::fs::read(dir.join("origin.json")).ok()?).ok()?;
        Some(Built {
            dir: dir.clone(),
            fresh: false,
            build_seconds: o.build_seconds,
        })
    };
    if let Some(built) = cached() {
        return Ok(built);
    }
    std::fs::create_dir_all(&cache).map_err(io(format!("creating {}", cache.display())))?;
    // One build per key at a time: a second caller waits, then finds it done.
    let lock = std::fs::File::create(cache.join(format!("{key}.lock")))
        .map_err(io("creating the build lock"))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(BootError::io(
            "locking the kernel build",
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(built) = cached() {
        return Ok(built);
    }
    let start = Instant::now();
    // Always the same path for the same key: the build path must not leak into the bytes.
    let tree = cache.join(format!("{key}.src"));
    let result = build_in(recipe, &version, &tree, progress);
    let _ = std::fs::remove_dir_all(&tree);
    let (vmlinuz, vmlinux, config, release) = result?;
    let origin = Origin {
        how: "vessel kernel build".into(),
        source_package: SOURCE_PACKAGE.into(),
        source_version: version,
        release,
        config: recipe.fragment_name.clone(),
        config_sha256: sha256_hex(recipe.fragment.as_bytes()),
        compiler,
        recipe: RECIPE,
        key: key.clone(),
        build_seconds: start.elapsed().as_secs_f64(),
        jobs: recipe.jobs,
        vmlinuz_sha256: sha256_hex(&vmlinuz),
    };
    let tmp = cache.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        let json = serde_json::to_vec_pretty(&origin).map_err(std::io::Error::other)?;
        for (name, data) in [
            ("vmlinuz", &vmlinuz[..]),
            ("vmlinux", &vmlinux[..]),
            ("config", config.as_bytes()),
            ("origin.json", &json[..]),
        ] {
            let mut f = std::fs::File::create(tmp.join(name))?;
            std::io::Write::write_all(&mut f, data)?;
            f.sync_all()?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dir)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(BootError::io(
            format!("storing the build in {}", dir.display()),
            e,
        ));
    }
    Ok(Built {
        dir,
        fresh: true,
        build_seconds: origin.build_seconds,
    })
}

/// Unpacks, configures and compiles in `tree`: the bzImage, the vmlinux, the resolved
/// config and the release.
fn build_in(
    recipe: &Recipe,
    version: &str,
    tree: &Path,
    progress: &dyn Progress,
) -> Result<(Vec<u8>, Vec<u8>, String, String), BootError> {
    let _ = std::fs::remove_dir_all(tree);
    std::fs::create_dir_all(tree).map_err(io(format!("creating {}", tree.display())))?;
    progress.step(&format!(
        "unpacking {SOURCE_PACKAGE} {version} into {}",
        tree.display()
    ));
    run(Command::new("tar")
        .arg("-xf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(tree)
        .arg("--strip-components=1"))?;
    let fragment = tree.join("vessel.config");
    std::fs::write(&fragment, &recipe.fragment).map_err(io("writing the config fragment"))?;
    progress.step(&format!(
        "configuring: allnoconfig + {}",
        recipe.fragment_name
    ));
    run(make(tree)
        .arg(format!("KCONFIG_ALLCONFIG={}", fragment.display()))
        .arg("allnoconfig"))?;
    let config = std::fs::read_to_string(tree.join(".config")).map_err(io("reading .config"))?;
    let missing = not_taken(&recipe.fragment, &config);
    if !missing.is_empty() {
        return Err(failed(format!(
            "the config fragment did not take (a dependency is missing or a name is wrong): {}",
            missing.join(" ")
        )));
    }
    progress.step(&format!("compiling with {} jobs", recipe.jobs));
    let start = Instant::now();
    let mut child = make(tree)
        .arg(format!("-j{}", recipe.jobs))
        .arg("bzImage")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("running make"))?;
    // Errors go to a bounded tail, shown if the build fails.
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let mut done = 0u64;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        // kbuild's short lines: "  CC      fs/ext4/inode.o".
        let mut words = line.split_whitespace();
        if let (Some(_verb), Some(file)) = (words.next(), words.next()) {
            done += 1;
            progress.compiled(done, file, start.elapsed());
        }
    }
    let status = child.wait().map_err(io("waiting for make"))?;
    progress.finish();
    let tail = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(format!("make bzImage failed ({status}):\n{tail}")));
    }
    let release = std::fs::read_to_string(tree.join("include/config/kernel.release"))
        .map_err(io("reading the kernel release"))?
        .trim()
        .to_string();
    let read = |p: &str| std::fs::read(tree.join(p)).map_err(io(format!("reading {p}")));
    Ok((
        read("arch/x86/boot/bzImage")?,
        read("vmlinux")?,
        config,
        release,
    ))
}

/// `make` in `tree` for x86_64, with the build's identity fixed (`uname -v` shows
/// `#1 SMP <date of the source>` and user `vessel@vessel` on every machine).
fn make(tree: &Path) -> Command {
    let mut c = Command::new("make");
    c.current_dir(tree)
        .arg("ARCH=x86_64")
        .arg("KBUILD_VERBOSE=0")
        .env("KBUILD_BUILD_USER", "vessel")
        .env("KBUILD_BUILD_HOST", "vessel")
        .env("KBUILD_BUILD_VERSION", "1")
        .env("KBUILD_BUILD_TIMESTAMP", build_timestamp())
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .stdin(Stdio::null());
    c
}

/// The source tarball's modification time, as `date` prints it: fixed for a given package
/// version.
fn build_timestamp() -> String {
    let mtime = std::fs::metadata(SOURCE_TARBALL)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    output_of("date", &["-u", "-d", &format!("@{mtime}")]).unwrap_or_else(|_| mtime.to_string())
}

fn run(cmd: &mut Command) -> Result<(), BootError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {:?}", cmd.get_program())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        return Err(failed(format!(
            "{:?} failed ({}):\n{}",
            cmd.get_program(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_sets_what_vessel_guests_need() {
        let syms: std::collections::HashMap<String, String> =
            fragment_symbols(FRAGMENT).into_iter().collect();
        for needed in [
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_VIRTIO_FS",
            "CONFIG_VIRTIO_NET",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_EXT4_FS",
            "CONFIG_OVERLAY_FS",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_SECCOMP_FILTER",
            "CONFIG_CGROUP_DEVICE",
            "CONFIG_PID_NS",
            "CONFIG_ACPI",
            "CONFIG_PVH",
            "CONFIG_KVM_GUEST",
        ] {
            assert_eq!(syms.get(needed).map(String::as_str), Some("y"), "{needed}");
        }
        // Modules are off by allnoconfig, and the fragment must not turn them on.
        assert!(!syms.contains_key("CONFIG_MODULES"));
    }

    #[test]
    fn a_dropped_line_is_reported() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C comment\nCONFIG_D=\"x\"\nCONFIG_E=n\n";
        let config = "CONFIG_A=y\nCONFIG_D=\"y\"\n# CONFIG_B is not set\nCONFIG_E=y\n";
        assert_eq!(
            not_taken(fragment, config),
            ["CONFIG_B=y", "CONFIG_D=\"x\"", "CONFIG_E=n"]
        );
    }

    #[test]
    fn the_key_follows_the_source_the_config_and_the_compiler() {
        let r = Recipe {
            fragment: FRAGMENT.into(),
            fragment_name: "x".into(),
            jobs: 2,
        };
        let k = key(&r, "6.1.192-3", "gcc 12");
        assert_eq!(k.len(), 16);
        assert_eq!(
            k,
            key(
                &Recipe {
                    jobs: 16,
                    ..r.clone()
                },
                "6.1.192-3",
                "gcc 12"
            )
        );
        assert_ne!(k, key(&r, "6.1.193-1", "gcc 12"));
        assert_ne!(k, key(&r, "6.1.192-3", "gcc 13"));
        let mut other = r.clone();
        other.fragment.push_str("CONFIG_X=y\n");
        assert_ne!(k, key(&other, "6.1.192-3", "gcc 12"));
    }
}
