//! `vessel load`: docker-archive (`docker save`, including the combined OCI +
//! manifest.json layout docker 25+ writes) and OCI image-layout tarballs,
//! optionally gzip/zstd compressed as a whole.
//!
//! The archive is read in one pass: every file goes straight into the content
//! store (hashed, and decompressed-and-hashed for diff_ids, while it streams);
//! small files are also kept in memory for parsing. Then the manifests are read,
//! every digest, size and diff_id is checked, and the images are recorded. Blobs
//! this load added that no image ended up using are removed again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::compression::{self, Compression};
use crate::content::{Committed, Expect};
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::import::Fetched;
use crate::metadata::LayerRecord;
use crate::platform::{self, Platform};
use crate::reference::Reference;
use crate::store::Store;

/// Files up to this size are kept in memory too (manifests, configs, indexes).
const SMALL: u64 = 4 << 20;

/// One entry of docker's `manifest.json`.
#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// What one pass over the archive found.
#[derive(Default)]
struct Archive {
    /// Regular files: normalised path → stored blob.
    files: HashMap<String, Committed>,
    /// Small files' bytes.
    small: HashMap<String, Vec<u8>>,
    /// Symlinks and hardlinks: normalised path → normalised target.
    links: HashMap<String, String>,
    /// Blobs this load created (candidates for removal if unused).
    created: HashSet<Digest>,
}

/// Normalises an archive path: no leading `./` or `/`, no `.` components.
/// `..` climbs within the archive namespace only (never outside it).
fn norm(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

impl Archive {
    fn resolve<'a>(&'a self, path: &str) -> Option<(&'a str, &'a Committed)> {
        let mut p = norm(Path::new(path));
        for _ in 0..16 {
            if let Some((k, c)) = self.files.get_key_value(&p) {
                return Some((k.as_str(), c));
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn bytes(&self, path: &str, what: &str) -> Result<&[u8]> {
        let (key, _) = self
            .resolve(path)
            .ok_or_else(|| StoreError::invalid("archive", format!("{what} {path} is missing")))?;
        self.small.get(key).map(Vec::as_slice).ok_or_else(|| {
            StoreError::invalid("archive", format!("{what} {path} is implausibly large"))
        })
    }

    fn blob_path(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }
}

impl Store {
    /// Loads every image in the archive at `path`; returns them.
    pub fn load(&self, path: &Path) -> Result<Vec<Image>> {
        let _lock = self.lock_shared()?;
        let file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
        let file = crate::interrupt::Interruptible(file);
        let (_, reader) = compression::decompress_sniffed(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| StoreError::io("read", path, e))?;
        let mut archive = Archive::default();
        let scanned = self.scan(reader, &mut archive, path);
        let mut result = scanned.and_then(|()| self.import_archive(&archive));
        if result.is_err() && crate::interrupt::requested() {
            result = Err(StoreError::Interrupted);
        }
        // Blobs we added that no image uses (stray files, or everything after an error).
        let used = crate::metadata::used_blobs(&self.db())?;
        for d in &archive.created {
            if !used.contains(&d.to_string()) {
                let _ = self.content().remove(d);
            }
        }
        result
    }

    fn scan(&self, reader: impl Read, archive: &mut Archive, path: &Path) -> Result<()> {
        let mut tar = tar::Archive::new(reader);
        let entries = tar
            .entries()
            .map_err(|e| StoreError::invalid(path.display().to_string(), e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| StoreError::invalid(path.display().to_string(), e))?;
            let name = norm(
                &entry
                    .path()
                    .map_err(|e| StoreError::invalid(path.display().to_string(), e))?,
            );
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                let target = if kind.is_symlink() {
                    // Symlink targets are relative to the link's directory.
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    norm(&dir.join(&target))
                } else {
                    norm(&target)
                };
                archive.links.insert(name, target);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let size = entry.size();
            let mut w = self
                .content()
                .writer(format!("{name} in {}", path.display()))?;
            w.track_diff_id();
            let mut small = if size <= SMALL {
                Some(Vec::with_capacity(size as usize))
            } else {
                None
            };
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| StoreError::io("read", path, e))?;
                if n == 0 {
                    break;
                }
                std::io::Write::write_all(&mut w, &buf[..n])
                    .map_err(|e| StoreError::io("write blob", w.temp_path().to_path_buf(), e))?;
                if let Some(s) = &mut small {
                    s.extend_from_slice(&buf[..n]);
                }
            }
            // Files under blobs/sha256/ are named by their digest: hold them to it.
            let named = name
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok());
            let before = named.as_ref().is_some_and(|d| self.content().has(d));
            let committed = w.commit(&Expect {
                digest: named.as_ref(),
                size: Some(size),
                diff_id: None,
            })?;
            // Only blobs this load brought in are candidates for removal at the end;
            // one that was already there may belong to a pull still in progress.
            if !before {
                archive.created.insert(committed.digest.clone());
            }
            if let Some(s) = small {
                archive.small.insert(name.clone(), s);
            }
            archive.files.insert(name, committed);
        }
        Ok(())
    }

    fn import_archive(&self, archive: &Archive) -> Result<Vec<Image>> {
        if archive.resolve("manifest.json").is_some() {
            return self.import_docker(archive);
        }
        if archive.resolve("index.json").is_some() {
            return self.import_oci(archive);
        }
        Err(StoreError::invalid(
            "archive",
            "neither a docker-archive (manifest.json) nor an OCI image layout (index.json)",
        ))
    }

    fn import_docker(&self, archive: &Archive) -> Result<Vec<Image>> {
        let bytes = archive.bytes("manifest.json", "manifest.json")?;
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(bytes).map_err(|e| StoreError::invalid("manifest.json", e))?;
        let mut images = Vec::new();
        for entry in entries {
            let config = archive.bytes(&entry.config, "config")?.to_vec();
            let config_digest = Digest::of_bytes(&config);
            let mut layers = Vec::new();
            for l in &entry.layers {
                let (_, c) = archive.resolve(l).ok_or_else(|| {
                    StoreError::invalid("manifest.json", format!("layer {l} is not in the archive"))
                })?;
                layers.push(self.layer_record(c, None, l)?);
            }
            let mut refs = Vec::new();
            for t in entry.repo_tags.unwrap_or_default() {
                refs.push(Reference::parse(&t)?.to_string());
            }
            let f = Fetched {
                config_digest,
                config,
                manifest_digest: None,
                layers,
            };
            images.push(self.commit_image(&f, &refs)?);
        }
        Ok(images)
    }

    /// A layer record from a stored archive file, checked against its descriptor if any.
    fn layer_record(
        &self,
        c: &Committed,
        desc: Option<&Descriptor>,
        what: &str,
    ) -> Result<LayerRecord> {
        let diff_id = c.diff_id.clone().ok_or_else(|| {
            StoreError::invalid(format!("layer {what}"), "cannot be decompressed")
        })?;
        let media_type = match desc {
            Some(d) => {
                if d.size() != c.size {
                    return Err(StoreError::SizeMismatch {
                        what: format!("layer {}", d.digest()),
                        expected: d.size(),
                        actual: c.size,
                    });
                }
                d.media_type().to_string()
            }
            None => {
                let mut head = [0u8; 4];
                let n = self
                    .content()
                    .open(&c.digest)?
                    .read(&mut head)
                    .map_err(|e| StoreError::io("read blob", self.content().path(&c.digest), e))?;
                match Compression::sniff(&head[..n]) {
                    Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                    Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
                }
                .to_string()
            }
        };
        Ok(LayerRecord {
            blob_digest: c.digest.to_string(),
            blob_size: c.size,
            media_type,
            diff_id: diff_id.to_string(),
            diff_size: c.diff_size.unwrap_or(0),
        })
    }

    fn import_oci(&self, archive: &Archive) -> Result<Vec<Image>> {
        let index: ImageIndex = serde_json::from_slice(archive.bytes("index.json", "index.json")?)
            .map_err(|e| StoreError::invalid("index.json", e))?;
        let mut images = Vec::new();
        for desc in index.manifests() {
            let annotations = desc.annotations().clone().unwrap_or_default();
            let name = annotations
                .get("io.containerd.image.name")
                .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
                .and_then(|n| {
                    // A bare tag ("latest") names no repository: such an image loads unnamed.
                    if n.contains('/') || n.contains(':') {
                        Reference::parse(n).ok()
                    } else {
                        None
                    }
                });
            let manifest_desc = self.oci_manifest_for(archive, desc)?;
            let (manifest_digest, manifest_bytes) = self.oci_blob(archive, &manifest_desc)?;
            let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| StoreError::invalid(format!("manifest {manifest_digest}"), e))?;
            let (config_digest, config) = self.oci_blob(archive, manifest.config())?;
            let mut layers = Vec::new();
            for l in manifest.layers() {
                let d = Digest::try_from(l.digest())?;
                let (_, c) = archive.resolve(&Archive::blob_path(&d)).ok_or_else(|| {
                    StoreError::invalid("archive", format!("layer {d} is missing"))
                })?;
                layers.push(self.layer_record(c, Some(l), &d.to_string())?);
            }
            let mut refs = Vec::new();
            if let Some(r) = &name {
                refs.push(r.to_string());
                if r.digest().is_none() {
                    refs.push(r.with_digest(manifest_digest.clone()).to_string());
                }
            }
            let f = Fetched {
                config_digest,
                config,
                manifest_digest: Some(manifest_digest),
                layers,
            };
            images.push(self.commit_image(&f, &refs)?);
        }
        Ok(images)
    }

    /// The image manifest a descriptor names, choosing the host platform from a nested index.
    fn oci_manifest_for(&self, archive: &Archive, desc: &Descriptor) -> Result<Descriptor> {
        let mut desc = desc.clone();
        for _ in 0..4 {
            if *desc.media_type() != MediaType::ImageIndex
                && desc.media_type().to_string()
                    != "application/vnd.docker.distribution.manifest.list.v2+json"
            {
                return Ok(desc);
            }
            let (d, bytes) = self.oci_blob(archive, &desc)?;
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::invalid(format!("index {d}"), e))?;
            desc = platform::select(&Platform::host(), index.manifests())
                .map_err(|e| StoreError::invalid(format!("index {d}"), e))?
                .clone();
        }
        Err(StoreError::invalid("index.json", "indexes nest too deeply"))
    }

    /// A small blob of the layout, checked against its descriptor.
    fn oci_blob(&self, archive: &Archive, desc: &Descriptor) -> Result<(Digest, Vec<u8>)> {
        let d = Digest::try_from(desc.digest())?;
        let bytes = archive.bytes(&Archive::blob_path(&d), "blob")?;
        if bytes.len() as u64 != desc.size() {
            return Err(StoreError::SizeMismatch {
                what: format!("blob {d}"),
                expected: desc.size(),
                actual: bytes.len() as u64,
            });
        }
        Ok((d, bytes.to_vec()))
    }
}
