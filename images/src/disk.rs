//! Turning an unpacked rootfs into an ext4 disk image for a VM.
//!
//! `mke2fs -d` copies a directory tree into a fresh filesystem without mounting
//! anything, so it needs no privileges beyond reading the tree. The image has no
//! journal: the VM attaches it read-only and writes go to a separate disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MIB: u64 = 1024 * 1024;
/// Smallest image made; ext4 metadata alone needs a couple of MiB.
const MIN_SIZE: u64 = 8 * MIB;

/// Why an ext4 image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// mke2fs is not installed.
    #[error("mke2fs not found in PATH, /usr/sbin or /sbin: install e2fsprogs (apt-get install e2fsprogs)")]
    MissingTool,
    /// mke2fs ran and failed.
    #[error("mke2fs failed ({status}) building {out} from {rootfs}: {stderr}")]
    Mke2fs {
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
        /// The image being built.
        out: String,
        /// The source tree.
        rootfs: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.display().to_string();
    move |source| DiskError::Io { op, path, source }
}

/// Builds an ext4 image of `rootfs` at `out` and returns its size in bytes.
///
/// The image is written beside `out` under a temporary name, fsynced and renamed
/// into place, so `out` is either absent, the old image, or complete.
pub fn build_ext4(rootfs: &Path, out: &Path) -> Result<u64, DiskError> {
    let mke2fs = find_tool("mke2fs").ok_or(DiskError::MissingTool)?;
    let usage = measure(rootfs)?;
    let size = image_size(&usage);
    let inodes = usage.inodes + usage.inodes / 5 + 64;

    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(out.file_name().unwrap_or_else(|| "disk.ext4".as_ref()));
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.set_len(size).map_err(io_err("sizing", &tmp))?;
        drop(f);
        let output = Command::new(&mke2fs)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args([
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0,nodiscard",
                "-L",
                "vessel-rootfs",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(rootfs)
            .arg(&tmp)
            .output()
            .map_err(io_err("running mke2fs for", &tmp))?;
        if !output.status.success() {
            return Err(DiskError::Mke2fs {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                out: out.display().to_string(),
                rootfs: rootfs.display().to_string(),
            });
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, out).map_err(io_err("renaming into place", out))?;
        // The rename itself is durable only once the directory is synced.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &dir))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What a tree needs on ext4, roughly: data blocks and inodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    blocks: u64,
    inodes: u64,
}

fn image_size(u: &Usage) -> u64 {
    let content = u.blocks * BLOCK + u.inodes * INODE_SIZE;
    // 20% headroom for extents, directories growing, group metadata; plus a
    // fixed margin for the superblock copies and bitmaps of a small image.
    let size = content + content / 5 + 4 * MIB;
    size.max(MIN_SIZE).div_ceil(MIB) * MIB
}

/// Walks the tree without following symlinks, counting each inode once.
fn measure(rootfs: &Path) -> Result<Usage, DiskError> {
    let mut usage = Usage::default();
    let mut seen = HashSet::new();
    let mut todo = vec![rootfs.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).map_err(io_err("reading", &p))?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        usage.inodes += 1;
        let ft = m.file_type();
        if ft.is_dir() {
            usage.blocks += m.len().div_ceil(BLOCK).max(1);
            for e in fs::read_dir(&p).map_err(io_err("listing", &p))? {
                todo.push(e.map_err(io_err("listing", &p))?.path());
            }
        } else if ft.is_symlink() {
            // Targets under 60 bytes live in the inode itself.
            if m.len() >= 60 {
                usage.blocks += 1;
            }
        } else if ft.is_file() {
            usage.blocks += m.len().div_ceil(BLOCK);
        }
    }
    Ok(usage)
}

/// `name` from PATH, else the sbin directories (often not on a user's PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tool(name: &str) -> Option<PathBuf> {
        let t = find_tool(name);
        if t.is_none() {
            eprintln!("SKIP: {name} not installed (e2fsprogs)");
        }
        t
    }

    fn debugfs(img: &Path, cmd: &str) -> String {
        let out = Command::new(tool("debugfs").unwrap())
            .args(["-R", cmd])
            .arg(img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debugfs {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn builds_checkable_image_with_content() {
        if tool("mke2fs").is_none() || tool("e2fsck").is_none() || tool("debugfs").is_none() {
            return;
        }
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "vessel\n").unwrap();
        fs::write(root.join("bin/tool"), vec![7u8; 300_000]).unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
        symlink("/etc/hostname", root.join("hn")).unwrap();
        for i in 0..200 {
            fs::write(root.join(format!("etc/f{i}")), format!("{i}")).unwrap();
        }
        let out = td.path().join("disks/img.ext4");
        fs::create_dir_all(out.parent().unwrap()).unwrap();

        let size = build_ext4(&root, &out).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().len(), size);
        assert!(size >= MIN_SIZE && size.is_multiple_of(MIB));
        // No temp file left beside it.
        let names: Vec<_> = fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("img.ext4")]);

        let fsck = Command::new(tool("e2fsck").unwrap())
            .arg("-fn")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let ls = debugfs(&out, "ls -l /");
        for name in ["bin", "etc", "hn"] {
            assert!(ls.contains(name), "{name} missing from:\n{ls}");
        }
        assert_eq!(debugfs(&out, "cat /etc/hostname"), "vessel\n");
        assert_eq!(debugfs(&out, "cat /etc/f199"), "199");
        let stat = debugfs(&out, "stat /bin/tool");
        assert!(stat.contains("Links: 2"), "{stat}");
        assert!(stat.contains("Mode:  04755"), "{stat}");
        assert!(stat.contains("Size: 300000"), "{stat}");
        assert!(debugfs(&out, "stat /hn").contains("Fast link dest: \"/etc/hostname\""));
        // Rebuilding replaces the image atomically.
        fs::write(root.join("etc/hostname"), "again\n").unwrap();
        build_ext4(&root, &out).unwrap();
        assert_eq!(debugfs(&out, "cat /etc/hostname"), "again\n");
    }

    #[test]
    fn size_grows_with_content() {
        let small = image_size(&Usage {
            blocks: 1,
            inodes: 1,
        });
        assert_eq!(small, MIN_SIZE);
        let big = image_size(&Usage {
            blocks: 100_000,
            inodes: 10_000,
        });
        assert!(big > 100_000 * BLOCK + 10_000 * INODE_SIZE);
        assert!(big < 2 * (100_000 * BLOCK + 10_000 * INODE_SIZE) + 8 * MIB);
    }

    #[test]
    fn missing_rootfs_is_a_clear_error() {
        let td = tempfile::tempdir().unwrap();
        let e = build_ext4(&td.path().join("nope"), &td.path().join("x.ext4")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(!td.path().join("x.ext4").exists());
    }

    #[test]
    fn mke2fs_failure_carries_stderr() {
        if tool("mke2fs").is_none() {
            return;
        }
        let td = tempfile::tempdir().unwrap();
        // A rootfs that is a file, not a directory: mke2fs -d refuses it.
        let bogus = td.path().join("file");
        fs::write(&bogus, "x").unwrap();
        let out = td.path().join("x.ext4");
        match build_ext4(&bogus, &out) {
            Err(DiskError::Mke2fs { stderr, .. }) => assert!(!stderr.is_empty()),
            other => panic!("expected mke2fs failure, got {other:?}"),
        }
        assert!(!out.exists());
        assert_eq!(
            fs::read_dir(td.path()).unwrap().count(),
            1,
            "temp image left behind"
        );
    }
}
