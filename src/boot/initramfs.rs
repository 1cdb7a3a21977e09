//! Packing the guest's initramfs: the agent as `/init`, the modules it loads, and the
//! few nodes the kernel needs before devtmpfs. Cached under the state root per kernel and
//! agent, so a run pays for packing only once.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::cpio::CpioWriter;
use super::kernel::Kernel;
use super::{agent, modules, BootError};

/// Bumped whenever the archive's layout changes, so old caches are not reused.
const FORMAT: u32 = 3;

/// A packed initramfs.
pub struct Initramfs {
    /// The cpio archive.
    pub path: PathBuf,
    /// The agent binary inside it.
    pub agent: PathBuf,
}

/// The cached initramfs for `kernel`, packing it first if needed.
pub fn prepare(root: &Path, kernel: &Kernel) -> Result<Initramfs, BootError> {
    let agent = agent::find()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    FORMAT.hash(&mut h);
    agent.hash(&mut h);
    super::file_stamp(&agent).hash(&mut h);
    kernel.modules.hash(&mut h);
    if let Some(m) = &kernel.modules {
        super::file_stamp(m).hash(&mut h);
    }
    modules::NEEDED.hash(&mut h);
    modules::VOLUMES.hash(&mut h);
    modules::NETWORK.hash(&mut h);
    let dir = super::cache_dir(root);
    let path = dir.join(format!("initramfs-{:016x}.cpio", h.finish()));
    if path.is_file() {
        return Ok(Initramfs { path, agent });
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| BootError::io(format!("creating {}", dir.display()), e))?;
    // Every VM loads `order`; one with volumes also loads `volumes.order`, one with a
    // network card `network.order`: what each needs beyond `order`.
    let lists: Vec<(&str, Vec<modules::Module>)> = match &kernel.modules {
        Some(m) => {
            let boot = modules::resolve(m, modules::NEEDED)?;
            let mut lists = Vec::new();
            for (list, wanted) in [
                ("volumes.order", modules::VOLUMES),
                ("network.order", modules::NETWORK),
            ] {
                let all: Vec<&str> = modules::NEEDED.iter().chain(wanted).copied().collect();
                let extra = modules::resolve(m, &all)?
                    .into_iter()
                    .filter(|x| !boot.iter().any(|b| b.name == x.name))
                    .collect();
                lists.push((list, extra));
            }
            lists.insert(0, ("order", boot));
            lists
        }
        None => Vec::new(),
    };
    let agent_bin = std::fs::read(&agent)
        .map_err(|e| BootError::io(format!("reading {}", agent.display()), e))?;
    let tmp = dir.join(format!(".initramfs-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(file));
        for d in ["dev", "proc", "sys", "run", "tmp"] {
            w.dir(d, 0o755)?;
        }
        // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
        w.char_dev("dev/console", 0o600, 5, 1)?;
        w.file("init", 0o755, &agent_bin)?;
        // A kernel without modules (vessel's own) gets the agent alone: no lists to read.
        if kernel.modules.is_some() {
            w.dir("modules", 0o755)?;
            let mut packed = std::collections::HashSet::new();
            for (list, set) in &lists {
                let mut order = String::new();
                for m in set {
                    let name = format!("{}.ko", m.name);
                    if packed.insert(name.clone()) {
                        w.file(&format!("modules/{name}"), 0o644, &m.data)?;
                    }
                    order.push_str(&name);
                    order.push('\n');
                }
                w.file(&format!("modules/{list}"), 0o644, order.as_bytes())?;
            }
        }
        let mut out = w.finish()?;
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BootError::io(format!("writing {}", tmp.display()), e));
    }
    std::fs::rename(&tmp, &path)
        .map_err(|e| BootError::io(format!("installing {}", path.display()), e))?;
    Ok(Initramfs { path, agent })
}
