//! Recording an image whose blobs are all in the content store: check the
//! config against its layers, unpack the rootfs, then write the metadata.
//! Pull and load both end here, so an image is visible only once complete.

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::metadata::{self, ImageRecord, LayerRecord};
use crate::store::Store;

/// A fully fetched image, ready to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// Digest of the config blob (already stored).
    pub config_digest: Digest,
    /// The config bytes.
    pub config: Vec<u8>,
    /// The manifest blob's digest (already stored), when there is one.
    pub manifest_digest: Option<Digest>,
    /// Layers (already stored), base first, with verified diff_ids.
    pub layers: Vec<LayerRecord>,
}

/// The fields of a config the store needs.
#[derive(serde::Deserialize)]
struct ConfigHead {
    created: Option<String>,
    rootfs: Option<RootFsHead>,
}

#[derive(serde::Deserialize)]
struct RootFsHead {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The diff_ids a config lists (and its `created`).
pub(crate) fn config_diff_ids(config: &[u8], what: &str) -> Result<(Vec<Digest>, Option<String>)> {
    let head: ConfigHead =
        serde_json::from_slice(config).map_err(|e| StoreError::invalid(what, e))?;
    let ids = head
        .rootfs
        .map(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|s| Digest::parse(s).map_err(StoreError::from))
        .collect::<Result<Vec<_>>>()?;
    Ok((ids, head.created))
}

impl Store {
    /// Unpacks (if needed) and records `f`, pointing `refs` (normalised) at it.
    pub(crate) fn commit_image(&self, f: &Fetched, refs: &[String]) -> Result<Image> {
        let id = f.config_digest.to_string();
        let (diff_ids, created) = config_diff_ids(&f.config, &format!("config {id}"))?;
        // Everything that reads the image later parses the config this way: refuse it
        // now rather than record an image nobody can use.
        oci_spec::image::ImageConfiguration::from_reader(&f.config[..])
            .map_err(|e| StoreError::invalid(format!("config {id}"), e))?;
        if diff_ids.len() != f.layers.len() {
            return Err(StoreError::invalid(
                format!("image {id}"),
                format!(
                    "the config lists {} layers (diff_ids) but the manifest has {}",
                    diff_ids.len(),
                    f.layers.len()
                ),
            ));
        }
        for (want, l) in diff_ids.iter().zip(&f.layers) {
            if want.to_string() != l.diff_id {
                return Err(StoreError::DigestMismatch {
                    what: format!("layer {} (uncompressed diff_id)", l.blob_digest),
                    expected: want.to_string(),
                    actual: l.diff_id.clone(),
                });
            }
        }
        self.ensure_rootfs(&id, &f.layers)?;
        let rec = ImageRecord {
            id: id.clone(),
            config: f.config.clone(),
            manifest_digest: f.manifest_digest.as_ref().map(|d| d.to_string()),
            created,
            added: metadata::now(),
            size: f.layers.iter().map(|l| l.diff_size).sum(),
        };
        metadata::insert_image(&mut self.db(), &rec, &f.layers, refs)?;
        self.image_by_id(&id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }
}
