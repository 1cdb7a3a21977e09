//! `vessel save`: a docker-archive (`docker save` format) that `docker load` and
//! skopeo accept: `manifest.json`, `repositories`, `<config-hex>.json` and one
//! uncompressed `<diff_id-hex>/layer.tar` per distinct layer.
//!
//! The archive is written to a temp file beside the output and renamed when
//! complete, so a failed save never leaves a truncated archive behind.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::compression;
use crate::content::temp_name;
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::reference::Reference;
use crate::store::Store;

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

impl Store {
    /// Writes the named images to `output` as one docker-archive.
    pub fn save(&self, names: &[String], output: &Path) -> Result<()> {
        // Each image with the tags to record: the name given when it is a tag,
        // else every tag the image has.
        let mut chosen: Vec<(Image, Vec<String>)> = Vec::new();
        for name in names {
            let img = self.image(name)?;
            let tags: Vec<String> = match Reference::parse(name) {
                Ok(r) if r.digest().is_none() && img.references.contains(&r.familiar()) => {
                    vec![r.familiar()]
                }
                _ => img.references.clone(),
            };
            match chosen.iter_mut().find(|(i, _)| i.id == img.id) {
                Some((_, t)) => {
                    for tag in tags {
                        if !t.contains(&tag) {
                            t.push(tag);
                        }
                    }
                }
                None => chosen.push((img, tags)),
            }
        }
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(temp_name("save"));
        let result = self.write_archive(&chosen, &tmp);
        let result = result.and_then(|()| {
            std::fs::rename(&tmp, output)
                .map_err(|e| StoreError::io("rename archive to", output, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_archive(&self, chosen: &[(Image, Vec<String>)], path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| StoreError::io("create", path, e))?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
        let werr = |e: std::io::Error| StoreError::io("write", path, e);
        let mut written_layers = HashSet::new();
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (img, tags) in chosen {
            let config_digest = Digest::parse(&img.id)?;
            let config = self.content().read(&config_digest)?;
            let config_name = format!("{}.json", config_digest.hex());
            tar.append_data(
                &mut header(config.len() as u64, 0o644),
                &config_name,
                &config[..],
            )
            .map_err(werr)?;
            let mut layer_names = Vec::new();
            for l in &img.layers {
                let diff = Digest::parse(&l.diff_id)?;
                let name = format!("{}/layer.tar", diff.hex());
                if written_layers.insert(diff.clone()) {
                    let blob = Digest::parse(&l.blob_digest)?;
                    let f = self.content().open(&blob)?;
                    let (_, reader) =
                        compression::decompress_sniffed(BufReader::with_capacity(1 << 20, f))
                            .map_err(|e| {
                                StoreError::io("read blob", self.content().path(&blob), e)
                            })?;
                    let mut counted = crate::digest::HashingReader::new(reader);
                    tar.append_data(&mut header(l.diff_size, 0o644), &name, &mut counted)
                        .map_err(werr)?;
                    let (got, n) = counted
                        .finish()
                        .map_err(|e| StoreError::io("read blob", self.content().path(&blob), e))?;
                    if got != diff || n != l.diff_size {
                        return Err(StoreError::DigestMismatch {
                            what: format!(
                                "layer {} of image {} (stored blob)",
                                l.blob_digest, img.id
                            ),
                            expected: diff.to_string(),
                            actual: got.to_string(),
                        });
                    }
                }
                layer_names.push(name);
            }
            for t in tags {
                if let Ok(r) = Reference::parse(t) {
                    if let Some(tag) = r.tag() {
                        repositories
                            .entry(r.familiar_name())
                            .or_default()
                            .insert(tag.to_string(), config_digest.hex().to_string());
                    }
                }
            }
            manifest.push(json!({
                "Config": config_name,
                "RepoTags": tags,
                "Layers": layer_names,
            }));
        }
        for (name, value) in [
            ("manifest.json", serde_json::to_vec(&manifest)),
            ("repositories", serde_json::to_vec(&repositories)),
        ] {
            let bytes = value.map_err(|e| StoreError::invalid(name, e))?;
            tar.append_data(&mut header(bytes.len() as u64, 0o644), name, &bytes[..])
                .map_err(werr)?;
        }
        let mut w = tar.into_inner().map_err(werr)?;
        w.flush().map_err(werr)?;
        let f = w.into_inner().map_err(|e| werr(e.into_error()))?;
        f.sync_all().map_err(werr)?;
        Ok(())
    }
}
