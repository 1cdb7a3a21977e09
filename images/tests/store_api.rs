//! The library API other parts of vessel use: open, load, image lookup, leases,
//! rmi/GC around leases, the per-image disk, and the shared database file.

use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use vessel_images::{Store, StoreError};

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

/// A docker-archive with one layer holding `file`, tagged `tag`.
fn docker_archive(dir: &Path, tag: &str, file: &str) -> std::path::PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, file, b"content\n", 0o644);
    let layer = layer.into_inner().unwrap();
    let diff = sha(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    }))
    .unwrap();
    let cfg_name = format!("{}.json", &sha(&config)[7..]);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": cfg_name, "RepoTags": [tag], "Layers": ["l/layer.tar"]}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "l/layer.tar", &layer, 0o644);
    append(&mut b, &cfg_name, &config, 0o644);
    append(&mut b, "manifest.json", &manifest, 0o644);
    let path = dir.join(format!("{file}.tar"));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&b.into_inner().unwrap())
        .unwrap();
    path
}

#[test]
fn leases_protect_images_from_rmi_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    let loaded = store
        .load(&docker_archive(dir.path(), "example/leased:1", "a"))
        .unwrap();
    let img = store.image("example/leased:1").unwrap();
    assert_eq!(img.id, loaded[0].id);
    assert_eq!(img.references, vec!["example/leased:1".to_string()]);
    assert!(img.rootfs.join("a").is_file());
    assert_eq!(
        img.config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap(),
        &vec!["sh".to_string()]
    );
    assert!(matches!(
        store.image("example/missing"),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.image("example/missing").unwrap_err().is_not_found());

    store.add_lease("container-1", &img.id).unwrap();
    let err = store.remove("example/leased:1", false).unwrap_err();
    assert!(err.to_string().contains("container-1"), "{err}");
    // -f untags, but the leased image and its content stay.
    let r = store.remove("example/leased:1", true).unwrap();
    assert!(r.deleted.is_empty());
    store.gc().unwrap();
    let still = store.image(&img.id).unwrap();
    assert!(still.rootfs.join("a").is_file());
    assert!(still.references.is_empty());

    store.remove_lease("container-1").unwrap();
    let r = store.remove(&img.id, false).unwrap();
    assert_eq!(r.deleted, vec![img.id.clone()]);
    let gc = store.gc().unwrap();
    assert_eq!(gc.trees, 1);
    assert!(!img.rootfs.exists());
    assert!(store.image(&img.id).unwrap_err().is_not_found());
}

#[test]
fn the_database_is_shared_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = Store::open(&root).unwrap();
    store
        .load(&docker_archive(dir.path(), "example/db:1", "b"))
        .unwrap();
    // Another component's connection to the same file, with its own table.
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS containers (id TEXT PRIMARY KEY)")
        .unwrap();
    drop(store);
    let store = Store::open(&root).unwrap();
    assert!(store.image("example/db:1").is_ok());
}

#[test]
fn image_disk_is_built_once() {
    let have_mke2fs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !have_mke2fs {
        eprintln!("SKIP: mke2fs missing (apt-get install e2fsprogs)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    store
        .load(&docker_archive(dir.path(), "example/disk:1", "c"))
        .unwrap();
    let img = store.image("example/disk:1").unwrap();
    let disk = store.image_disk(&img).unwrap();
    assert!(disk.ends_with(format!("disks/{}.ext4", img.hex())));
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let again = store.image_disk(&img).unwrap();
    assert_eq!(disk, again);
    assert_eq!(
        std::fs::metadata(&again).unwrap().modified().unwrap(),
        mtime
    );
    store.remove("example/disk:1", false).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!(gc.disks, 1);
    assert!(!disk.exists());
}

#[test]
fn docker_archive_with_a_symlinked_layer() {
    // Old `docker save` writes a layer shared by two images once and links the
    // second image's layer.tar to it.
    let dir = tempfile::tempdir().unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "shared", b"shared\n", 0o644);
    let layer = layer.into_inner().unwrap();
    let diff = sha(&layer);
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "one/layer.tar", &layer, 0o644);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "two/layer.tar", "../one/layer.tar")
        .unwrap();
    let mut entries = Vec::new();
    for (i, dir_name) in ["one", "two"].iter().enumerate() {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"n": i.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": [diff]},
        }))
        .unwrap();
        let name = format!("{}.json", &sha(&config)[7..]);
        append(&mut b, &name, &config, 0o644);
        entries.push(serde_json::json!({
            "Config": name,
            "RepoTags": [format!("example/sym:{i}")],
            "Layers": [format!("{dir_name}/layer.tar")],
        }));
    }
    append(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&entries).unwrap(),
        0o644,
    );
    let path = dir.path().join("sym.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    let store = Store::open(&dir.path().join("root")).unwrap();
    let images = store.load(&path).unwrap();
    assert_eq!(images.len(), 2);
    for i in 0..2 {
        let img = store.image(&format!("example/sym:{i}")).unwrap();
        assert_eq!(
            std::fs::read(img.rootfs.join("shared")).unwrap(),
            b"shared\n"
        );
        assert_eq!(img.layers[0].diff_id, diff);
    }
}

#[test]
fn unpacked_trees_and_disks_are_private_to_the_store_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for sub in ["rootfs", "disks", "tmp"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::set_permissions(dir.path().join(sub), std::fs::Permissions::from_mode(0o777))
            .unwrap();
    }
    let _store = vessel_images::Store::open(dir.path()).unwrap();
    for sub in ["rootfs", "disks", "tmp"] {
        let mode = std::fs::metadata(dir.path().join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{sub} is {mode:o}");
    }
}
