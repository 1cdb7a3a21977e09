//! `vessel load` / `vessel save` against archives made by the test builder and by skopeo.

mod common;

use common::{skip_without, Entry, Layer, TestImage, TestRoot};
use std::process::Command;

fn inspect(root: &TestRoot, name: &str) -> serde_json::Value {
    let out = root.ok(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

#[test]
fn builder_archive_is_valid_for_skopeo() {
    if skip_without(&["skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = TestImage::new("vessel-test/builder:1").label("k", "v");
    let archive = img.write_oci_archive(dir.path());
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--config"])
        .arg(format!("oci-archive:{}:1", archive.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo rejects the builder's archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["config"]["Labels"]["k"], "v");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
}

#[test]
fn load_oci_archive_and_resolve() {
    let root = TestRoot::new();
    let img = TestImage::new("vessel-test/busybox:latest")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .workdir("/home/app")
        .user("app")
        .label("org.example.role", "test")
        .expose("8080/tcp")
        .env("FOO=bar");
    let name = root.load(&img);
    let v = inspect(&root, &name);
    assert_eq!(v["RepoTags"][0], "vessel-test/busybox:latest");
    assert_eq!(v["Config"]["Entrypoint"][0], "/bin/sh");
    assert_eq!(v["Config"]["Cmd"][0], "echo hi");
    assert_eq!(v["Config"]["WorkingDir"], "/home/app");
    assert_eq!(v["Config"]["User"], "app");
    assert_eq!(v["Config"]["Labels"]["org.example.role"], "test");
    assert_eq!(
        v["Config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Created"], "2024-01-01T00:00:00+00:00");
    assert!(v["Size"].as_u64().unwrap() > 1_000_000);
    assert!(v["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "FOO=bar"));
    let rootfs = std::path::PathBuf::from(v["Rootfs"].as_str().unwrap());
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    assert!(common::read_to_string(&rootfs.join("etc/passwd")).contains("app:x:1000:1000"));

    // Every way of naming it resolves to the same ID.
    let id = v["Id"].as_str().unwrap().to_string();
    let hex = id.trim_start_matches("sha256:");
    for n in [
        "vessel-test/busybox",
        "docker.io/vessel-test/busybox:latest",
        &id,
        hex,
        &hex[..12],
    ] {
        assert_eq!(inspect(&root, n)["Id"], id.as_str(), "{n}");
    }
    let err = root.fails(&["inspect", "vessel-test/nothere"]);
    assert!(err.contains("no such image"), "{err}");
}

#[test]
fn load_applies_whiteouts_opaque_and_hardlinks() {
    let root = TestRoot::new();
    let img = TestImage::new("vessel-test/layers:1")
        .layer(Layer::new(vec![
            Entry::dir("data"),
            Entry::file("data/keep", b"keep"),
            Entry::file("data/gone", b"gone"),
            Entry::dir("opq"),
            Entry::file("opq/old", b"old"),
        ]))
        .layer(
            Layer::new(vec![
                Entry::whiteout("data/gone"),
                Entry::opaque("opq"),
                Entry::file("opq/new", b"new"),
                Entry::hardlink("data/link", "data/keep"),
            ])
            .compressed(common::Compression::Zstd),
        );
    root.load(&img);
    let v = inspect(&root, "vessel-test/layers:1");
    let rootfs = std::path::PathBuf::from(v["Rootfs"].as_str().unwrap());
    assert!(rootfs.join("data/keep").is_file());
    assert!(!rootfs.join("data/gone").exists());
    assert!(!rootfs.join("opq/old").exists());
    assert_eq!(std::fs::read(rootfs.join("opq/new")).unwrap(), b"new");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(rootfs.join("data/link")).unwrap().ino(),
        std::fs::metadata(rootfs.join("data/keep")).unwrap().ino()
    );
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["Layers"][2]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

#[test]
fn load_rejects_a_layer_whose_diff_id_lies() {
    // Build a layout, then swap the config's diff_id for another: the layer
    // blob itself is intact, so only the diff_id check can catch it.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let img = TestImage::new("vessel-test/liar:1");
    let w = img.write_layout(&layout);
    let cfg_path = layout.join("blobs/sha256").join(&w.config_digest[7..]);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["rootfs"]["diff_ids"][0] = serde_json::json!(common::sha256(b"not the layer"));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let new_cfg = common::sha256(&cfg_bytes);
    std::fs::write(layout.join("blobs/sha256").join(&new_cfg[7..]), &cfg_bytes).unwrap();
    let mpath = layout.join("blobs/sha256").join(&w.manifest_digest[7..]);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["config"]["digest"] = serde_json::json!(new_cfg);
    m["config"]["size"] = serde_json::json!(cfg_bytes.len());
    let m_bytes = serde_json::to_vec(&m).unwrap();
    let new_m = common::sha256(&m_bytes);
    std::fs::write(layout.join("blobs/sha256").join(&new_m[7..]), &m_bytes).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = serde_json::json!(new_m);
    index["manifests"][0]["size"] = serde_json::json!(m_bytes.len());
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let archive = dir.path().join("liar.tar");
    common::tar_dir(&layout, &archive);

    let root = TestRoot::new();
    let err = root.fails(&["load", "-i", archive.to_str().unwrap()]);
    assert!(err.contains("diff_id"), "{err}");
    assert!(
        err.contains(&w.layer_digests[0]),
        "error names the layer: {err}"
    );
    // Nothing of it stays: no image, no blobs, no tree.
    assert_eq!(root.ok(&["images", "-q"]).trim(), "");
    let blobs = std::fs::read_dir(root.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left behind");
    let trees = std::fs::read_dir(root.path().join("rootfs"))
        .unwrap()
        .count();
    assert_eq!(trees, 0, "trees left behind");
}

/// Copies `src` (a skopeo transport reference) to `dst` with skopeo.
fn skopeo_copy(src: &str, dst: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", src, dst])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn load_archives_made_by_skopeo() {
    if skip_without(&["skopeo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let img = TestImage::new("vessel-test/src:1")
        .layer(Layer::new(vec![Entry::file("hello.txt", b"hello\n")]));
    img.write_layout(&layout);
    let src = format!("oci:{}:1", layout.display());
    let docker_tar = dir.path().join("docker.tar");
    let oci_tar = dir.path().join("oci.tar");
    skopeo_copy(
        &src,
        &format!(
            "docker-archive:{}:vessel-test/from-docker:2",
            docker_tar.display()
        ),
    );
    skopeo_copy(
        &src,
        &format!("oci-archive:{}:vessel-test/from-oci:3", oci_tar.display()),
    );
    let root = TestRoot::new();
    let out = root.ok(&["load", "-i", docker_tar.to_str().unwrap()]);
    assert!(out.contains("vessel-test/from-docker:2"), "{out}");
    let out = root.ok(&["load", "-i", oci_tar.to_str().unwrap()]);
    assert!(out.contains("vessel-test/from-oci:3"), "{out}");
    let a = inspect(&root, "vessel-test/from-docker:2");
    let b = inspect(&root, "vessel-test/from-oci:3");
    // skopeo may rewrite the config (docker-archive) but never the layers' content.
    assert_eq!(a["RootFS"], b["RootFS"]);
    for v in [&a, &b] {
        let rootfs = std::path::PathBuf::from(v["Rootfs"].as_str().unwrap());
        assert_eq!(std::fs::read(rootfs.join("hello.txt")).unwrap(), b"hello\n");
    }
}

#[test]
fn save_is_read_back_by_skopeo_and_vessel() {
    if skip_without(&["skopeo"]) {
        return;
    }
    let root = TestRoot::new();
    let img = TestImage::new("vessel-test/saved:1")
        .layer(Layer::new(vec![Entry::file("a", b"a")]).compressed(common::Compression::Zstd))
        .label("saved", "yes");
    root.load(&img);
    root.ok(&["tag", "vessel-test/saved:1", "vessel-test/saved:2"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("saved.tar");
    root.ok(&["save", "-o", out.to_str().unwrap(), "vessel-test/saved:1"]);
    let o = Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--config"])
        .arg(format!("docker-archive:{}", out.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cfg["config"]["Labels"]["saved"], "yes");
    let oci = dir.path().join("oci");
    skopeo_copy(
        &format!("docker-archive:{}", out.display()),
        &format!("oci:{}:x", oci.display()),
    );
    // And vessel loads its own archive into a fresh store, same image ID.
    let other = TestRoot::new();
    let loaded = other.ok(&["load", "-i", out.to_str().unwrap()]);
    assert!(loaded.contains("vessel-test/saved:1"), "{loaded}");
    assert_eq!(
        inspect(&other, "vessel-test/saved:1")["Id"],
        inspect(&root, "vessel-test/saved:1")["Id"]
    );
}

#[test]
fn load_docker_25_combined_layout_and_compressed_archives() {
    // docker 25+ writes an OCI layout plus a manifest.json whose Config and
    // Layers point into blobs/sha256/.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let img = TestImage::new("vessel-test/docker25:1")
        .layer(Layer::new(vec![Entry::file("d25", b"combined\n")]));
    let w = img.write_layout(&layout);
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", &w.config_digest[7..]),
        "RepoTags": ["vessel-test/docker25:1"],
        "Layers": w.layer_digests.iter().map(|d| format!("blobs/sha256/{}", &d[7..])).collect::<Vec<_>>(),
    }]);
    std::fs::write(
        layout.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let archive = dir.path().join("docker25.tar");
    common::tar_dir(&layout, &archive);
    let root = TestRoot::new();
    let out = root.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("vessel-test/docker25:1"), "{out}");
    let v = inspect(&root, "vessel-test/docker25:1");
    assert_eq!(v["Id"], w.config_digest.as_str());
    let rootfs = std::path::PathBuf::from(v["Rootfs"].as_str().unwrap());
    assert_eq!(std::fs::read(rootfs.join("d25")).unwrap(), b"combined\n");

    // `docker save | gzip` and zstd-compressed archives load the same.
    let raw = std::fs::read(&archive).unwrap();
    let gz = dir.path().join("docker25.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    enc.finish().unwrap();
    let zst = dir.path().join("docker25.tar.zst");
    std::fs::write(&zst, zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
    for a in [&gz, &zst] {
        let other = TestRoot::new();
        other.ok(&["load", "-i", a.to_str().unwrap()]);
        assert_eq!(
            inspect(&other, "vessel-test/docker25:1")["Id"],
            w.config_digest.as_str()
        );
    }
}

#[test]
fn load_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let root = TestRoot::new();
    let err = root.fails(&["load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");
    let empty_layout = dir.path().join("empty");
    std::fs::create_dir(&empty_layout).unwrap();
    std::fs::write(empty_layout.join("hello"), b"hi").unwrap();
    let t = dir.path().join("notimage.tar");
    common::tar_dir(&empty_layout, &t);
    let err = root.fails(&["load", "-i", t.to_str().unwrap()]);
    assert!(err.contains("neither a docker-archive"), "{err}");
    assert_eq!(
        std::fs::read_dir(root.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}
