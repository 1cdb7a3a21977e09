//! Resolving paths inside a rootfs as if it were `/`.
//!
//! Every symlink met on the way is followed the way the container will see it:
//! an absolute target starts again at the rootfs, and `..` stops at the rootfs.
//! So no path resolved here can reach anything outside it. The kernel does this
//! with `openat2(RESOLVE_IN_ROOT)` (Linux 5.6+); on older kernels a
//! component-by-component walk with `O_NOFOLLOW` does the same in user space.
//! Unpacking is the only writer of the tree while it runs (the rootfs is built
//! beside its final name), so the walk has no races to lose.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Symlinks followed in one resolution before giving up, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Which resolution strategy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// The kernel's `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
    Openat2,
    /// Our own walk, for kernels without openat2.
    Walk,
}

/// 0: unknown, 1: openat2 works, 2: it does not.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

impl Resolver {
    /// openat2 when this kernel has it, else the walk.
    pub(crate) fn detect(root: BorrowedFd<'_>) -> Resolver {
        match OPENAT2.load(Ordering::Relaxed) {
            1 => return Resolver::Openat2,
            2 => return Resolver::Walk,
            _ => {}
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let works = match rustix::fs::openat2(root, ".", flags, Mode::empty(), in_root()) {
            Ok(_) => true,
            // ENOSYS: no openat2; EPERM: a seccomp filter refuses it; EINVAL: flags unknown.
            Err(e) => !matches!(
                e,
                rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::INVAL
            ),
        };
        OPENAT2.store(if works { 1 } else { 2 }, Ordering::Relaxed);
        if works {
            Resolver::Openat2
        } else {
            Resolver::Walk
        }
    }
}

fn in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Opens the directory at `components` (already free of `.` and `..`) inside
/// `root`, following symlinks as the container would. Returns an `O_PATH` fd.
pub(crate) fn open_dir_in_root(
    root: BorrowedFd<'_>,
    components: &[&[u8]],
    how: Resolver,
) -> io::Result<OwnedFd> {
    match how {
        Resolver::Openat2 => {
            let path = join(components);
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            Ok(rustix::fs::openat2(
                root,
                path.as_slice(),
                flags,
                Mode::empty(),
                in_root(),
            )?)
        }
        Resolver::Walk => walk(root, components, false),
    }
}

/// Like [`open_dir_in_root`], creating missing directories (mode 0755) where
/// the path, or the target of a symlink on it, leads to nothing yet. Every
/// directory is created inside the root: a dangling `/run` link makes `run/`.
pub(crate) fn make_dir_all_in_root(
    root: BorrowedFd<'_>,
    components: &[&[u8]],
) -> io::Result<OwnedFd> {
    walk(root, components, true)
}

/// `a/b/c`, or `.` for the root itself.
fn join(components: &[&[u8]]) -> Vec<u8> {
    if components.is_empty() {
        return b".".to_vec();
    }
    components.join(&b'/')
}

/// The user-space equivalent of RESOLVE_IN_ROOT for a path that must end at a
/// directory; with `create`, missing components are made as directories.
fn walk(root: BorrowedFd<'_>, components: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
    // Directories entered so far; empty means "at the root".
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut todo: VecDeque<Vec<u8>> = components.iter().map(|c| c.to_vec()).collect();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        let top = stack.last().map_or(root, |fd| fd.as_fd());
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                // `..` at the root stays at the root, as in a chroot.
                stack.pop();
                continue;
            }
            _ => {}
        }
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(top, c.as_slice(), flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                rustix::fs::mkdirat(top, c.as_slice(), Mode::from_raw_mode(0o755))?;
                rustix::fs::openat(top, c.as_slice(), flags, Mode::empty())?
            }
            other => other?,
        };
        let st = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => stack.push(fd),
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = rustix::fs::readlinkat(top, c.as_slice(), Vec::new())?;
                let target = target.as_bytes();
                if target.starts_with(b"/") {
                    stack.clear();
                }
                for part in target.split(|&b| b == b'/').rev() {
                    todo.push_front(part.to_vec());
                }
            }
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    match stack.pop() {
        Some(fd) => Ok(fd),
        None => {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            Ok(rustix::fs::openat(root, ".", flags, Mode::empty())?)
        }
    }
}
