//! The kernel modules the guest needs, with their dependencies, read from a kernel's
//! modules directory (`lib/modules/<release>`).
//!
//! Dependencies come from each module's own `.modinfo` section (`depends=`), so a modules
//! directory without `modules.dep` (as a `.deb` extracts, before depmod runs) works too.
//! Compressed modules (`.ko.xz`, `.ko.zst`) are decompressed here: the guest kernel may
//! lack in-kernel decompression, and the agent loads plain ELF with `finit_module`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::BootError;

/// What VM mode needs: the virtio-mmio transport, the disks, the agent channel, overlayfs,
/// and the filesystem of the disks. Built-in ones are skipped.
pub const NEEDED: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "ext4",
    "overlay",
];

/// Loaded by the agent only for a container with volumes (`-v`): virtio-fs and what it
/// needs beyond [`NEEDED`].
pub const VOLUMES: &[&str] = &["virtiofs"];

/// Loaded by the agent only for a VM with a network card (the default network).
pub const NETWORK: &[&str] = &["virtio_net"];

/// One module ready to pack: its name and its uncompressed ELF.
pub struct Module {
    /// Module name (underscores).
    pub name: String,
    /// The `.ko` contents, decompressed.
    pub data: Vec<u8>,
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a file like `virtio-blk.ko.xz`.
fn module_name(file: &str) -> Option<String> {
    let base = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(normalize(base))
}

fn index(dir: &Path, map: &mut HashMap<String, PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => index(&path, map),
            Ok(t) if t.is_file() => {
                if let Some(name) = module_name(&e.file_name().to_string_lossy()) {
                    map.entry(name).or_insert(path);
                }
            }
            _ => {}
        }
    }
}

/// Names listed in `modules.builtin` (built into the kernel image).
fn builtin(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next().and_then(module_name))
        .collect()
}

/// The needed modules and their dependencies, dependencies first.
pub fn resolve(dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, BootError> {
    let mut files = HashMap::new();
    index(dir, &mut files);
    let builtin = builtin(dir);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for w in wanted {
        visit(&normalize(w), dir, &files, &builtin, &mut seen, &mut out, 0)?;
    }
    Ok(out)
}

fn visit(
    name: &str,
    dir: &Path,
    files: &HashMap<String, PathBuf>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    out: &mut Vec<Module>,
    depth: usize,
) -> Result<(), BootError> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        // Without modules.builtin there is no telling; assume the kernel has it built in.
        if !dir.join("modules.builtin").exists() {
            return Ok(());
        }
        return Err(BootError::MissingModule {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        });
    };
    let data = read_module(path)?;
    let deps = modinfo(&data, "depends").map_err(|reason| BootError::BadModule {
        path: path.clone(),
        reason,
    })?;
    for dep in deps
        .iter()
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
    {
        if depth > 32 {
            return Err(BootError::BadModule {
                path: path.clone(),
                reason: "dependency chain deeper than 32".into(),
            });
        }
        visit(&normalize(dep), dir, files, builtin, seen, out, depth + 1)?;
    }
    out.push(Module {
        name: name.to_string(),
        data,
    });
    Ok(())
}

/// Reads a module file, decompressing by extension.
fn read_module(path: &Path) -> Result<Vec<u8>, BootError> {
    let raw =
        std::fs::read(path).map_err(|e| BootError::io(format!("reading {}", path.display()), e))?;
    let bad = |reason: String| BootError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let name = path.to_string_lossy();
    let data = if name.ends_with(".xz") {
        let mut out = Vec::new();
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("xz: {e}")))?;
        out
    } else if name.ends_with(".zst") {
        zstd::stream::decode_all(&raw[..]).map_err(|e| bad(format!("zstd: {e}")))?
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if !data.starts_with(b"\x7fELF") {
        return Err(bad("not an ELF file".into()));
    }
    Ok(data)
}

/// Values of `key=` in the ELF64 `.modinfo` section.
fn modinfo(elf: &[u8], key: &str) -> Result<Vec<String>, String> {
    let u16_at = |o: usize| -> Result<u16, String> {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated ELF".to_string())
    };
    let u64_at = |o: usize| -> Result<u64, String> {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| "truncated ELF".to_string())
    };
    let u32_at = |o: usize| -> Result<u32, String> {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "truncated ELF".to_string())
    };
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 module".into());
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    if shentsize < 0x40 || shstrndx >= shnum {
        return Err("bad section header table".into());
    }
    let section = |i: usize| -> Result<(u32, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(h)?,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let bytes = |off: usize, size: usize| -> Result<&[u8], String> {
        elf.get(off..off.checked_add(size).ok_or("bad section size")?)
            .ok_or_else(|| "section outside the file".to_string())
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let prefix = format!("{key}=");
        return Ok(bytes(off, size)?
            .split(|&b| b == 0)
            .filter_map(|s| s.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect());
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "/var/cache/vessel/kernel/lib/modules";

    fn debian_modules() -> Option<PathBuf> {
        let dir = std::fs::read_dir(DEBIAN).ok()?.flatten().next()?.path();
        Some(dir)
    }

    #[test]
    fn names_from_file_names() {
        assert_eq!(
            module_name("virtio-blk.ko.xz").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_name("overlay.ko").as_deref(), Some("overlay"));
        assert_eq!(module_name("modules.dep"), None);
    }

    #[test]
    fn garbage_is_not_a_module() {
        assert!(modinfo(b"\x7fELF\x02\x01", "depends").is_err());
        assert!(modinfo(&[0u8; 3], "depends").is_err());
    }

    #[test]
    fn resolves_debian_virtio_stack_dependencies_first() {
        let Some(dir) = debian_modules() else {
            eprintln!("SKIP: no Debian kernel modules at {DEBIAN} (run scripts/setup.sh)");
            return;
        };
        let mods = resolve(&dir, NEEDED).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
        };
        assert!(pos("virtio") < pos("virtio_mmio"));
        assert!(pos("virtio_ring") < pos("virtio_blk"));
        assert!(pos("virtio_ring") < pos("virtio_console"));
        assert!(names.contains(&"overlay"));
        // ext4 is built into Debian's cloud kernel.
        assert!(!names.contains(&"ext4"));
    }

    #[test]
    fn xz_modules_decompress() {
        let Some(dir) = debian_modules() else {
            eprintln!("SKIP: no Debian kernel modules at {DEBIAN}");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let src = std::fs::read(dir.join("kernel/drivers/virtio/virtio.ko")).unwrap();
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&src[..], 1)
            .read_to_end(&mut xz)
            .unwrap();
        std::fs::write(tmp.path().join("virtio.ko.xz"), &xz).unwrap();
        let zst = zstd::stream::encode_all(&src[..], 1).unwrap();
        std::fs::write(tmp.path().join("virtio_ring.ko.zst"), zst).unwrap();
        std::fs::write(tmp.path().join("modules.builtin"), "").unwrap();
        let mods = resolve(tmp.path(), &["virtio"]).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio"]);
        assert_eq!(mods[1].data, src);
        assert!(mods[0].data.starts_with(b"\x7fELF"));
    }
}
