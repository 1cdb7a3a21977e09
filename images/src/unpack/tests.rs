//! Unpack tests: containerd's `TestBreakouts` and umoci's `TestUnpackEntry*`
//! cases ported by name, plus layer semantics across two layers. Every case runs
//! with both resolvers (kernel openat2 and our walk), and every fixture checks on
//! drop that nothing outside the rootfs changed.

use super::resolve::{open_dir_in_root, Resolver};
use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

const HOWS: [Resolver; 2] = [Resolver::Openat2, Resolver::Walk];
const MTIME: u64 = 1_600_000_000;

/// A tar stream built entry by entry, with raw names so hostile ones fit.
struct T(tar::Builder<Vec<u8>>);

impl T {
    fn new() -> T {
        T(tar::Builder::new(Vec::new()))
    }

    fn raw(mut self, kind: EntryType, name: &str, link: &str, mode: u32, data: &[u8]) -> T {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "test names must fit a plain header"
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(MTIME);
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn dir(self, name: &str, mode: u32) -> T {
        self.raw(EntryType::Directory, name, "", mode, b"")
    }
    fn file(self, name: &str, data: &[u8]) -> T {
        self.raw(EntryType::Regular, name, "", 0o644, data)
    }
    fn file_mode(self, name: &str, data: &[u8], mode: u32) -> T {
        self.raw(EntryType::Regular, name, "", mode, data)
    }
    /// containerd's argument order: `Symlink(oldname, newname)`.
    fn symlink(self, target: &str, name: &str) -> T {
        self.raw(EntryType::Symlink, name, target, 0o777, b"")
    }
    /// containerd's argument order: `Link(oldname, newname)`.
    fn link(self, target: &str, name: &str) -> T {
        self.raw(EntryType::Link, name, target, 0o644, b"")
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A temp dir with sentinels outside `rootfs/`, snapshotted at creation and
/// compared when dropped.
struct Fx {
    td: tempfile::TempDir,
    rootfs: PathBuf,
    how: Resolver,
    opts: UnpackOptions,
    before: BTreeMap<PathBuf, String>,
}

impl Fx {
    fn new(how: Resolver) -> Fx {
        let td = tempfile::tempdir().unwrap();
        let base = td.path();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/unbroken"), "host").unwrap();
        std::fs::write(base.join("etc/passwd"), "host passwd").unwrap();
        std::fs::write(base.join("file"), "host content").unwrap();
        std::fs::write(base.join("perm400"), "...").unwrap();
        std::fs::set_permissions(base.join("perm400"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        std::fs::write(base.join("also-exists-outside-root"), "...").unwrap();
        std::fs::set_permissions(
            base.join("also-exists-outside-root"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let rootfs = base.join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let before = snapshot(base, &rootfs);
        Fx {
            td,
            rootfs,
            how,
            opts: UnpackOptions::default(),
            before,
        }
    }

    fn outside(&self) -> &Path {
        self.td.path()
    }

    fn apply(&self, tar: Vec<u8>) -> Result<LayerStats, UnpackError> {
        apply_with(open_root(&self.rootfs)?, &tar[..], &self.opts, self.how)
    }

    fn ok(&self, tar: Vec<u8>) -> LayerStats {
        self.apply(tar)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.how))
    }

    /// Applies and expects a refusal naming `entry`.
    fn refused(&self, tar: Vec<u8>, entry: &str) {
        match self.apply(tar) {
            Err(e @ UnpackError::Refused { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{entry:?}")),
                    "{msg} does not name {entry:?}"
                );
            }
            other => panic!(
                "{:?}: expected refusal of {entry:?}, got {other:?}",
                self.how
            ),
        }
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.rootfs.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn exists(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.rootfs.join(rel)).is_ok()
    }

    /// stat of `rel` resolved inside the rootfs, following symlinks there (containerd's fs.RootPath + os.Stat).
    fn stat_in_root(&self, rel: &str) -> rustix::fs::Stat {
        let root = open_root(&self.rootfs).unwrap();
        let fd = rustix::fs::openat2(
            &root,
            rel.trim_start_matches('/'),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            rustix::fs::ResolveFlags::IN_ROOT,
        )
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
        rustix::fs::fstat(&fd).unwrap()
    }

    /// lstat of `rel` whose parent is resolved inside the rootfs.
    fn lstat_in_root(&self, rel: &str) -> rustix::fs::Stat {
        let root = open_root(&self.rootfs).unwrap();
        let comps: Vec<&[u8]> = rel
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes())
            .collect();
        let (base, parent) = comps.split_last().unwrap();
        let p = open_dir_in_root(root.as_fd(), parent, Resolver::Openat2).unwrap();
        rustix::fs::statat(&p, *base, AtFlags::SYMLINK_NOFOLLOW).unwrap()
    }

    fn same_file(&self, a: &str, b: &str) -> bool {
        let (x, y) = (self.stat_in_root(a), self.stat_in_root(b));
        (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let after = snapshot(self.td.path(), &self.rootfs);
        assert_eq!(
            after, self.before,
            "{:?}: something outside the rootfs changed",
            self.how
        );
    }
}

/// Everything under `base` except `skip`: type, mode, owner, mtime, content or link target.
fn snapshot(base: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![base.to_path_buf()];
    while let Some(p) = todo.pop() {
        if p == skip {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).unwrap())
        } else if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            "dir".to_string()
        } else {
            format!("file {:?}", std::fs::read(&p).unwrap())
        };
        let meta = format!("{:o} {}:{} {}", m.mode(), m.uid(), m.gid(), m.mtime());
        // The base directory's own mtime changes when rootfs/ is written into; not ours to check.
        let meta = if p == base { String::new() } else { meta };
        out.insert(p, format!("{what} {meta}"));
    }
    out
}

fn each(f: impl Fn(Fx)) {
    for how in HOWS {
        f(Fx::new(how));
    }
}

fn base_etc() -> T {
    T::new().dir("etc", 0o755).file("etc/passwd", b"inside")
}

// ---- containerd archive/tar_test.go TestBreakouts ----

#[test]
fn breakout_symlink_absolute() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .symlink("/etc", "localetc")
            .file("/localetc/unbroken", b"unbroken")
            .done());
        assert_eq!(fx.read("etc/unbroken"), "unbroken");
    });
}

#[test]
fn breakout_symlink_absolute_host_path() {
    // The same attack aimed at a real directory outside: the symlink names the
    // host path of the fixture's own sentinel directory.
    each(|fx| {
        let target = fx.outside().join("etc");
        let t = T::new()
            .dir("etc", 0o755)
            .symlink(target.to_str().unwrap(), "localetc")
            .file("/localetc/unbroken", b"unbroken")
            .done();
        // Resolved in the root, the target does not exist there yet: it is made inside.
        fx.ok(t);
        let inside = target.strip_prefix("/").unwrap().join("unbroken");
        assert_eq!(fx.read(inside.to_str().unwrap()), "unbroken");
        assert!(!fx.exists("etc/unbroken"));
    });
}

#[test]
fn dangling_symlink_parent_is_made_inside() {
    each(|fx| {
        fx.ok(T::new().dir("var", 0o755).symlink("/run", "var/run").done());
        fx.ok(T::new().file("var/run/pid", b"1").done());
        assert_eq!(fx.read("run/pid"), "1");
        fx.ok(T::new()
            .symlink("../../../../outside-of-root/x", "up")
            .done());
        fx.ok(T::new().file("up/y", b"2").done());
        assert_eq!(fx.read("outside-of-root/x/y"), "2");
    });
}

#[test]
fn breakout_symlink_up_and_out() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .dir("dummy", 0o755)
            .symlink("/dummy/../etc", "localetc")
            .file("/localetc/unbroken", b"unbroken")
            .done());
        assert_eq!(fx.read("etc/unbroken"), "unbroken");
    });
}

#[test]
fn breakout_symlink_relative_up_and_out_of_rootfs() {
    // "../etc" from the rootfs's top would be the fixture's sentinel etc/ if followed on the host.
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .symlink("../etc", "localetc")
            .file("localetc/unbroken", b"unbroken")
            .done());
        assert_eq!(fx.read("etc/unbroken"), "unbroken");
    });
}

#[test]
fn breakout_symlink_multiple_absolute() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .dir("dummy", 0o755)
            .symlink("/etc", "/dummy/etc")
            .symlink("/dummy/etc", "localetc")
            .file("/dummy/etc/unbroken", b"unbroken")
            .done());
        assert_eq!(fx.read("etc/unbroken"), "unbroken");
    });
}

#[test]
fn breakout_symlink_multiple_relative() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .dir("dummy", 0o755)
            .symlink("/etc", "/dummy/etc")
            .symlink("./dummy/etc", "localetc")
            .file("/dummy/etc/unbroken", b"unbroken")
            .done());
        assert_eq!(fx.read("etc/unbroken"), "unbroken");
    });
}

#[test]
fn breakout_symlink_empty_file() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/emptied", b"notempty")
            .symlink("/etc", "localetc")
            .file("/localetc/emptied", b"")
            .done());
        assert_eq!(fx.read("etc/emptied"), "");
    });
}

#[test]
fn breakout_hardlink_relative() {
    each(|fx| {
        fx.ok(base_etc()
            .dir("breakouts", 0o755)
            .symlink("../../etc", "breakouts/d1")
            .link("/breakouts/d1/passwd", "breakouts/mypasswd")
            .done());
        assert!(fx.same_file("/breakouts/mypasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_down_and_out() {
    each(|fx| {
        fx.ok(base_etc()
            .dir("breakouts", 0o755)
            .dir("downandout", 0o755)
            .symlink("../downandout/../../etc", "breakouts/d1")
            .link("/breakouts/d1/passwd", "breakouts/mypasswd")
            .done());
        assert!(fx.same_file("/breakouts/mypasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_absolute() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("/etc", "localetc")
            .link("/localetc/passwd", "localpasswd")
            .done());
        assert!(fx.same_file("localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_relative_long() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("../../../../../../../etc", "localetc")
            .link("/localetc/passwd", "localpasswd")
            .done());
        assert!(fx.same_file("localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_relative_up_and_out() {
    // containerd cleans "upandout/../../../etc" lexically; the kernel (and so the
    // container) needs "upandout" to exist, so the target does not resolve and
    // the hardlink fails, naming the entry.
    each(|fx| {
        let e = fx
            .apply(
                base_etc()
                    .symlink("upandout/../../../etc", "localetc")
                    .link("/localetc/passwd", "localpasswd")
                    .done(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("\"localpasswd\""), "{e}");
        assert!(!fx.exists("localpasswd"));
        // With the directory present, the `..`s stop at the root.
        fx.ok(T::new()
            .dir("upandout", 0o755)
            .link("/localetc/passwd", "localpasswd")
            .done());
        assert!(fx.same_file("localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_direct_relative() {
    // containerd clamps the `..`s; we refuse a hardlink target that climbs above the root.
    each(|fx| {
        fx.refused(
            base_etc()
                .link("../../../../../etc/passwd", "localpasswd")
                .done(),
            "localpasswd",
        );
        assert!(!fx.exists("localpasswd"));
    });
}

#[test]
fn breakout_hardlink_direct_absolute() {
    each(|fx| {
        fx.ok(base_etc().link("/etc/passwd", "localpasswd").done());
        assert!(fx.same_file("localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_symlink_parent_directory() {
    // A symlink named "..": containerd skips it, we refuse it.
    each(|fx| {
        fx.refused(
            base_etc()
                .symlink("/etc/", "..")
                .link("/etc/passwd", "localpasswd")
                .done(),
            "..",
        );
        assert_eq!(fx.read("etc/passwd"), "inside");
    });
}

#[test]
fn breakout_symlink_empty_filename() {
    each(|fx| {
        fx.refused(
            base_etc()
                .symlink("/etc/", "")
                .link("/etc/passwd", "localpasswd")
                .done(),
            "",
        );
        assert!(std::fs::symlink_metadata(&fx.rootfs).unwrap().is_dir());
    });
}

#[test]
fn breakout_symlink_parent_relative() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("/etc/", "localetc/sub/..")
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        assert!(fx.same_file("/localetc/localpasswd", "/etc/passwd"));
        assert!(fx.exists("etc/localpasswd"));
    });
}

#[test]
fn breakout_symlink_slash_ended() {
    each(|fx| {
        fx.ok(base_etc()
            .dir("localetc/", 0o770)
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        assert!(fx.same_file("/localetc/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_symlink_override_directory() {
    each(|fx| {
        fx.ok(base_etc().dir("localetc/", 0o755).done());
        fx.ok(T::new()
            .symlink("/etc", "localetc")
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        assert!(fx.same_file("/localetc/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_symlink_override_directory_relative() {
    each(|fx| {
        fx.ok(base_etc().dir("localetc/", 0o755).done());
        fx.ok(T::new()
            .symlink("../../etc", "localetc")
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        assert!(fx.same_file("/localetc/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_directory_override_symlink() {
    each(|fx| {
        fx.ok(base_etc().symlink("/etc", "localetc").done());
        fx.ok(T::new()
            .dir("/localetc/", 0o755)
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        assert!(fx.lstat_in_root("localetc").st_mode & libc::S_IFMT == libc::S_IFDIR);
        assert!(fx.same_file("/localetc/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_directory_override_symlink_and_hardlink() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("etc", "localetc")
            .link("/etc/passwd", "/localetc/localpasswd")
            .done());
        fx.ok(T::new()
            .dir("/localetc/", 0o755)
            .file("/localetc/localpasswd", b"different")
            .done());
        assert!(!fx.same_file("/localetc/localpasswd", "/etc/passwd"));
        assert_eq!(fx.read("etc/passwd"), "inside");
        assert_eq!(fx.read("localetc/localpasswd"), "different");
    });
}

#[test]
fn breakout_whiteout_root_parent() {
    each(|fx| {
        fx.ok(base_etc().done());
        fx.refused(T::new().file(".wh...", b"").done(), ".wh...");
        assert_eq!(fx.read("etc/passwd"), "inside");
    });
}

#[test]
fn breakout_whiteout_parent() {
    each(|fx| {
        fx.ok(base_etc().done());
        fx.refused(T::new().file("etc/.wh...", b"").done(), "etc/.wh...");
        assert_eq!(fx.read("etc/passwd"), "inside");
    });
}

#[test]
fn breakout_whiteout_root() {
    each(|fx| {
        fx.ok(base_etc().done());
        fx.refused(T::new().file(".wh..", b"").done(), ".wh..");
        assert_eq!(fx.read("etc/passwd"), "inside");
    });
}

#[test]
fn breakout_whiteout_current_directory() {
    each(|fx| {
        fx.ok(base_etc().done());
        fx.refused(T::new().file("etc/.wh..", b"").done(), "etc/.wh..");
        assert_eq!(fx.read("etc/passwd"), "inside");
    });
}

#[test]
fn breakout_whiteout_symlink() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users")
            .symlink("/etc", "localetc")
            .done());
        fx.ok(T::new().file(".wh.localetc", b"").done());
        assert_eq!(fx.read("etc/passwd"), "all users");
        assert!(!fx.exists("localetc"));
    });
}

#[test]
fn breakout_whiteout_symlink_path() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users")
            .file("etc/whitedout", b"ahhhh whiteout")
            .symlink("/etc", "localetc")
            .done());
        fx.ok(T::new().file("localetc/.wh.whitedout", b"").done());
        assert_eq!(fx.read("etc/passwd"), "all users");
        assert!(!fx.exists("etc/whitedout"));
    });
}

#[test]
fn breakout_whiteout_directory_name() {
    // containerd extracts ".wh.etc/somefile" as a plain file; we refuse a whiteout
    // prefix on a directory component (a whiteout name with a slash).
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users")
            .done());
        fx.refused(
            T::new().file(".wh.etc/somefile", b"non-empty").done(),
            ".wh.etc/somefile",
        );
        assert_eq!(fx.read("etc/passwd"), "all users");
        assert!(!fx.exists(".wh.etc"));
    });
}

#[test]
fn breakout_whiteout_dead_symlink_parent() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users")
            .symlink("/dne", "localetc")
            .done());
        fx.ok(T::new().file("localetc/.wh.etc", b"").done());
        assert_eq!(fx.read("etc/passwd"), "all users");
    });
}

#[test]
fn breakout_whiteout_relative_path() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users")
            .symlink("/dne", "localetc")
            .done());
        fx.ok(T::new().file("dne/../.wh.etc", b"").done());
        assert!(!fx.exists("etc"));
    });
}

#[test]
fn breakout_hardlink_symlink_before_create_target() {
    each(|fx| {
        fx.ok(T::new()
            .dir("etc", 0o770)
            .symlink("/etc/passwd", "localpasswd")
            .link("localpasswd", "localpasswd-dup")
            .file("/etc/passwd", b"after")
            .done());
        assert!(fx.same_file("localpasswd-dup", "/etc/passwd"));
        let (a, b) = (
            fx.lstat_in_root("localpasswd"),
            fx.lstat_in_root("localpasswd-dup"),
        );
        assert_eq!(a.st_ino, b.st_ino, "the hardlink is to the symlink itself");
    });
}

#[test]
fn breakout_hardlink_symlink_relative() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("../../../../../etc/passwd", "passwdlink")
            .link("/passwdlink", "localpasswd")
            .done());
        let a = std::fs::read_link(fx.rootfs.join("localpasswd")).unwrap();
        let b = std::fs::read_link(fx.rootfs.join("passwdlink")).unwrap();
        assert_eq!(a, b);
        assert!(fx.same_file("/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_symlink_absolute() {
    each(|fx| {
        fx.ok(base_etc()
            .symlink("/etc/passwd", "passwdlink")
            .link("/passwdlink", "localpasswd")
            .done());
        let a = std::fs::read_link(fx.rootfs.join("localpasswd")).unwrap();
        assert_eq!(a, PathBuf::from("/etc/passwd"));
        assert!(fx.same_file("/localpasswd", "/etc/passwd"));
    });
}

#[test]
fn breakout_hardlink_symlink_chmod() {
    each(|fx| {
        let p = fx.outside().join("perm400");
        let ep = fx.outside().join("also-exists-outside-root");
        fx.ok(T::new()
            .symlink(p.to_str().unwrap(), ep.to_str().unwrap())
            .link(ep.to_str().unwrap(), "sketchylink")
            .done());
        let mode = std::fs::symlink_metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o400, "perm400 outside changed");
        // The link is to the symlink created inside the rootfs, not to the host file.
        assert!(std::fs::symlink_metadata(fx.rootfs.join("sketchylink"))
            .unwrap()
            .file_type()
            .is_symlink());
    });
}

// ---- umoci oci/layer/tar_extract_test.go ----

#[test]
fn umoci_unpack_entry_sanitise_scoping() {
    // umoci clamps "/../file" and "../file" to rootfs/file; we refuse them.
    for prefix in ["/..", ".."] {
        each(|fx| {
            let name = format!("{prefix}/file");
            fx.refused(T::new().file(&name, b"container content").done(), &name);
            assert!(!fx.exists("file"));
        });
    }
}

#[test]
fn umoci_unpack_entry_symlink_scoping() {
    for prefix in [
        "/",
        "/../",
        "/../../../../../../../../../../../../../../../",
        "/./.././.././.././.././.././.././.././.././../",
        "..",
    ] {
        each(|fx| {
            std::os::unix::fs::symlink(prefix, fx.rootfs.join("link")).unwrap();
            fx.ok(T::new().file("link/file", b"container content").done());
            assert_eq!(fx.read("file"), "container content", "{prefix}");
        });
    }
}

#[test]
fn umoci_unpack_entry_parent_dir() {
    each(|fx| {
        fx.ok(T::new().file("a/b/c/file", b"creating parentdirs").done());
        assert_eq!(fx.read("a/b/c/file"), "creating parentdirs");
        assert_eq!(
            std::fs::metadata(fx.rootfs.join("a/b")).unwrap().mode() & 0o777,
            0o755
        );
    });
}

#[test]
fn umoci_unpack_entry_whiteout() {
    for (path, dir) in [
        ("rootpath", false),
        (".hiddenroot", false),
        ("some/path/file", false),
        ("another/path/.hiddenfile", false),
        ("rootpath", true),
        (".hiddenroot", true),
        ("some/path/dir", true),
        ("another/path/.hiddendir", true),
    ] {
        each(|fx| {
            let full = fx.rootfs.join(path);
            let parent = full.parent().unwrap().to_path_buf();
            std::fs::create_dir_all(&parent).unwrap();
            if dir {
                std::fs::create_dir(&full).unwrap();
                std::fs::write(full.join("file1"), "some value").unwrap();
                std::fs::create_dir(full.join(".subdir")).unwrap();
                std::fs::write(full.join(".subdir/file3"), "some value").unwrap();
            } else {
                std::fs::write(&full, "some value").unwrap();
            }
            let (rawdir, file) = path.rsplit_once('/').map_or(("", path), |(d, f)| (d, f));
            let t = libc::timespec {
                tv_sec: 123,
                tv_nsec: 456,
            };
            let a = libc::timespec {
                tv_sec: 789,
                tv_nsec: 111,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &parent,
                &Timestamps {
                    last_access: Timespec {
                        tv_sec: a.tv_sec,
                        tv_nsec: a.tv_nsec,
                    },
                    last_modification: Timespec {
                        tv_sec: t.tv_sec,
                        tv_nsec: t.tv_nsec,
                    },
                },
                AtFlags::empty(),
            )
            .unwrap();
            let wh = if rawdir.is_empty() {
                format!(".wh.{file}")
            } else {
                format!("{rawdir}/.wh.{file}")
            };
            fx.ok(T::new().file(&wh, b"").done());
            assert!(!fx.exists(path), "{path} not removed");
            let m = std::fs::metadata(&parent).unwrap();
            assert_eq!(
                (m.mtime(), m.mtime_nsec()),
                (123, 456),
                "parent mtime of {path}"
            );
            assert_eq!(
                (m.atime(), m.atime_nsec()),
                (789, 111),
                "parent atime of {path}"
            );
        });
    }
}

#[test]
fn umoci_unpack_hardlink() {
    each(|fx| {
        fx.ok(T::new()
            .file("regular", b"some content we won't check")
            .link("/regular", "hard link")
            .symlink("../../../regular", "link")
            .link("/link", "hard link to symlink")
            .done());
        // umoci's target "../../../link" climbs above the root: refused here.
        fx.refused(
            T::new().link("../../../link", "hard link 2").done(),
            "hard link 2",
        );
        let reg = fx.lstat_in_root("regular");
        let sym = fx.lstat_in_root("link");
        let a = fx.lstat_in_root("hard link");
        let b = fx.lstat_in_root("hard link to symlink");
        assert_ne!(reg.st_ino, sym.st_ino);
        assert_ne!(a.st_ino, b.st_ino);
        assert_eq!(a.st_ino, reg.st_ino);
        assert_eq!(b.st_ino, sym.st_ino);
        assert_eq!(
            std::fs::read_link(fx.rootfs.join("link")).unwrap(),
            std::fs::read_link(fx.rootfs.join("hard link to symlink")).unwrap()
        );
        assert_eq!(reg.st_uid, rustix::process::geteuid().as_raw());
    });
}

// ---- layer semantics ----

#[test]
fn whiteout_removes_lower_file_and_tree() {
    each(|fx| {
        fx.ok(T::new()
            .dir("a", 0o755)
            .file("a/keep", b"k")
            .file("a/gone", b"g")
            .dir("tree", 0o755)
            .dir("tree/sub", 0o755)
            .file("tree/sub/f", b"f")
            .symlink("/a", "tree/sub/l")
            .done());
        let s = fx.ok(T::new()
            .file("a/.wh.gone", b"")
            .file(".wh.tree", b"")
            .file(".wh.never-existed", b"")
            .done());
        assert_eq!(s.whiteouts, 3);
        assert!(!fx.exists("a/gone"));
        assert!(!fx.exists("tree"));
        assert_eq!(fx.read("a/keep"), "k");
    });
}

#[test]
fn opaque_dir_hides_lower_keeps_own() {
    each(|fx| {
        fx.ok(T::new()
            .dir("d", 0o755)
            .file("d/lower", b"l")
            .dir("d/sub", 0o755)
            .file("d/sub/lower", b"l")
            .file("other", b"o")
            .done());
        // Marker after this layer's own entries, which must survive it.
        let s = fx.ok(T::new()
            .dir("d", 0o755)
            .file("d/new", b"n")
            .dir("d/sub", 0o755)
            .file("d/sub/new", b"n")
            .file("d/.wh..wh..opq", b"")
            .done());
        assert_eq!(s.opaque_dirs, 1);
        assert!(!fx.exists("d/lower"));
        assert!(!fx.exists("d/sub/lower"));
        assert_eq!(fx.read("d/new"), "n");
        assert_eq!(fx.read("d/sub/new"), "n");
        assert_eq!(fx.read("other"), "o");
        assert!(!fx.exists("d/.wh..wh..opq"));
    });
}

#[test]
fn opaque_marker_first_then_new_content() {
    each(|fx| {
        fx.ok(T::new().dir("d", 0o755).file("d/lower", b"l").done());
        fx.ok(T::new()
            .dir("d", 0o755)
            .file("d/.wh..wh..opq", b"")
            .file("d/new", b"n")
            .done());
        assert!(!fx.exists("d/lower"));
        assert_eq!(fx.read("d/new"), "n");
    });
}

#[test]
fn whiteout_spares_same_layer_entry() {
    each(|fx| {
        fx.ok(T::new().file("x", b"lower").done());
        fx.ok(T::new().file("x", b"upper").file(".wh.x", b"").done());
        assert_eq!(fx.read("x"), "upper");
    });
}

#[test]
fn hardlink_to_lower_layer() {
    each(|fx| {
        fx.ok(T::new()
            .dir("bin", 0o755)
            .file_mode("bin/busybox", b"bb", 0o755)
            .done());
        let s = fx.ok(T::new()
            .link("bin/busybox", "bin/sh")
            .link("/bin/busybox", "ls")
            .done());
        assert_eq!(s.hardlinks, 2);
        assert!(fx.same_file("bin/sh", "bin/busybox"));
        assert!(fx.same_file("ls", "bin/busybox"));
        let e = fx
            .apply(T::new().link("/missing", "broken").done())
            .unwrap_err();
        assert!(e.to_string().contains("\"broken\""), "{e}");
        let e = fx
            .apply(T::new().link("bin", "dirlink").done())
            .unwrap_err();
        assert!(matches!(e, UnpackError::Refused { .. }), "{e}");
    });
}

#[test]
fn later_entries_replace_earlier() {
    each(|fx| {
        fx.ok(T::new()
            .dir("was-dir", 0o755)
            .file("was-dir/inner", b"i")
            .file("was-file", b"f")
            .file("was-file2", b"f")
            .dir("merge", 0o755)
            .file("merge/lower", b"l")
            .done());
        fx.ok(T::new()
            .file("was-dir", b"now file")
            .dir("was-file", 0o750)
            .symlink("/merge", "was-file2")
            .dir("merge", 0o700)
            .file("merge/upper", b"u")
            .file("merge/upper", b"u2")
            .done());
        assert_eq!(fx.read("was-dir"), "now file");
        assert!(std::fs::symlink_metadata(fx.rootfs.join("was-file"))
            .unwrap()
            .is_dir());
        assert_eq!(
            std::fs::read_link(fx.rootfs.join("was-file2")).unwrap(),
            PathBuf::from("/merge")
        );
        assert_eq!(fx.read("merge/lower"), "l");
        assert_eq!(fx.read("merge/upper"), "u2");
        let m = std::fs::metadata(fx.rootfs.join("merge")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
    });
}

#[test]
fn modes_times_and_setuid() {
    each(|fx| {
        fx.ok(T::new()
            .dir("./", 0o755)
            .dir("ro", 0o555)
            .file("ro/inside", b"x")
            .file_mode("suid", b"s", 0o4755)
            .file_mode("private", b"p", 0o600)
            .done());
        let md = |r: &str| std::fs::symlink_metadata(fx.rootfs.join(r)).unwrap();
        assert_eq!(md("ro").mode() & 0o7777, 0o555);
        assert_eq!(
            md("ro").mtime(),
            MTIME as i64,
            "dir mtime survives files created inside"
        );
        assert_eq!(md("private").mode() & 0o7777, 0o600);
        assert_eq!(md("private").mtime(), MTIME as i64);
        let want = if fx.opts.preserve_ownership {
            0o4755
        } else {
            0o755
        };
        assert_eq!(md("suid").mode() & 0o7777, want);
        assert_eq!(md("ro/inside").len(), 1);
    });
}

#[test]
fn ownership_when_root() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: ownership_when_root needs root");
        return;
    }
    each(|fx| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(MTIME);
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, "owned", &b"o"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(EntryType::Symlink);
        l.set_size(0);
        l.set_mode(0o777);
        l.set_uid(4321);
        l.set_gid(8765);
        l.set_mtime(MTIME);
        b.append_link(&mut l, "sym", "owned").unwrap();
        fx.ok(b.into_inner().unwrap());
        let m = std::fs::symlink_metadata(fx.rootfs.join("owned")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        let m = std::fs::symlink_metadata(fx.rootfs.join("sym")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 8765));
    });
}

#[test]
fn devices_created_as_root_and_skipped_otherwise() {
    each(|mut fx| {
        let build = || {
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, major, minor) in [
                ("null", EntryType::Char, 1, 3),
                ("loop9", EntryType::Block, 7, 9),
                ("fifo", EntryType::Fifo, 0, 0),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_mtime(MTIME);
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                b.append_data(&mut h, name, &b""[..]).unwrap();
            }
            b.into_inner().unwrap()
        };
        fx.opts.create_devices = false;
        let s = fx.ok(build());
        assert_eq!((s.skipped_devices, s.devices), (2, 1));
        assert!(!fx.exists("null"));
        assert!(std::fs::symlink_metadata(fx.rootfs.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: device node creation needs root");
            return;
        }
        fx.opts.create_devices = true;
        let s = fx.ok(build());
        assert_eq!((s.skipped_devices, s.devices), (0, 3));
        let m = std::fs::symlink_metadata(fx.rootfs.join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
        assert_eq!(m.mode() & 0o777, 0o666);
        assert!(std::fs::symlink_metadata(fx.rootfs.join("loop9"))
            .unwrap()
            .file_type()
            .is_block_device());
    });
}

#[test]
fn xattrs_from_pax() {
    each(|fx| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.vessel", &b"yes"[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "x", &b"x"[..]).unwrap();
        let s = fx.ok(b.into_inner().unwrap());
        let fd = rustix::fs::open(fx.rootfs.join("x"), OFlags::RDONLY, Mode::empty()).unwrap();
        let mut buf = [0u8; 16];
        match rustix::fs::fgetxattr(&fd, "user.vessel", &mut buf) {
            Ok(n) => assert_eq!(&buf[..n], b"yes"),
            Err(e) => {
                assert_eq!(s.skipped_xattrs, 1);
                eprintln!("SKIP: this filesystem refuses user xattrs ({e})");
            }
        }
    });
}

#[test]
fn long_names_and_root_entries() {
    each(|fx| {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(4);
        b.append_data(&mut h, &long, &b"long"[..]).unwrap();
        fx.ok(b.into_inner().unwrap());
        assert_eq!(fx.read(&long), "long");
        fx.refused(T::new().file("/", b"x").done(), "/");
        fx.refused(T::new().file("./", b"x").done(), "./");
    });
}

#[test]
fn nul_and_truncated_streams_fail_cleanly() {
    each(|fx| {
        let mut t = T::new().file("ok", b"0123456789").done();
        // Cut inside the file data: the stream ends early.
        t.truncate(512 + 5);
        let e = fx.apply(t).unwrap_err();
        assert!(matches!(e, UnpackError::Tar(_)), "{e}");
    });
}

#[test]
fn pax_time_parses_fractions() {
    assert_eq!(
        pax_time("12.5").map(|t| (t.tv_sec, t.tv_nsec)),
        Some((12, 500_000_000))
    );
    assert_eq!(pax_time("7").map(|t| (t.tv_sec, t.tv_nsec)), Some((7, 0)));
    assert!(pax_time("x").is_none());
}

#[test]
fn public_apply_layer_works() {
    let fx = Fx::new(Resolver::Openat2);
    let s = apply_layer(
        &fx.rootfs,
        &base_etc().done()[..],
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!((s.dirs, s.files, s.bytes), (1, 1, 6));
    let e = apply_layer(
        &fx.outside().join("missing"),
        &b""[..],
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::Root { .. }));
}

#[test]
fn symlink_loops_fail_without_hanging() {
    each(|fx| {
        fx.ok(T::new()
            .symlink("b", "a")
            .symlink("/a", "b")
            .symlink("self", "self")
            .done());
        for name in ["a/x", "self/x"] {
            let e = fx.apply(T::new().file(name, b"x").done()).unwrap_err();
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
    });
}

#[test]
fn whiteout_through_file_parent_and_missing_opaque_dir_are_noops() {
    each(|fx| {
        fx.ok(T::new().file("f", b"x").done());
        let s = fx.ok(T::new()
            .file("f/.wh.y", b"")
            .file("missing/.wh..wh..opq", b"")
            .done());
        assert_eq!((s.whiteouts, s.opaque_dirs), (1, 1));
        assert_eq!(fx.read("f"), "x");
        assert!(!fx.exists("missing"));
    });
}

#[test]
fn rootless_layer_over_read_only_lower_dirs() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: needs root to give one thread an unprivileged filesystem identity");
        return;
    }
    each(|mut fx| {
        fx.ok(T::new()
            .dir("ro", 0o555)
            .file("ro/a", b"a")
            .dir("ro/sub", 0o555)
            .file("ro/sub/b", b"b")
            .dir("tree", 0o555)
            .dir("tree/in", 0o555)
            .file("tree/in/c", b"c")
            .done());
        // As if an unprivileged user had unpacked the lower layer itself.
        let mut todo = vec![fx.rootfs.clone()];
        while let Some(p) = todo.pop() {
            std::os::unix::fs::lchown(&p, Some(65534), Some(65534)).unwrap();
            if p.is_dir() && !p.is_symlink() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
        fx.opts.preserve_ownership = false;
        fx.opts.create_devices = false;
        let root = open_root(&fx.rootfs).unwrap();
        let tar = T::new()
            .file("ro/new", b"n")
            .file("ro/.wh.a", b"")
            .file("ro/sub/.wh.b", b"")
            .file(".wh.tree", b"")
            .done();
        let (opts, how) = (fx.opts.clone(), fx.how);
        let result = std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: raw setfsuid/setfsgid change only the calling thread's
                // filesystem identity (glibc's wrappers would change every
                // thread's); moving fsuid off 0 also drops this thread's
                // CAP_DAC_OVERRIDE and CAP_FOWNER. The thread ends after the unpack.
                unsafe {
                    libc::syscall(libc::SYS_setfsgid, 65534);
                    libc::syscall(libc::SYS_setfsuid, 65534);
                }
                let wx = Access::WRITE_OK;
                assert!(
                    rustix::fs::accessat(&root, "ro", wx, AtFlags::EACCESS).is_err(),
                    "this thread should not be able to write a 0555 directory"
                );
                apply_with(root, &tar[..], &opts, how)
            })
            .join()
            .unwrap()
        });
        result.unwrap_or_else(|e| panic!("{how:?}: {e}"));
        assert_eq!(fx.read("ro/new"), "n");
        assert!(!fx.exists("ro/a"));
        assert!(!fx.exists("ro/sub/b"));
        assert!(!fx.exists("tree"));
        let mode = |r: &str| std::fs::metadata(fx.rootfs.join(r)).unwrap().mode() & 0o7777;
        assert_eq!(
            (mode("ro"), mode("ro/sub")),
            (0o555, 0o555),
            "modes put back"
        );
    });
}

#[test]
fn aufs_metadata_is_skipped_and_plnk_hardlinks_resolve() {
    each(|fx| {
        let s = fx.ok(T::new()
            .file(".wh..wh.aufs", b"")
            .dir(".wh..wh.orph", 0o700)
            .file(".wh..wh.orph/junk", b"j")
            .dir(".wh..wh.plnk", 0o700)
            .file(".wh..wh.plnk/123.456", b"data")
            .dir("bin", 0o755)
            .link(".wh..wh.plnk/123.456", "bin/a")
            .link("/.wh..wh.plnk/123.456", "bin/b")
            .done());
        assert_eq!(s.skipped_other, 3);
        assert_eq!(fx.read("bin/a"), "data");
        assert!(fx.same_file("bin/a", "bin/b"));
        for gone in [".wh..wh.aufs", ".wh..wh.orph", ".wh..wh.plnk"] {
            assert!(!fx.exists(gone), "{gone}");
        }
        // Deeper aufs names are not metadata: still refused as whiteout names with a slash.
        fx.refused(
            T::new().file("x/.wh..wh.plnk/1", b"").done(),
            "x/.wh..wh.plnk/1",
        );
    });
}

#[test]
fn removing_a_very_deep_tree_is_an_error_not_a_crash() {
    each(|fx| {
        // 1200 levels, 50 per entry, reached through a symlink so no name is too long.
        let mut b = tar::Builder::new(Vec::new());
        for i in 1..=24 {
            let prefix = if i == 1 { "" } else { "deep/" };
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            b.append_data(&mut h, format!("{prefix}{}", "a/".repeat(50)), &b""[..])
                .unwrap();
            let target = format!("/{}", "a/".repeat(50 * i));
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(EntryType::Symlink);
            l.set_mode(0o777);
            l.set_size(0);
            l.set_uid(0);
            l.set_gid(0);
            l.set_mtime(MTIME);
            b.append_link(&mut l, "deep", target.trim_end_matches('/'))
                .unwrap();
        }
        fx.ok(b.into_inner().unwrap());
        let deepest = "a/".repeat(1200);
        assert!(fx.rootfs.join(&deepest).is_dir());
        let e = fx.apply(T::new().file(".wh.a", b"").done()).unwrap_err();
        assert!(e.to_string().contains("\".wh.a\""), "{e}");
    });
}
