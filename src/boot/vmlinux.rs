//! The guest kernel as an ELF `vmlinux`, unpacked once from its bzImage and cached.
//!
//! A bzImage is a small decompressor in front of the compressed kernel. Booted as is, the
//! guest spends its first moments decompressing (and relocating) some 50 MB before Linux
//! proper starts: about 0.6 s of every boot on the built-in VMM under the nested KVM, and
//! 0.25 s under TCG (docs/benchmarks.md). Both VMMs can instead load an ELF vmlinux and
//! enter it through its PVH entry point, as Firecracker does, so vessel unpacks the
//! payload on the host once per kernel and boots that. What is lost is the decompressor's
//! randomisation of the kernel's physical and virtual base (KASLR of the kernel text; the
//! kernel still randomises its memory regions itself): docs/vm-mode.md says so.
//!
//! A kernel that is already an ELF is used as it is. One whose payload vessel cannot
//! unpack (bzip2, lzma, lzo) or that has no PVH entry point is booted as a bzImage, and
//! so is every kernel with `VESSEL_KERNEL_UNPACK=0` (keeping the decompressor's KASLR).

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::BootError;

/// Bumped whenever the unpacking changes, so old caches are not reused.
const FORMAT: u32 = 1;
/// The largest vmlinux accepted: a bound on what a corrupt size field can make us allocate.
const MAX_VMLINUX: usize = 512 << 20;
/// ELF note type of the 32-bit PVH entry point (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The compressions a bzImage payload may use, by the magic it starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// xz (`CONFIG_KERNEL_XZ`).
    Xz,
    /// zstd (`CONFIG_KERNEL_ZSTD`).
    Zstd,
    /// LZ4 in its legacy frame format (`CONFIG_KERNEL_LZ4`, Debian's choice).
    Lz4Legacy,
    /// bzip2, lzma or lzo: not unpacked by vessel.
    Other,
}

impl Compression {
    fn detect(payload: &[u8]) -> Compression {
        match payload {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4Legacy,
            _ => Compression::Other,
        }
    }
}

/// The compressed kernel inside a bzImage (`payload_offset`/`payload_length`, boot
/// protocol 2.08+), or `None` when `image` is not such a bzImage.
pub fn payload(image: &[u8]) -> Option<&[u8]> {
    let hdr = image.get(..0x250)?;
    if &hdr[0x202..0x206] != b"HdrS" || u16::from_le_bytes([hdr[0x206], hdr[0x207]]) < 0x208 {
        return None;
    }
    let setup_sects = match hdr[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let le32 = |at: usize| u32::from_le_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
    let start = (setup_sects + 1) * 512 + le32(0x248) as usize;
    image.get(start..start.checked_add(le32(0x24c) as usize)?)
}

/// Decompresses LZ4's legacy frame format: a magic, then blocks, each a little-endian
/// compressed length and an LZ4 block of at most 8 MiB of output. The kernel's build
/// appends the uncompressed size after the last block, which ends the walk.
fn lz4_legacy(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = 8 << 20;
    let mut out = Vec::new();
    let mut at = 4;
    while let Some(len) = data.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        if len == MAGIC {
            at += 4; // concatenated streams
            continue;
        }
        let Some(block) = data.get(at + 4..at + 4 + len as usize) else {
            break; // the trailing size field, or the end
        };
        let from = out.len();
        if from + BLOCK > limit {
            return Err(format!("unpacks to more than {} MiB", limit >> 20));
        }
        out.resize(from + BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[from..])
            .map_err(|e| format!("LZ4 block at byte {at}: {e}"))?;
        out.truncate(from + n);
        at += 4 + len as usize;
    }
    Ok(out)
}

fn read_bounded(r: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!("unpacks to more than {} MiB", limit >> 20));
    }
    Ok(out)
}

/// Unpacks a bzImage payload; `Ok(None)` for compressions vessel does not unpack.
pub fn decompress(payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let limit = MAX_VMLINUX;
    let out = match Compression::detect(payload) {
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(payload), limit)?,
        // liblzma reads the size the build appends as a damaged second stream.
        Compression::Xz => {
            let stream = &payload[..payload.len().saturating_sub(4)];
            read_bounded(xz2::read::XzDecoder::new(stream), limit)?
        }
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::new(payload).map_err(|e| e.to_string())?;
            read_bounded(d.single_frame(), limit)?
        }
        Compression::Lz4Legacy => lz4_legacy(payload, limit)?,
        Compression::Other => return Ok(None),
    };
    Ok(Some(out))
}

/// Whether `elf` is a 64-bit x86 ELF with a PVH entry point note, the form both VMMs boot.
pub fn is_pvh_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELFCLASS64, little-endian, EM_X86_64.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") || u16_at(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return false;
        };
        let (mut at, end) = (off as usize, off.saturating_add(size) as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                return false;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0") {
                return true;
            }
            let pad = |n: u32| (n as usize).div_ceil(4) * 4;
            at += 12 + pad(namesz) + pad(descsz);
        }
    }
    false
}

/// The image to boot for `image`: an ELF vmlinux with a PVH entry point (unpacked from the
/// bzImage and cached in [`super::cache_dir`]), or `image` itself when it cannot be had.
pub fn boot_image(root: &Path, image: &Path) -> Result<PathBuf, BootError> {
    if std::env::var_os("VESSEL_KERNEL_UNPACK").is_some_and(|v| v == "0") {
        return Ok(image.to_path_buf());
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    FORMAT.hash(&mut h);
    image.hash(&mut h);
    super::file_stamp(image).hash(&mut h);
    let dir = super::cache_dir(root);
    let cached = dir.join(format!("vmlinux-{:016x}", h.finish()));
    // A kernel that cannot be unpacked is remembered too, so that runs do not retry.
    let unusable = cached.with_extension("bzimage-only");
    if cached.is_file() {
        return Ok(cached);
    }
    if unusable.exists() {
        return Ok(image.to_path_buf());
    }
    let data = std::fs::read(image)
        .map_err(|e| BootError::io(format!("reading {}", image.display()), e))?;
    if is_pvh_elf(&data) {
        return Ok(image.to_path_buf());
    }
    let elf = match payload(&data).map(decompress) {
        Some(Ok(Some(elf))) if is_pvh_elf(&elf) => Some(elf),
        Some(Err(reason)) => {
            return Err(BootError::BadKernel {
                path: image.to_path_buf(),
                reason: format!("unpacking its compressed kernel: {reason}"),
            })
        }
        _ => None,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| BootError::io(format!("creating {}", dir.display()), e))?;
    let (target, bytes): (&Path, &[u8]) = match &elf {
        Some(elf) => (&cached, elf),
        None => (&unusable, b""),
    };
    let tmp = dir.join(format!(".vmlinux-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BootError::io(format!("writing {}", target.display()), e));
    }
    Ok(match elf {
        Some(_) => cached,
        None => image.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "/var/cache/vessel/kernel/vmlinuz";

    #[test]
    fn debians_bzimage_unpacks_to_a_pvh_elf() {
        let Ok(data) = std::fs::read(DEBIAN) else {
            eprintln!("SKIP: no Debian kernel at {DEBIAN} (run scripts/setup.sh)");
            return;
        };
        let p = payload(&data).expect("a bzImage payload");
        assert_eq!(Compression::detect(p), Compression::Lz4Legacy);
        let elf = decompress(p).unwrap().unwrap();
        // The build appends the uncompressed size after the compressed data.
        let size = u32::from_le_bytes(p[p.len() - 4..].try_into().unwrap());
        assert_eq!(elf.len(), size as usize);
        assert!(is_pvh_elf(&elf));
        assert!(!is_pvh_elf(&data));
    }

    #[test]
    fn boot_image_is_cached_and_garbage_is_booted_as_given() {
        let root = tempfile::tempdir().unwrap();
        let junk = root.path().join("junk");
        std::fs::write(&junk, vec![7u8; 4096]).unwrap();
        assert_eq!(boot_image(root.path(), &junk).unwrap(), junk);
        // Remembered: the second call does not read the file again.
        std::fs::write(&junk, vec![7u8; 4096]).unwrap();
        assert_eq!(boot_image(root.path(), &junk).unwrap(), junk);
        if std::fs::metadata(DEBIAN).is_err() {
            eprintln!("SKIP: no Debian kernel at {DEBIAN} (run scripts/setup.sh)");
            return;
        }
        let elf = boot_image(root.path(), Path::new(DEBIAN)).unwrap();
        assert!(elf.starts_with(root.path().join("boot")));
        assert!(is_pvh_elf(&std::fs::read(&elf).unwrap()));
        assert_eq!(boot_image(root.path(), Path::new(DEBIAN)).unwrap(), elf);
        // An ELF is booted as it is.
        assert_eq!(boot_image(root.path(), &elf).unwrap(), elf);
    }

    #[test]
    fn each_compression_round_trips() {
        let elf = b"\x7fELF pretend kernel".repeat(1000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&elf).unwrap();
            e.finish().unwrap()
        };
        let xz = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&elf).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&elf[..], 1).unwrap();
        let lz4 = {
            let block = lz4_flex::block::compress(&elf);
            let mut v = 0x184c_2102u32.to_le_bytes().to_vec();
            v.extend((block.len() as u32).to_le_bytes());
            v.extend(&block);
            v
        };
        for (name, mut packed) in [("gzip", gz), ("xz", xz), ("zstd", zst), ("lz4", lz4)] {
            // As the kernel's build does: the uncompressed size after the stream.
            packed.extend((elf.len() as u32).to_le_bytes());
            assert_eq!(
                decompress(&packed).unwrap().as_deref(),
                Some(&elf[..]),
                "{name}"
            );
        }
        assert_eq!(decompress(b"BZh91AY&SY").unwrap(), None);
    }

    #[test]
    fn hostile_payloads_fail_cleanly() {
        // A truncated LZ4 block and a bogus gzip stream are errors, not panics.
        let mut lz4 = 0x184c_2102u32.to_le_bytes().to_vec();
        lz4.extend(100u32.to_le_bytes());
        lz4.extend([0xffu8; 100]);
        assert!(decompress(&lz4).is_err());
        assert!(decompress(&[0x1f, 0x8b, 8, 0, 0, 0]).is_err());
        // Headers that point outside the file.
        let mut hdr = vec![0u8; 0x250];
        hdr[0x202..0x206].copy_from_slice(b"HdrS");
        hdr[0x206] = 0x0f;
        hdr[0x207] = 0x02;
        hdr[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&hdr).is_none());
        assert!(!is_pvh_elf(b"\x7fELF\x02\x01\0\0"));
    }
}
