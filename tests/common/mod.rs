//! Helpers shared by the end-to-end tests: the `vessel` binary, throw-away state
//! roots, a builder of busybox-static test images written as OCI image-layout
//! tarballs (with no help from vessel's own code, so the tests check vessel
//! against an independent producer), and a real `docker-registry` on loopback.
//!
//! Each test file includes this module with `mod common;` and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Path of the `vessel` binary cargo built for these tests.
pub fn vessel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vessel"))
}

/// True when `prog` is found on `$PATH` (or is an existing absolute path).
pub fn have(prog: &str) -> bool {
    if prog.starts_with('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints `SKIP: <why>` and returns true when any of `progs` is missing.
pub fn skip_without(progs: &[&str]) -> bool {
    let missing: Vec<&str> = progs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!("SKIP: missing {}", missing.join(", "));
    true
}

/// A state root in a temporary directory, removed on drop.
pub struct TestRoot {
    dir: tempfile::TempDir,
}

impl TestRoot {
    /// Creates an empty state root.
    pub fn new() -> TestRoot {
        TestRoot {
            dir: tempfile::Builder::new()
                .prefix("vessel-test-root.")
                .tempdir()
                .expect("create temp state root"),
        }
    }

    /// The state root's path (pass it as `--root`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `vessel --root <this root>` command, ready for more arguments.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(vessel_bin());
        c.arg("--root").arg(self.path());
        c.env_remove("VESSEL_ROOT");
        c
    }

    /// Runs `vessel --root <root> args...` and returns its output (stdin closed).
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vessel")
    }

    /// Runs vessel, asserts success, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vessel {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs vessel, asserts failure, and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "vessel {args:?} unexpectedly succeeded:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Builds `image` as an OCI archive in this root's scratch space and `vessel load`s it.
    /// Returns the image's reference (its `name`).
    pub fn load(&self, image: &TestImage) -> String {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let archive = image.write_oci_archive(scratch.path());
        self.ok(&["load", "-i", archive.to_str().expect("utf-8 path")]);
        image.name.clone()
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        TestRoot::new()
    }
}

/// How a test layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the usual).
    Gzip,
    /// zstd.
    Zstd,
}

/// One entry of a test layer.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory with a mode.
    Dir { path: String, mode: u32 },
    /// A regular file with contents and a mode.
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
    /// A hard link to `target` (a path from the root of the image).
    Hardlink { path: String, target: String },
    /// A whiteout deleting `path` from lower layers (written as `.wh.<name>`).
    Whiteout { path: String },
    /// An opaque-directory marker for `dir` (written as `dir/.wh..wh..opq`).
    Opaque { dir: String },
}

impl Entry {
    /// A 0644 file.
    pub fn file(path: &str, data: &[u8]) -> Entry {
        Entry::File {
            path: path.into(),
            data: data.to_vec(),
            mode: 0o644,
        }
    }
    /// A 0755 directory.
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    /// A symlink.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    /// A hard link.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }
    /// A whiteout.
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout { path: path.into() }
    }
    /// An opaque marker.
    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque { dir: dir.into() }
    }
}

/// A layer on top of the busybox base.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Entries in tar order.
    pub entries: Vec<Entry>,
    /// Compression of the blob.
    pub compression: Compression,
}

impl Layer {
    /// A gzip layer with these entries.
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression: Compression::Gzip,
        }
    }
    /// The same layer with another compression.
    pub fn compressed(mut self, c: Compression) -> Layer {
        self.compression = c;
        self
    }
}

/// Applets linked to /bin/busybox in the base layer (when this busybox has them).
pub const APPLETS: &[&str] = &[
    "sh",
    "nslookup",
    "echo",
    "cat",
    "ls",
    "ps",
    "id",
    "env",
    "pwd",
    "sleep",
    "true",
    "false",
    "uname",
    "hostname",
    "mount",
    "umount",
    "ip",
    "ifconfig",
    "head",
    "tail",
    "wc",
    "dd",
    "seq",
    "mkdir",
    "touch",
    "rm",
    "kill",
    "grep",
    "sed",
    "test",
    "[",
    "yes",
    "tee",
    "sync",
    "stat",
    "readlink",
    "ln",
    "cp",
    "mv",
    "chmod",
    "whoami",
    "date",
    "df",
    "du",
    "find",
    "awk",
    "printf",
    "nproc",
    "free",
    "dmesg",
    "sort",
    "tr",
    "cut",
    "xargs",
    "md5sum",
    "sha256sum",
    "timeout",
];

/// The busybox-static binary the base layer copies.
pub const BUSYBOX: &str = "/bin/busybox";

/// A busybox-static test image: the knobs tests need, with docker-like defaults.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// Full reference the archive names, e.g. `vessel-test/busybox:latest`.
    pub name: String,
    /// Layers after the busybox base layer.
    pub layers: Vec<Layer>,
    /// Compression of the base layer.
    pub base_compression: Compression,
    /// Config `Env` (default: a PATH).
    pub env: Vec<String>,
    /// Config `Cmd` (default `["sh"]`).
    pub cmd: Option<Vec<String>>,
    /// Config `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Config `WorkingDir`.
    pub working_dir: Option<String>,
    /// Config `User`.
    pub user: Option<String>,
    /// Config `Labels`.
    pub labels: BTreeMap<String, String>,
    /// Config `ExposedPorts` keys, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `architecture` (default amd64).
    pub architecture: String,
    /// `variant`, if any.
    pub variant: Option<String>,
    /// `os` (default linux).
    pub os: String,
    /// `created` timestamp (RFC 3339).
    pub created: String,
}

/// What [`TestImage::write_layout`] produced: digests tests may want to check.
#[derive(Clone, Debug)]
pub struct Written {
    /// `sha256:<hex>` of the config: the image ID.
    pub config_digest: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// Manifest size in bytes.
    pub manifest_size: u64,
    /// Compressed layer digests, base first.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer digests, base first.
    pub diff_ids: Vec<String>,
}

impl TestImage {
    /// A busybox image named `name` with the defaults.
    pub fn new(name: &str) -> TestImage {
        TestImage {
            name: name.into(),
            layers: Vec::new(),
            base_compression: Compression::Gzip,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: Some(vec!["sh".into()]),
            entrypoint: None,
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            architecture: "amd64".into(),
            variant: None,
            os: "linux".into(),
            created: "2024-01-01T00:00:00Z".into(),
        }
    }
    /// Adds a layer on top.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    /// Sets `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Sets `Entrypoint`.
    pub fn entrypoint(mut self, ep: &[&str]) -> Self {
        self.entrypoint = Some(ep.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Adds an `Env` entry `K=V`.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }
    /// Sets `WorkingDir`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.into());
        self
    }
    /// Sets `User`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }
    /// Adds a label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    /// Adds an `ExposedPorts` entry, e.g. `80/tcp`.
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.push(port.into());
        self
    }
    /// Sets the platform, e.g. `("arm64", Some("v8"))`.
    pub fn platform(mut self, arch: &str, variant: Option<&str>) -> Self {
        self.architecture = arch.into();
        self.variant = variant.map(Into::into);
        self
    }
    /// Sets `created`.
    pub fn created(mut self, rfc3339: &str) -> Self {
        self.created = rfc3339.into();
        self
    }

    /// The tag part of `name` (after the last `:` that follows the last `/`), or `latest`.
    pub fn tag(&self) -> String {
        let last = self.name.rsplit('/').next().unwrap_or(&self.name);
        match last.rsplit_once(':') {
            Some((_, tag)) => tag.to_string(),
            None => "latest".into(),
        }
    }

    /// Writes the image's blobs into the OCI layout at `dir` (creating `dir/blobs/sha256`),
    /// without touching `index.json`. Returns the digests.
    pub fn write_blobs(&self, dir: &Path) -> Written {
        let mut layer_digests = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        let mut history = Vec::new();
        let base = Layer {
            entries: busybox_base_entries(),
            compression: self.base_compression,
        };
        for (i, layer) in std::iter::once(&base).chain(self.layers.iter()).enumerate() {
            let tar = build_tar(&layer.entries);
            diff_ids.push(sha256(&tar));
            let (blob, media) = compress(&tar, layer.compression);
            let digest = write_blob(dir, &blob);
            layer_descs.push(json!({"mediaType": media, "digest": digest, "size": blob.len()}));
            layer_digests.push(digest);
            history.push(json!({"created": self.created, "created_by": format!("test layer {i}")}));
        }
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!(self.env));
        if let Some(cmd) = &self.cmd {
            config.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(ep));
        }
        if let Some(wd) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(wd));
        }
        if let Some(u) = &self.user {
            config.insert("User".into(), json!(u));
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            config.insert("ExposedPorts".into(), Value::Object(ports));
        }
        let mut cfg = json!({
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(v) = &self.variant {
            cfg["variant"] = json!(v);
        }
        let cfg_bytes = serde_json::to_vec(&cfg).expect("config json");
        let config_digest = write_blob(dir, &cfg_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": cfg_bytes.len(),
            },
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
        let manifest_digest = write_blob(dir, &manifest_bytes);
        Written {
            config_digest,
            manifest_digest,
            manifest_size: manifest_bytes.len() as u64,
            layer_digests,
            diff_ids,
        }
    }

    /// The platform object of this image's manifest descriptor in an index.
    pub fn platform_json(&self) -> Value {
        let mut p = json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }

    /// Writes a complete OCI image layout directory for this image at `dir`.
    pub fn write_layout(&self, dir: &Path) -> Written {
        let w = self.write_blobs(dir);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": w.manifest_digest,
                "size": w.manifest_size,
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": self.tag(),
                },
            }],
        });
        write_layout_meta(dir, &index);
        w
    }

    /// Writes this image as an OCI image-layout tarball (`oci-archive`) in `out_dir`;
    /// returns the archive's path.
    pub fn write_oci_archive(&self, out_dir: &Path) -> PathBuf {
        let layout = tempfile::tempdir_in(out_dir).expect("layout dir");
        self.write_layout(layout.path());
        let path = out_dir.join(format!("{}.oci.tar", sanitize(&self.name)));
        tar_dir(layout.path(), &path);
        path
    }
}

/// Writes an OCI layout at `dir` whose single `index.json` entry (tagged `tag`) is an
/// image index over `images` (one manifest per platform), for `skopeo copy --all`.
pub fn write_multi_platform_layout(dir: &Path, tag: &str, images: &[TestImage]) -> Vec<Written> {
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for img in images {
        let w = img.write_blobs(dir);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest_digest,
            "size": w.manifest_size,
            "platform": img.platform_json(),
        }));
        written.push(w);
    }
    let inner = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let inner_bytes = serde_json::to_vec(&inner).expect("index json");
    let inner_digest = write_blob(dir, &inner_bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": inner_digest,
            "size": inner_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write_layout_meta(dir, &index);
    written
}

fn write_layout_meta(dir: &Path, index: &Value) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(index).expect("index json"),
    )
    .expect("write index.json");
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create blobs dir");
    std::fs::write(blobs.join(&digest["sha256:".len()..]), data).expect("write blob");
    digest
}

fn compress(tar: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).expect("gzip");
            (
                enc.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(tar, 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// Entries of the base layer: directories, busybox, applet links, passwd and group.
pub fn busybox_base_entries() -> Vec<Entry> {
    let mut e = Vec::new();
    for d in [
        "bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "usr/bin", "var", "var/tmp",
    ] {
        e.push(Entry::dir(d));
    }
    e.push(Entry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    e.push(Entry::Dir {
        path: "home/app".into(),
        mode: 0o755,
    });
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|err| {
        panic!("{BUSYBOX} is needed for test images (apt-get install busybox-static): {err}")
    });
    e.push(Entry::File {
        path: "bin/busybox".into(),
        data: busybox,
        mode: 0o755,
    });
    let available = busybox_applets();
    for applet in APPLETS {
        if available.is_empty() || available.iter().any(|a| a == applet) {
            e.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
        }
    }
    e.push(Entry::file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n\
          app:x:1000:1000:app:/home/app:/bin/sh\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ));
    e.push(Entry::file(
        "etc/group",
        b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    ));
    e.push(Entry::file("etc/hostname", b"busybox\n"));
    e
}

fn busybox_applets() -> Vec<String> {
    Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Builds an uncompressed tar stream from `entries` (root-owned, mtime 0).
pub fn build_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match entry {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), &[][..])
                    .expect("tar dir");
            }
            Entry::File { path, data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).expect("tar file");
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).expect("tar symlink");
            }
            Entry::Hardlink { path, target } => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, path, target).expect("tar hardlink");
            }
            Entry::Whiteout { path } => {
                let (parent, name) = match path.rsplit_once('/') {
                    Some((p, n)) => (format!("{p}/"), n),
                    None => (String::new(), path.as_str()),
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, format!("{parent}.wh.{name}"), &[][..])
                    .expect("tar whiteout");
            }
            Entry::Opaque { dir } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(
                    &mut h,
                    format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
                    &[][..],
                )
                .expect("tar opaque");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

/// Packs the directory `dir` (its contents at the archive root) into the tar file `out`.
pub fn tar_dir(dir: &Path, out: &Path) {
    let file = std::fs::File::create(out).expect("create archive");
    let mut b = tar::Builder::new(file);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).expect("tar layout");
    b.into_inner().expect("finish archive").sync_all().ok();
}

/// Reads a whole file as a string, panicking with the path on failure.
pub fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    s
}

/// A `docker-registry` (distribution v2) serving on a free 127.0.0.1 port (or
/// another local address), with its
/// storage in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>` (or the address it was started on).
    pub addr: String,
    /// The registry's storage root (filesystem driver).
    pub storage: PathBuf,
    /// Basic-auth credentials, when started with them.
    pub auth: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// Where Debian installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

impl Registry {
    /// Starts an anonymous registry. None (after printing SKIP) when the registry or skopeo is missing.
    pub fn start() -> Option<Registry> {
        Registry::start_inner(None)
    }

    /// Starts a registry that requires basic auth (htpasswd -B) for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Option<Registry> {
        Registry::start_inner(Some((user.into(), password.into())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Option<Registry> {
        if skip_without(&[REGISTRY_BIN, "skopeo"]) {
            return None;
        }
        if auth.is_some() && skip_without(&["htpasswd"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("registry dir");
        let mut auth_cfg = String::new();
        if let Some((user, pass)) = &auth {
            let htpasswd = dir.path().join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, pass])
                .stderr(Stdio::null())
                .status()
                .expect("run htpasswd");
            assert!(st.success(), "htpasswd failed");
            auth_cfg = format!(
                "auth:\n  htpasswd:\n    realm: vessel-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        Registry::start_with_config(dir, &auth_cfg, auth)
    }

    /// Starts a registry whose config gets `auth_yaml` (a complete top-level `auth:`
    /// section, or empty); `creds` are what [`Registry::push`] passes to skopeo.
    pub fn start_with_auth_config(
        auth_yaml: &str,
        creds: Option<(String, String)>,
    ) -> Option<Registry> {
        if skip_without(&[REGISTRY_BIN, "skopeo"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("registry dir");
        Registry::start_with_config(dir, auth_yaml, creds)
    }

    /// Starts an anonymous registry listening on `ip` (not loopback: for
    /// plain-HTTP policy tests) instead of 127.0.0.1.
    pub fn start_on(ip: &str) -> Option<Registry> {
        if skip_without(&[REGISTRY_BIN, "skopeo"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("registry dir");
        Registry::start_at(dir, ip, "", None)
    }

    fn start_with_config(
        dir: tempfile::TempDir,
        auth_cfg: &str,
        auth: Option<(String, String)>,
    ) -> Option<Registry> {
        Registry::start_at(dir, "127.0.0.1", auth_cfg, auth)
    }

    fn start_at(
        dir: tempfile::TempDir,
        ip: &str,
        auth_cfg: &str,
        auth: Option<(String, String)>,
    ) -> Option<Registry> {
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let port = free_port();
        let addr = format!("{ip}:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_cfg}",
            storage.display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            child,
            addr,
            storage,
            auth,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(&reg.addr).is_ok() {
                break;
            }
            if let Ok(Some(st)) = reg.child.try_wait() {
                panic!(
                    "docker-registry exited ({st}): {}",
                    std::fs::read_to_string(reg._dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(reg)
    }

    /// `127.0.0.1:<port>/<repo>` — a reference into this registry.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{}", self.addr, repo_and_tag)
    }

    /// `skopeo copy [--all] <src> docker://<addr>/<repo_and_tag>`; panics with skopeo's stderr on failure.
    pub fn push(&self, src: &str, repo_and_tag: &str, all: bool) {
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        if all {
            c.arg("--all");
        }
        c.arg(src)
            .arg(format!("docker://{}", self.reference(repo_and_tag)));
        let out = c.output().expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {src} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes a test image (built as an OCI layout) to `repo_and_tag`; returns its digests.
    pub fn push_image(&self, image: &TestImage, repo_and_tag: &str) -> Written {
        let dir = tempfile::tempdir().expect("layout dir");
        let w = image.write_layout(dir.path());
        self.push(
            &format!("oci:{}:{}", dir.path().display(), image.tag()),
            repo_and_tag,
            false,
        );
        w
    }

    /// Path of a blob's data file in the registry's storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Rewrites the OCI layout at `layout` (as [`TestImage::write_layout`] left it,
/// `w` being what it returned) so that the config claims another diff_id for the
/// base layer: every blob stays intact, so only a diff_id check can notice.
pub fn lie_about_base_diff_id(layout: &Path, w: &Written) {
    let blobs = layout.join("blobs/sha256");
    let read = |d: &str| -> Value {
        serde_json::from_slice(&std::fs::read(blobs.join(&d[7..])).expect("read blob"))
            .expect("blob json")
    };
    let mut cfg = read(&w.config_digest);
    cfg["rootfs"]["diff_ids"][0] = json!(sha256(b"not the layer"));
    let cfg_bytes = serde_json::to_vec(&cfg).expect("config json");
    let cfg_digest = write_blob(layout, &cfg_bytes);
    let mut m = read(&w.manifest_digest);
    m["config"]["digest"] = json!(cfg_digest);
    m["config"]["size"] = json!(cfg_bytes.len());
    let m_bytes = serde_json::to_vec(&m).expect("manifest json");
    let m_digest = write_blob(layout, &m_bytes);
    let index_path = layout.join("index.json");
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("read index")).expect("index");
    index["manifests"][0]["digest"] = json!(m_digest);
    index["manifests"][0]["size"] = json!(m_bytes.len());
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("index json"))
        .expect("write index");
}

/// One test module per isolation mode and backend (`container`, `qemu`, `builtin_vmm`),
/// each test calling the body with that mode's `Mode` (the calling file's type, with
/// `Mode::container()` and `Mode::vm(vmm)` returning `None` after saying SKIP).
#[allow(unused_macros)]
macro_rules! in_each_mode {
    ($($body:ident),* $(,)?) => {
        mod container {
            $(#[test] fn $body() { if let Some(m) = super::Mode::container() { super::$body(&m) } })*
        }
        mod qemu {
            $(#[test] fn $body() { if let Some(m) = super::Mode::vm("qemu") { super::$body(&m) } })*
        }
        mod builtin_vmm {
            $(#[test] fn $body() { if let Some(m) = super::Mode::vm("builtin") { super::$body(&m) } })*
        }
    };
}
