//! An image as the rest of vessel sees it: ID, names, config and unpacked rootfs.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use oci_spec::image::ImageConfiguration;

use crate::metadata::LayerRecord;

/// An image in the store, ready to run.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>` of the config: the image ID.
    pub id: String,
    /// Tags pointing at it, familiar form (`alpine:3.20`, `127.0.0.1:5000/x:1`).
    pub references: Vec<String>,
    /// Digest references (`alpine@sha256:…`), familiar form.
    pub repo_digests: Vec<String>,
    /// The image config (Env, Entrypoint, Cmd, WorkingDir, User, …).
    pub config: ImageConfiguration,
    /// The unpacked root filesystem (read-only by convention: mount it as a lower layer).
    pub rootfs: PathBuf,
    /// The config's `created` time, when it has one.
    pub created: Option<DateTime<Utc>>,
    /// Uncompressed size of its layers in bytes.
    pub size: u64,
    /// Its layers, base first.
    pub layers: Vec<LayerRecord>,
    /// The manifest it was pulled or loaded with, when known.
    pub manifest_digest: Option<String>,
    /// When it entered this store (unix seconds).
    pub added: i64,
}

impl Image {
    /// The 12-digit short ID docker shows.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }

    /// The ID's hex digits without `sha256:`.
    pub fn hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
}
