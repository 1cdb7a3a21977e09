//! Confined layer extraction: applies one uncompressed layer tar onto a rootfs.
//!
//! This is our own extractor, not `tar::Archive::unpack`, because a layer is
//! hostile input. The rules (docs/images.md, "Unpack safety"):
//! - Entry names are cleaned lexically: a leading `/` is dropped (docker treats
//!   absolute names as relative to the root), `.` is skipped, and a `..` that
//!   would climb above the root refuses the entry.
//! - Every parent directory is resolved inside the rootfs as if it were `/`
//!   (openat2 `RESOLVE_IN_ROOT`, or an equivalent walk): symlinks from this or
//!   lower layers are followed the way the container will see them and can never
//!   lead outside. The final component is never followed: it is replaced.
//! - Metadata is set through file descriptors of the objects created here, or
//!   with `AT_SYMLINK_NOFOLLOW`, so no chmod/chown/utimes goes through a symlink.
//! - Whiteouts (`.wh.NAME`) remove NAME from lower layers; an opaque marker
//!   (`.wh..wh..opq`) empties its directory of lower-layer content. Neither
//!   removes what this same layer created, as the OCI layer spec requires.
//! - Hardlink targets are resolved from the rootfs root and must exist inside it
//!   (this or a lower layer); the link is made to the target itself, never
//!   through a symlink in its last component.

mod resolve;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use tar::EntryType;

use resolve::{make_dir_all_in_root, open_dir_in_root, Resolver};

/// Prefix of a whiteout entry's base name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Base name of the entry that marks its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of docker's aufs metadata entries at the top of old layers.
const AUFS_META_PREFIX: &str = ".wh..wh.";
/// The aufs directory holding hardlink targets.
const AUFS_LINK_DIR: &str = ".wh..wh.plnk";

/// What an unpack may do beyond files, directories and links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Set owners from the headers (needs root). When false, everything is owned
    /// by the caller and setuid/setgid bits are dropped.
    pub preserve_ownership: bool,
    /// Create character and block devices (needs root); when false they are
    /// skipped and counted in [`LayerStats::skipped_devices`].
    pub create_devices: bool,
    /// Restore extended attributes from PAX `SCHILY.xattr.*` records, where the
    /// filesystem and our privileges allow; refusals are counted, not fatal.
    pub xattrs: bool,
}

impl Default for UnpackOptions {
    /// Everything on as root, a rootless-friendly subset otherwise.
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            preserve_ownership: root,
            create_devices: root,
            xattrs: true,
        }
    }
}

/// Counts of what one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries read (PAX and GNU long-name headers not counted).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Character/block devices and fifos created.
    pub devices: u64,
    /// Device nodes skipped because [`UnpackOptions::create_devices`] is off.
    pub skipped_devices: u64,
    /// Whiteouts applied (including ones with nothing to remove).
    pub whiteouts: u64,
    /// Opaque markers applied.
    pub opaque_dirs: u64,
    /// Extended attributes the filesystem or our privileges refused.
    pub skipped_xattrs: u64,
    /// Entry types we do not extract (e.g. GNU volume labels), skipped.
    pub skipped_other: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Why a layer could not be applied. Entry-specific errors name the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A hostile or malformed entry, refused before anything was done for it.
    #[error("layer entry {entry:?} refused: {reason}")]
    Refused {
        /// The entry's name as stored in the tar.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A filesystem operation for an entry failed.
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        /// The entry's name as stored in the tar.
        entry: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The tar stream itself is unreadable (corrupt, truncated, I/O error).
    #[error("reading layer tar: {0}")]
    Tar(io::Error),
    /// The rootfs directory cannot be opened.
    #[error("opening rootfs {path}: {source}")]
    Root {
        /// The rootfs path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Applies one uncompressed layer tar stream onto `rootfs`, which must exist.
///
/// The stream is read up to the tar end-of-archive marker; a caller hashing it
/// for the diff_id should drain the rest (see `digest::HashingReader::finish`).
pub fn apply_layer(
    rootfs: &Path,
    tar: impl Read,
    opts: &UnpackOptions,
) -> Result<LayerStats, UnpackError> {
    let root = open_root(rootfs)?;
    let how = Resolver::detect(root.as_fd());
    apply_with(root, tar, opts, how)
}

fn open_root(rootfs: &Path) -> Result<OwnedFd, UnpackError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(rootfs, flags, Mode::empty()).map_err(|e| UnpackError::Root {
        path: rootfs.display().to_string(),
        source: e.into(),
    })
}

fn apply_with(
    root: OwnedFd,
    tar: impl Read,
    opts: &UnpackOptions,
    how: Resolver,
) -> Result<LayerStats, UnpackError> {
    let mut ex = Extractor {
        root,
        how,
        opts: opts.clone(),
        stats: LayerStats::default(),
        created: HashSet::new(),
        dir_meta: Vec::new(),
        restore: Vec::new(),
        aufs_links: false,
        buf: vec![0; 256 * 1024],
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(UnpackError::Tar)?;
    for entry in entries {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        ex.entry(&mut entry)?;
    }
    if ex.aufs_links {
        // The hardlinks into it are made; the directory itself is not image content.
        remove_all(ex.root.as_fd(), AUFS_LINK_DIR.as_bytes()).map_err(|e| UnpackError::Io {
            entry: AUFS_LINK_DIR.to_string(),
            op: "removing aufs hardlink directory",
            source: e.into(),
        })?;
    }
    ex.finish_dirs()?;
    Ok(ex.stats)
}

/// A directory's mode and times, applied after the whole layer so that files
/// created inside it do not disturb its mtime and a read-only mode does not
/// stop them being created.
struct DirMeta {
    path: Vec<Vec<u8>>,
    name: String,
    mode: u32,
    times: Option<Timestamps>,
}

struct Extractor {
    root: OwnedFd,
    how: Resolver,
    opts: UnpackOptions,
    stats: LayerStats,
    /// Cleaned paths this layer created, which its own whiteouts must not remove.
    created: HashSet<Vec<Vec<u8>>>,
    dir_meta: Vec<DirMeta>,
    /// Modes of lower-layer directories made writable for this layer, put back at its end.
    restore: Vec<DirMeta>,
    /// Whether this layer wrote an aufs `.wh..wh.plnk` directory to remove at its end.
    aufs_links: bool,
    /// Copy buffer for file contents, reused across entries.
    buf: Vec<u8>,
}

/// What a header asks for, read out of the tar entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn refused(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn io_err<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

/// Cleans a tar name into components: drops a leading `/`, `.` and empty parts,
/// and applies `..` lexically, refusing one that climbs above the root.
fn clean(raw: &[u8], entry: &str, what: &str) -> Result<Vec<Vec<u8>>, UnpackError> {
    if raw.contains(&0) {
        return Err(refused(entry, format!("{what} contains a NUL byte")));
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(refused(
                        entry,
                        format!("{what} climbs above the root with '..'"),
                    ));
                }
            }
            p => out.push(p.to_vec()),
        }
    }
    Ok(out)
}

fn as_slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|c| c.as_slice()).collect()
}

impl Extractor {
    fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let kind = entry.header().entry_type();
        match kind {
            EntryType::XGlobalHeader | EntryType::XHeader => return Ok(()),
            EntryType::GNULongName | EntryType::GNULongLink => return Ok(()),
            _ => {}
        }
        self.stats.entries += 1;
        let path = clean(&raw_name, &name, "name")?;

        // Layers exported from docker's aufs driver carry its metadata at the top:
        // `.wh..wh.aufs`, `.wh..wh.orph/`, and `.wh..wh.plnk/` whose files are the
        // targets of the layer's hardlinks. Like docker, keep only the latter, and
        // only until the end of the layer.
        let first = path.first().map(|c| c.as_slice());
        if let Some(top) = first.filter(|c| {
            c.starts_with(AUFS_META_PREFIX.as_bytes()) && *c != OPAQUE_MARKER.as_bytes()
        }) {
            let keep = top == AUFS_LINK_DIR.as_bytes()
                && (path.len() == 1 && kind == EntryType::Directory
                    || path.len() == 2 && kind == EntryType::Regular);
            if !keep {
                self.stats.skipped_other += 1;
                return Ok(());
            }
            let meta = self.meta(entry, &name)?;
            let p = self.make_parents(&path[..path.len() - 1], &name)?;
            let base = path[path.len() - 1].as_slice();
            self.clear_for(p.as_fd(), base, kind == EntryType::Directory, &name)?;
            if kind == EntryType::Directory {
                self.directory(p.as_fd(), base, &meta, &name)?;
            } else {
                self.regular(p.as_fd(), base, entry, &meta, &name)?;
            }
            self.aufs_links = true;
            return Ok(());
        }

        // Whiteout prefixes are only meaningful on the last component.
        if let Some(dir) = path[..path.len().saturating_sub(1)]
            .iter()
            .find(|c| c.starts_with(WHITEOUT_PREFIX.as_bytes()))
        {
            return Err(refused(
                &name,
                format!(
                    "whiteout prefix on a directory component ({:?}); whiteout names cannot contain '/'",
                    String::from_utf8_lossy(dir)
                ),
            ));
        }
        let last = path.last().map(|c| c.as_slice()).unwrap_or(b"");
        if last == OPAQUE_MARKER.as_bytes() {
            return self.opaque(&path[..path.len() - 1], &name);
        }
        // `.wh..` and `.wh...` survive cleaning (they are not `.` or `..`), so the
        // whiteouts of `.` and `..` are caught here.
        if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(refused(&name, "whiteout of the root, '.' or '..'"));
            }
            let target = target.to_vec();
            return self.whiteout(&path, &target, &name);
        }

        let Some((base, parent)) = path.split_last() else {
            if kind == EntryType::Directory {
                // `./` entries carry the root directory's own metadata.
                let meta = self.meta(entry, &name)?;
                return self.root_dir(meta, &name);
            }
            return Err(refused(&name, "a non-directory cannot replace the root"));
        };
        let meta = self.meta(entry, &name)?;
        let parent_fd = self.make_parents(parent, &name)?;
        let p = parent_fd.as_fd();
        let base = base.as_slice();
        self.ensure_writable(p, parent);

        // A hardlink to its own name would delete its target; there is nothing to do.
        if kind == EntryType::Link {
            let target = self.link_target(entry, &name)?;
            if target == path {
                return Ok(());
            }
            self.clear_for(p, base, false, &name)?;
            self.hardlink(p, base, &target, &name)?;
            self.created.insert(path);
            return Ok(());
        }

        let is_dir = kind == EntryType::Directory;
        self.clear_for(p, base, is_dir, &name)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(p, base, entry, &meta, &name)?
            }
            EntryType::Directory => {
                self.directory(p, base, &meta, &name)?;
                self.dir_meta.push(DirMeta {
                    path: path.clone(),
                    name: name.clone(),
                    mode: meta.mode,
                    times: Some(meta.times),
                });
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(&name, "symlink without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(refused(&name, "symlink target is empty or has a NUL byte"));
                }
                // Stored as-is: a symlink may point anywhere, it is only never followed here.
                rustix::fs::symlinkat(target.as_ref(), p, base)
                    .map_err(io_err(&name, "creating symlink"))?;
                self.owner_at(p, base, &meta, &name)?;
                rustix::fs::utimensat(p, base, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err(&name, "setting symlink times"))?;
                self.stats.symlinks += 1;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.node(p, base, entry, kind, &meta, &name)?
            }
            _ => {
                self.stats.skipped_other += 1;
                return Ok(());
            }
        }
        self.created.insert(path);
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, UnpackError> {
        let h = entry.header();
        let bad = |what: &'static str| {
            move |e: io::Error| refused(name, format!("bad {what} in header: {e}"))
        };
        // Blank numeric fields read as 0, as Go's archive/tar (which wrote most
        // layers) reads them; anything else unparsable is refused.
        let old = h.as_old();
        let mut mode = or_blank(h.mode(), &old.mode).map_err(bad("mode"))? & 0o7777;
        let mut uid = or_blank(h.uid(), &old.uid).map_err(bad("uid"))?;
        let mut gid = or_blank(h.gid(), &old.gid).map_err(bad("gid"))?;
        let mtime = or_blank(h.mtime(), &old.mtime).map_err(bad("mtime"))?;
        let mut mtime = Timespec {
            tv_sec: mtime as i64,
            tv_nsec: 0,
        };
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Tar)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Tar)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => uid = text.parse().map_err(|_| refused(name, "bad PAX uid"))?,
                    "gid" => gid = text.parse().map_err(|_| refused(name, "bad PAX gid"))?,
                    "mtime" => mtime = pax_time(text).unwrap_or(mtime),
                    "atime" => atime = pax_time(text),
                    _ => {
                        if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((x.as_bytes().to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| refused(name, "uid out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| refused(name, "gid out of range"))?;
        if !self.opts.preserve_ownership {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }

    /// Opens the parent directory, creating missing directories (mode 0755) on
    /// the way, every step resolved inside the root.
    fn make_parents(&self, parent: &[Vec<u8>], name: &str) -> Result<OwnedFd, UnpackError> {
        let comps = as_slices(parent);
        match open_dir_in_root(self.root(), &comps, self.how) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(UnpackError::Io {
                    entry: name.to_string(),
                    op: "opening parent directory",
                    source: e,
                })
            }
        }
        // Create what is missing, following symlinks inside the root so that a
        // dangling link (say /var/run -> /run) gets its target made, as docker does.
        make_dir_all_in_root(self.root(), &comps).map_err(|source| UnpackError::Io {
            entry: name.to_string(),
            op: "creating parent directories",
            source,
        })
    }

    /// Removes whatever is at `base` unless both it and the new entry are
    /// directories (which merge), as docker does.
    fn clear_for(
        &self,
        p: BorrowedFd<'_>,
        base: &[u8],
        new_is_dir: bool,
        name: &str,
    ) -> Result<(), UnpackError> {
        let st = match rustix::fs::statat(p, base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io_err(name, "inspecting existing entry")(e)),
        };
        let existing_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if existing_dir && new_is_dir {
            return Ok(());
        }
        remove_all(p, base).map_err(io_err(name, "replacing existing entry"))
    }

    fn regular<R: Read>(
        &mut self,
        p: BorrowedFd<'_>,
        base: &[u8],
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(p, base, flags, Mode::from_raw_mode(0o600))
            .map_err(io_err(name, "creating file"))?;
        let mut file = std::fs::File::from(fd);
        let want = entry.size();
        let mut n = 0u64;
        loop {
            let k = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Corrupt compression or a cut stream: the layer's fault.
                Err(e) => return Err(UnpackError::Tar(e)),
            };
            file.write_all(&self.buf[..k])
                .map_err(|source| UnpackError::Io {
                    entry: name.to_string(),
                    op: "writing file",
                    source,
                })?;
            n += k as u64;
        }
        // GNU sparse entries expand beyond their stored size; others must match it.
        if n != want && entry.header().entry_type() != EntryType::GNUSparse {
            return Err(UnpackError::Tar(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {name:?} ends after {n} of {want} bytes"),
            )));
        }
        self.stats.bytes += n;
        self.fd_meta(file.as_fd(), meta, name)?;
        self.stats.files += 1;
        Ok(())
    }

    fn directory(
        &mut self,
        p: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        match rustix::fs::mkdirat(p, base, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err(name, "creating directory")(e)),
        }
        let fd = open_dir_nofollow(p, base).map_err(io_err(name, "opening directory"))?;
        // Owner and xattrs now; mode and times once the layer is done.
        if self.opts.preserve_ownership {
            rustix::fs::fchown(
                &fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_err(name, "setting owner"))?;
        }
        self.fd_xattrs(fd.as_fd(), meta);
        self.stats.dirs += 1;
        Ok(())
    }

    fn root_dir(&mut self, meta: Meta, name: &str) -> Result<(), UnpackError> {
        if self.opts.preserve_ownership {
            rustix::fs::fchown(
                &self.root,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_err(name, "setting owner"))?;
        }
        let fd = rustix::io::dup(&self.root).map_err(io_err(name, "opening root"))?;
        self.fd_xattrs(fd.as_fd(), &meta);
        self.dir_meta.push(DirMeta {
            path: Vec::new(),
            name: name.to_string(),
            mode: meta.mode,
            times: Some(meta.times),
        });
        self.stats.dirs += 1;
        Ok(())
    }

    fn node<R: Read>(
        &mut self,
        p: BorrowedFd<'_>,
        base: &[u8],
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        let ft = match kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if ft != FileType::Fifo && !self.opts.create_devices {
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let h = entry.header();
        let bad = |e: io::Error| refused(name, format!("bad device number: {e}"));
        let major = h.device_major().map_err(bad)?.unwrap_or(0);
        let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
        let dev = rustix::fs::makedev(major, minor);
        rustix::fs::mknodat(p, base, ft, Mode::from_raw_mode(0o600), dev)
            .map_err(io_err(name, "creating device node"))?;
        self.owner_at(p, base, meta, name)?;
        // chmodat has no NOFOLLOW on Linux; `base` is the node just made by
        // mknodat in this directory fd, and nothing else writes the tree.
        rustix::fs::chmodat(p, base, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(io_err(name, "setting mode"))?;
        rustix::fs::utimensat(p, base, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(name, "setting times"))?;
        self.stats.devices += 1;
        Ok(())
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Vec<Vec<u8>>, UnpackError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| refused(name, "hardlink without a target"))?;
        let target = clean(&raw, name, "hardlink target")?;
        if target.is_empty() {
            return Err(refused(name, "hardlink to the root directory"));
        }
        Ok(target)
    }

    fn hardlink(
        &mut self,
        p: BorrowedFd<'_>,
        base: &[u8],
        target: &[Vec<u8>],
        name: &str,
    ) -> Result<(), UnpackError> {
        let Some((tbase, tparent)) = target.split_last() else {
            return Err(refused(name, "hardlink to the root directory"));
        };
        let tdir =
            open_dir_in_root(self.root(), &as_slices(tparent), self.how).map_err(|source| {
                UnpackError::Io {
                    entry: name.to_string(),
                    op: "resolving hardlink target",
                    source,
                }
            })?;
        let st = rustix::fs::statat(&tdir, tbase.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(name, "resolving hardlink target"))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(refused(name, "hardlink to a directory"));
        }
        // No AT_SYMLINK_FOLLOW: a hardlink to a symlink links the symlink itself,
        // and the header's owner/mode/times are not applied to the shared inode.
        rustix::fs::linkat(&tdir, tbase.as_slice(), p, base, AtFlags::empty())
            .map_err(io_err(name, "creating hardlink"))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout(&mut self, path: &[Vec<u8>], target: &[u8], name: &str) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let parent = &path[..path.len() - 1];
        let mut victim = parent.to_vec();
        victim.push(target.to_vec());
        if self.created.contains(&victim) {
            // Whiteouts hide lower layers only.
            return Ok(());
        }
        let dir = match open_dir_in_root(self.root(), &as_slices(parent), self.how) {
            Ok(d) => d,
            // Nothing below to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(source) => {
                return Err(UnpackError::Io {
                    entry: name.to_string(),
                    op: "resolving whiteout directory",
                    source,
                })
            }
        };
        let times = dir_times(&dir);
        self.ensure_writable(dir.as_fd(), parent);
        match remove_all(dir.as_fd(), target) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err(name, "applying whiteout")(e)),
        }
        restore_times(&dir, times);
        Ok(())
    }

    fn opaque(&mut self, dir_path: &[Vec<u8>], name: &str) -> Result<(), UnpackError> {
        self.stats.opaque_dirs += 1;
        let dir = match open_dir_in_root(self.root(), &as_slices(dir_path), self.how) {
            Ok(d) => d,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(source) => {
                return Err(UnpackError::Io {
                    entry: name.to_string(),
                    op: "resolving opaque directory",
                    source,
                })
            }
        };
        let times = dir_times(&dir);
        self.ensure_writable(dir.as_fd(), dir_path);
        self.clear_lower(dir.as_fd(), dir_path.to_vec())
            .map_err(io_err(name, "emptying opaque directory"))?;
        restore_times(&dir, times);
        Ok(())
    }

    /// Removes every child of `dir` that this layer did not create, descending
    /// into directories it did create (they may still hold lower content).
    fn clear_lower(&self, dir: BorrowedFd<'_>, path: Vec<Vec<u8>>) -> Result<(), Errno> {
        for child in list_dir(dir)? {
            let mut child_path = path.clone();
            child_path.push(child.clone());
            if !self.created.contains(&child_path) {
                remove_all(dir, &child)?;
                continue;
            }
            if let Ok(sub) = open_dir_nofollow(dir, &child) {
                self.clear_lower(sub.as_fd(), child_path)?;
            }
        }
        Ok(())
    }

    fn owner_at(
        &self,
        p: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if !self.opts.preserve_ownership {
            return Ok(());
        }
        rustix::fs::chownat(
            p,
            base,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err(name, "setting owner"))
    }

    /// Owner, then mode (chown clears setuid), xattrs and times, all on the fd.
    fn fd_meta(&mut self, fd: BorrowedFd<'_>, meta: &Meta, name: &str) -> Result<(), UnpackError> {
        if self.opts.preserve_ownership {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_err(name, "setting owner"))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(io_err(name, "setting mode"))?;
        self.fd_xattrs(fd, meta);
        rustix::fs::futimens(fd, &meta.times).map_err(io_err(name, "setting times"))?;
        Ok(())
    }

    fn fd_xattrs(&mut self, fd: BorrowedFd<'_>, meta: &Meta) {
        if !self.opts.xattrs {
            return;
        }
        for (k, v) in &meta.xattrs {
            if rustix::fs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty()).is_err() {
                self.stats.skipped_xattrs += 1;
            }
        }
    }

    /// Without root, a read-only directory from a lower layer (mode 0555, say)
    /// would stop this layer adding or removing entries in it: give the owner
    /// rwx for the layer's duration and note the mode to put back.
    fn ensure_writable(&mut self, dir: BorrowedFd<'_>, path: &[Vec<u8>]) {
        let wx = Access::WRITE_OK | Access::EXEC_OK;
        if rustix::fs::accessat(dir, ".", wx, AtFlags::EACCESS).is_ok() {
            return;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(dir, ".", flags, Mode::empty()) else {
            return;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            return;
        };
        let mode = st.st_mode & 0o7777;
        if rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode | 0o700)).is_ok() {
            self.restore.push(DirMeta {
                path: path.to_vec(),
                name: String::from_utf8_lossy(&path.join(&b'/')).into_owned(),
                mode,
                times: None,
            });
        }
    }

    /// Applies directory modes and times recorded during the layer: first the
    /// modes borrowed by `ensure_writable`, then the layer's own.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let restore = std::mem::take(&mut self.restore).into_iter().rev();
        let own = std::mem::take(&mut self.dir_meta).into_iter().rev();
        for d in restore.chain(own) {
            let fd = match d.path.split_last() {
                None => rustix::io::dup(&self.root).map_err(io_err(&d.name, "opening root"))?,
                Some((base, parent)) => {
                    let Ok(p) = open_dir_in_root(self.root(), &as_slices(parent), self.how) else {
                        continue; // removed later in the layer
                    };
                    match open_dir_nofollow(p.as_fd(), base) {
                        Ok(fd) => fd,
                        Err(Errno::ACCESS) => {
                            // A directory we cannot read (not a symlink: O_NOFOLLOW
                            // would have said ELOOP). Mode by name is safe here.
                            let _ = rustix::fs::chmodat(
                                &p,
                                base.as_slice(),
                                Mode::from_raw_mode(d.mode),
                                AtFlags::empty(),
                            );
                            continue;
                        }
                        Err(_) => continue, // replaced by a non-directory later in the layer
                    }
                }
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .map_err(io_err(&d.name, "setting mode"))?;
            if let Some(times) = &d.times {
                rustix::fs::futimens(&fd, times).map_err(io_err(&d.name, "setting times"))?;
            }
        }
        Ok(())
    }
}

/// A header number, or 0 when its field holds only NULs and spaces.
fn or_blank<N: Default>(parsed: io::Result<N>, field: &[u8]) -> io::Result<N> {
    match parsed {
        Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(N::default()),
        other => other,
    }
}

/// `123.456789` (PAX time) as a timespec.
fn pax_time(s: &str) -> Option<Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().ok()?;
        n * 10i64.pow(9 - digits.len() as u32)
    };
    Some(Timespec { tv_sec, tv_nsec })
}

/// Opens a directory by name without following a symlink there.
fn open_dir_nofollow(p: BorrowedFd<'_>, base: &[u8]) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(p, base, flags, Mode::empty())
}

fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Deepest tree `remove_all` descends: far beyond any real image, and shallow
/// enough that a hostile layer's deep tree is an error, not a stack overflow.
const MAX_REMOVE_DEPTH: usize = 1000;

/// Removes `base` in `p` and, for a directory, everything below it, never
/// following a symlink.
fn remove_all(p: BorrowedFd<'_>, base: &[u8]) -> Result<(), Errno> {
    remove_below(p, base, 0)
}

fn remove_below(p: BorrowedFd<'_>, base: &[u8], depth: usize) -> Result<(), Errno> {
    let st = rustix::fs::statat(p, base, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(p, base, AtFlags::empty());
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::NAMETOOLONG);
    }
    let dir = open_dir_nofollow(p, base)?;
    // A read-only directory of ours must become writable to be emptied; it is going anyway.
    let wx = Access::WRITE_OK | Access::EXEC_OK;
    if rustix::fs::accessat(&dir, ".", wx, AtFlags::EACCESS).is_err() {
        let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700));
    }
    for child in list_dir(dir.as_fd())? {
        remove_below(dir.as_fd(), &child, depth + 1)?;
    }
    rustix::fs::unlinkat(p, base, AtFlags::REMOVEDIR)
}

fn dir_times(dir: &OwnedFd) -> Option<Timestamps> {
    let st = rustix::fs::fstat(dir).ok()?;
    Some(Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as i64,
            tv_nsec: st.st_atime_nsec as i64,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as i64,
            tv_nsec: st.st_mtime_nsec as i64,
        },
    })
}

/// Puts back a directory's times after a whiteout emptied part of it, so the
/// lower layer's metadata survives (umoci's TestUnpackEntryWhiteout). Best effort.
fn restore_times(dir: &OwnedFd, times: Option<Timestamps>) {
    let Some(times) = times else { return };
    // `dir` is O_PATH, which futimens refuses; "." reopens the same directory.
    if let Ok(fd) = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        let _ = rustix::fs::futimens(&fd, &times);
    }
}

#[cfg(test)]
mod tests;
