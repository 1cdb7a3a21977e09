//! A real tree archived by GNU tar goes through the pipeline the store uses
//! (sniffed decompression, diff_id hashing, apply_layer) and comes out equal to
//! the original: types, modes, owners, mtimes, contents, link targets, hardlinks.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use vessel_images::compression::{decompress_sniffed, Compression};
use vessel_images::digest::{Digest, HashingReader};
use vessel_images::unpack::{apply_layer, UnpackOptions};

fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("symlink {:?}", fs::read_link(&p).unwrap())
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if ft.is_file() {
            format!("file {}", Digest::of_bytes(&fs::read(&p).unwrap()))
        } else {
            "other".to_string()
        };
        // Hardlink groups by their first-seen member, so inode numbers need not match.
        let group = if !m.is_dir() && m.nlink() > 1 {
            inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
        } else {
            String::new()
        };
        // The root directory's own metadata is the caller's, not the layer's.
        let meta = if rel.is_empty() {
            String::new()
        } else {
            format!("{:o} {}:{} {}", m.mode(), m.uid(), m.gid(), m.mtime())
        };
        out.insert(rel, format!("{what} {meta} {group}"));
    }
    out
}

#[test]
fn gnu_tar_layer_round_trips_through_the_pipeline() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIP: GNU tar not installed");
        return;
    }
    let root = rustix::process::geteuid().is_root();
    let td = tempfile::tempdir().unwrap();
    let src = td.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("etc/deep/er")).unwrap();
    fs::create_dir_all(src.join("private")).unwrap();
    let busybox = Path::new("/bin/busybox");
    if busybox.exists() {
        fs::copy(busybox, src.join("bin/busybox")).unwrap();
    } else {
        fs::write(src.join("bin/busybox"), vec![0x7fu8; 200_000]).unwrap();
    }
    fs::hard_link(src.join("bin/busybox"), src.join("bin/sh")).unwrap();
    symlink("busybox", src.join("bin/ls")).unwrap();
    symlink("/bin/busybox", src.join("bin/abs")).unwrap();
    symlink("../../../../nowhere", src.join("etc/dangling")).unwrap();
    fs::write(src.join("etc/deep/er/file"), "deep").unwrap();
    fs::write(src.join("etc/empty"), "").unwrap();
    fs::write(src.join("suid"), "s").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(src.join("etc/deep"), fs::Permissions::from_mode(0o555)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    if root {
        std::os::unix::fs::lchown(src.join("etc/deep/er/file"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(src.join("bin/ls"), Some(7), Some(8)).unwrap();
    }
    // A fixed mtime everywhere, set last so directory mtimes are not disturbed.
    let st = Command::new("find")
        .arg(&src)
        .args(["-exec", "touch", "-h", "-d", "@1500000000", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success());

    let tar_path = td.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--format=pax", "-cf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let tar_bytes = fs::read(&tar_path).unwrap();
    let diff_id = Digest::of_bytes(&tar_bytes);

    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = match c {
            Compression::None => tar_bytes.clone(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar_bytes).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(&tar_bytes[..], 3).unwrap(),
        };
        let dest = td.path().join(format!("rootfs-{c:?}"));
        fs::create_dir(&dest).unwrap();
        let (found, tar_stream) = decompress_sniffed(&blob[..]).unwrap();
        assert_eq!(found, c);
        let mut hashing = HashingReader::new(tar_stream);
        let stats = apply_layer(&dest, &mut hashing, &UnpackOptions::default()).unwrap();
        let (got, len) = hashing.finish().unwrap();
        assert_eq!(got, diff_id, "{c:?}: diff_id of the uncompressed stream");
        assert_eq!(len, tar_bytes.len() as u64);
        assert_eq!(stats.hardlinks, 1);
        assert_eq!(stats.symlinks, 3);
        assert_eq!(stats.devices, 1, "the fifo");

        let (want, have) = (describe(&src), describe(&dest));
        for (k, v) in &want {
            assert_eq!(have.get(k), Some(v), "{c:?}: {k}");
        }
        assert_eq!(want.len(), have.len(), "{c:?}: extra entries");
    }
}
