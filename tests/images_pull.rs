//! `vessel pull` against a real registry (Debian's docker-registry on 127.0.0.1),
//! with images the tests build and push with skopeo.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use common::{Compression, Entry, Layer, Registry, TestImage, TestRoot};

fn inspect(root: &TestRoot, name: &str) -> serde_json::Value {
    let out = root.ok(&["inspect", name]);
    serde_json::from_str::<serde_json::Value>(&out).expect("inspect prints JSON")[0].clone()
}

fn rootfs_of(root: &TestRoot, name: &str) -> PathBuf {
    PathBuf::from(inspect(root, name)["Rootfs"].as_str().unwrap())
}

/// Files under `dir` (recursively) whose names start with `.tmp-`.
fn temps_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p);
        } else if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && !p.starts_with(dir.join("rootfs"))
        {
            out.extend(temps_under(&p));
        }
    }
    out
}

#[test]
fn pull_single_image_then_again_from_the_store() {
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/single:1").label("pulled", "yes");
    let w = reg.push_image(&img, "vessel-test/single:1");
    let root = TestRoot::new();
    let r = reg.reference("vessel-test/single:1");
    let out = root.ok(&["pull", &r]);
    assert!(out.contains(&w.config_digest), "{out}");
    let v = inspect(&root, &r);
    assert_eq!(v["Id"], w.config_digest.as_str());
    assert_eq!(v["RepoTags"][0], r.as_str());
    assert!(v["RepoDigests"][0]
        .as_str()
        .unwrap()
        .ends_with(&w.manifest_digest));
    assert_eq!(v["Config"]["Labels"]["pulled"], "yes");
    assert!(rootfs_of(&root, &r).join("bin/busybox").is_file());
    // By digest, too, and a second pull reuses the stored layer.
    let by_digest = format!("{}/vessel-test/single@{}", reg.addr, w.manifest_digest);
    let out = root.run(&["pull", &by_digest]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already present"), "{err}");
    let listed = root.ok(&["images", "--digests", "--no-trunc"]);
    assert!(listed.contains(&w.manifest_digest), "{listed}");
    assert!(temps_under(root.path()).is_empty());
}

#[test]
fn pull_multi_layer_with_whiteouts_opaque_and_hardlinks() {
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/layers:1")
        .layer(Layer::new(vec![
            Entry::dir("app"),
            Entry::file("app/keep", b"keep"),
            Entry::file("app/gone", b"gone"),
            Entry::dir("app/cache"),
            Entry::file("app/cache/old", b"old"),
            Entry::symlink("app/current", "keep"),
        ]))
        .layer(Layer::new(vec![
            Entry::whiteout("app/gone"),
            Entry::opaque("app/cache"),
            Entry::file("app/cache/new", b"new"),
            Entry::hardlink("app/keep-link", "app/keep"),
            Entry::hardlink("bin/sh-again", "bin/busybox"),
        ]))
        .layer(Layer::new(vec![Entry::whiteout("bin/yes")]).compressed(Compression::None));
    reg.push_image(&img, "vessel-test/layers:1");
    let root = TestRoot::new();
    let r = reg.reference("vessel-test/layers:1");
    root.ok(&["pull", "-q", &r]);
    let fs = rootfs_of(&root, &r);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::read(fs.join("app/keep")).unwrap(), b"keep");
    assert!(!fs.join("app/gone").exists());
    assert!(!fs.join("app/cache/old").exists());
    assert_eq!(std::fs::read(fs.join("app/cache/new")).unwrap(), b"new");
    assert_eq!(
        std::fs::read_link(fs.join("app/current")).unwrap(),
        PathBuf::from("keep")
    );
    let ino = |p: &str| std::fs::metadata(fs.join(p)).unwrap().ino();
    assert_eq!(ino("app/keep-link"), ino("app/keep"));
    assert_eq!(ino("bin/sh-again"), ino("bin/busybox"));
    assert!(std::fs::symlink_metadata(fs.join("bin/yes")).is_err());
    assert!(std::fs::symlink_metadata(fs.join("bin/sh")).is_ok());
    assert_eq!(inspect(&root, &r)["Layers"].as_array().unwrap().len(), 4);
}

#[test]
fn pull_chooses_the_platform_from_an_index() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let amd = TestImage::new("vessel-test/multi:1").label("arch", "amd64");
    let arm = TestImage::new("vessel-test/multi:1")
        .label("arch", "arm64")
        .platform("arm64", Some("v8"));
    let written = common::write_multi_platform_layout(dir.path(), "1", &[amd, arm]);
    reg.push(
        &format!("oci:{}:1", dir.path().display()),
        "vessel-test/multi:1",
        true,
    );
    let r = reg.reference("vessel-test/multi:1");

    let root = TestRoot::new();
    root.ok(&["pull", "-q", &r]);
    let v = inspect(&root, &r);
    assert_eq!(v["Config"]["Labels"]["arch"], "amd64");
    assert_eq!(v["Id"], written[0].config_digest.as_str());

    let other = TestRoot::new();
    other.ok(&["pull", "-q", "--platform", "linux/arm64", &r]);
    let v = inspect(&other, &r);
    assert_eq!(v["Config"]["Labels"]["arch"], "arm64");
    assert_eq!(v["Id"], written[1].config_digest.as_str());
    assert_eq!(v["Architecture"], "arm64");

    // The digest reference is the index's, as docker records it.
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{r}"))
        .output()
        .unwrap();
    assert!(raw.status.success());
    let index_digest = common::sha256(&raw.stdout);
    assert!(
        v["RepoDigests"][0]
            .as_str()
            .unwrap()
            .ends_with(&index_digest),
        "{v}"
    );
    assert_ne!(v["ManifestDigest"], index_digest.as_str());

    let err = other.fails(&["pull", "--platform", "linux/s390x", &r]);
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "lists the available platforms: {err}"
    );
}

#[test]
fn pull_zstd_layer() {
    let Some(reg) = Registry::start() else { return };
    let mut img = TestImage::new("vessel-test/zstd:1").layer(
        Layer::new(vec![Entry::file("z.txt", b"zstd compressed\n")]).compressed(Compression::Zstd),
    );
    img.base_compression = Compression::Zstd;
    reg.push_image(&img, "vessel-test/zstd:1");
    let root = TestRoot::new();
    let r = reg.reference("vessel-test/zstd:1");
    root.ok(&["pull", "-q", &r]);
    let v = inspect(&root, &r);
    for l in v["Layers"].as_array().unwrap() {
        assert_eq!(
            l["MediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    assert_eq!(
        std::fs::read(rootfs_of(&root, &r).join("z.txt")).unwrap(),
        b"zstd compressed\n"
    );
}

#[test]
fn pull_refuses_a_corrupted_blob_and_keeps_nothing_of_it() {
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/corrupt:1")
        .layer(Layer::new(vec![Entry::file("data", &[7u8; 4096])]));
    let w = reg.push_image(&img, "vessel-test/corrupt:1");
    // Same length, different bytes: only the digest check can catch it.
    let bad = &w.layer_digests[1];
    let data = reg.blob_data_path(bad);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let root = TestRoot::new();
    let r = reg.reference("vessel-test/corrupt:1");
    let err = root.fails(&["pull", &r]);
    assert!(err.contains(bad.as_str()), "names the layer: {err}");
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!root.path().join("blobs/sha256").join(&bad[7..]).exists());
    assert_eq!(root.ok(&["images", "-q"]).trim(), "");
    assert!(temps_under(root.path()).is_empty(), "temp files left");
    let check = root.ok(&["system", "check"]);
    assert!(check.starts_with("ok"), "{check}");
}

#[test]
fn pull_with_basic_auth() {
    let Some(reg) = Registry::start_with_auth("alice", "wonderland") else {
        return;
    };
    let img = TestImage::new("vessel-test/private:1");
    reg.push_image(&img, "vessel-test/private:1");
    let r = reg.reference("vessel-test/private:1");
    let root = TestRoot::new();
    let dir = tempfile::tempdir().unwrap();
    let no_auth = dir.path().join("none.json");

    let err = root.fails(&["pull", "--authfile", no_auth.to_str().unwrap(), &r]);
    assert!(
        err.to_lowercase().contains("not authorized") || err.contains("401"),
        "{err}"
    );

    let mut child = root
        .cmd()
        .args(["pull", "-q", "--username", "alice", "--password-stdin", &r])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"wonderland\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A docker-style credentials file works too.
    let authfile = dir.path().join("auth.json");
    std::fs::write(
        &authfile,
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"wonderland"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let other = TestRoot::new();
    other.ok(&["pull", "-q", "--authfile", authfile.to_str().unwrap(), &r]);
}

#[test]
fn identical_layers_are_stored_once_and_counted_once() {
    let Some(reg) = Registry::start() else { return };
    let a = TestImage::new("vessel-test/a:1").layer(Layer::new(vec![Entry::file("a", b"a")]));
    let b = TestImage::new("vessel-test/b:1").layer(Layer::new(vec![Entry::file("b", b"b")]));
    let wa = reg.push_image(&a, "vessel-test/a:1");
    let wb = reg.push_image(&b, "vessel-test/b:1");
    assert_eq!(
        wa.layer_digests[0], wb.layer_digests[0],
        "shared base layer"
    );
    let root = TestRoot::new();
    root.ok(&["pull", "-q", &reg.reference("vessel-test/a:1")]);
    let out = root.run(&["pull", &reg.reference("vessel-test/b:1")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already present"));
    // 2 configs + 2 manifests + 3 distinct layers.
    let blobs = std::fs::read_dir(root.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 7);
    let json: serde_json::Value =
        serde_json::from_str(&root.ok(&["images", "--format", "json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let sizes: u64 = rows.iter().map(|r| r["Size"].as_u64().unwrap()).sum();
    let table = root.ok(&["images"]);
    assert!(table.contains("2 images"), "{table}");
    // The total counts the shared base once, so it is below the sum of the rows.
    let a_size = rows[0]["Size"].as_u64().unwrap();
    assert!(sizes > a_size);
    let df = root.ok(&["system", "df"]);
    assert!(df.contains("Images"), "{df}");
}

/// Incompressible bytes, so the layer takes a while to move.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn interrupted_pull_leaves_a_consistent_store_and_the_next_pull_completes() {
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/big:1")
        .layer(
            Layer::new(vec![Entry::file("big1", &noise(12 << 20, 1))])
                .compressed(Compression::None),
        )
        .layer(
            Layer::new(vec![Entry::file("big2", &noise(12 << 20, 2))])
                .compressed(Compression::None),
        );
    reg.push_image(&img, "vessel-test/big:1");
    let r = reg.reference("vessel-test/big:1");
    let root = TestRoot::new();
    // Interrupt at a few points: early in the download, later, during unpack.
    for delay_ms in [50u64, 250, 600] {
        let child = root
            .cmd()
            .args(["pull", "-q", &r])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        // Interrupted after its handler was in place, it says so and cleans up itself.
        if out.status.code() == Some(1) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("interrupted"), "after {delay_ms} ms: {err}");
        }
        // Opening the store sweeps the dead pull's temp files; what is left checks out.
        let check = root.ok(&["system", "check"]);
        assert!(check.starts_with("ok"), "after {delay_ms} ms: {check}");
        assert!(temps_under(root.path()).is_empty(), "after {delay_ms} ms");
    }
    root.ok(&["pull", "-q", &r]);
    let fs = rootfs_of(&root, &r);
    assert_eq!(std::fs::metadata(fs.join("big2")).unwrap().len(), 12 << 20);
    assert!(root.ok(&["system", "check"]).starts_with("ok"));
}

/// A local address that is not loopback, if this machine has one.
fn non_loopback_ip() -> Option<String> {
    // Connecting a UDP socket sends nothing; it only picks the outgoing address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.254:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

#[test]
fn plain_http_only_for_loopback_or_insecure_registries() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIP: no non-loopback IPv4 address");
        return;
    };
    let Some(reg) = Registry::start_on(&ip) else {
        return;
    };
    let img = TestImage::new("vessel-test/plain:1");
    reg.push_image(&img, "vessel-test/plain:1");
    let r = reg.reference("vessel-test/plain:1");
    let root = TestRoot::new();
    // HTTPS is tried, and a plain-HTTP registry cannot speak it.
    let err = root.fails(&["pull", &r]);
    assert!(err.contains(&format!("https://{}", reg.addr)), "{err}");
    assert_eq!(root.ok(&["images", "-q"]).trim(), "");
    root.ok(&["pull", "-q", "--insecure-registry", &reg.addr, &r]);
    assert_eq!(root.ok(&["images", "-q"]).lines().count(), 1);
}

#[test]
fn concurrent_pulls_of_the_same_image_agree() {
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/race:1")
        .layer(Layer::new(vec![Entry::file("r", &noise(1 << 20, 3))]));
    let w = reg.push_image(&img, "vessel-test/race:1");
    let r = reg.reference("vessel-test/race:1");
    let root = TestRoot::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            root.cmd()
                .args(["pull", "-q", &r])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), w.config_digest);
    }
    assert_eq!(root.ok(&["images", "-q"]).lines().count(), 1);
    assert!(root.ok(&["system", "check"]).starts_with("ok"));
    let trees = std::fs::read_dir(root.path().join("rootfs"))
        .unwrap()
        .count();
    assert_eq!(trees, 1);
}

#[test]
fn pull_refuses_a_layer_whose_diff_id_does_not_match_the_config() {
    let Some(reg) = Registry::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = TestImage::new("vessel-test/liar:1");
    let w = img.write_layout(dir.path());
    common::lie_about_base_diff_id(dir.path(), &w);
    reg.push(
        &format!("oci:{}:1", dir.path().display()),
        "vessel-test/liar:1",
        false,
    );
    let root = TestRoot::new();
    let err = root.fails(&["pull", &reg.reference("vessel-test/liar:1")]);
    assert!(err.contains("diff_id"), "{err}");
    assert!(err.contains(&w.layer_digests[0]), "names the layer: {err}");
    let layer = root
        .path()
        .join("blobs/sha256")
        .join(&w.layer_digests[0][7..]);
    assert!(!layer.exists(), "the layer stayed in the store");
    assert_eq!(root.ok(&["images", "-q"]).trim(), "");
    assert!(temps_under(root.path()).is_empty());
}

/// On a terminal the pull shows indicatif bars (bytes done of total), not the plain
/// lines it prints to a pipe. `script` gives vessel a pseudo-terminal.
#[test]
fn pull_on_a_terminal_shows_progress_bars() {
    if common::skip_without(&["script"]) {
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let img = TestImage::new("vessel-test/bars:1");
    reg.push_image(&img, "vessel-test/bars:1");
    let root = TestRoot::new();
    let r = reg.reference("vessel-test/bars:1");
    let cmd = format!(
        "{} --root {} pull {r}",
        common::vessel_bin().display(),
        root.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        !screen.contains("downloading ("),
        "plain lines on a tty: {screen}"
    );
    assert!(
        screen.contains("iB/"),
        "no bar (bytes/total) drawn: {screen}"
    );
    assert!(rootfs_of(&root, &r).join("bin/busybox").is_file());
}
