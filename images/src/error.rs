//! The image store's error type.

use std::path::PathBuf;

use crate::digest::DigestError;
use crate::reference::ReferenceError;

/// Everything that can go wrong in the image store, pull, load and save.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No image has this name or ID.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short ID matches more than one image.
    #[error("image ID prefix {0} is ambiguous")]
    Ambiguous(String),
    /// The name is neither a reference nor an image ID.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A digest in a manifest, config or archive is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Content did not match its descriptor.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or layer (names the layer).
        what: String,
        /// The digest the descriptor promised.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// Content size did not match its descriptor.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which blob or layer.
        what: String,
        /// The size the descriptor promised.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A manifest, config, index or archive is not what the format requires.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused or failed a request.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// What went wrong, with the registry's words.
        message: String,
    },
    /// No manifest in an index matches the wanted platform.
    #[error("no image for platform {wanted} in {reference}; available: {available}")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: String,
    },
    /// Unpacking a layer failed (hostile entry, I/O).
    #[error("unpacking layer {layer}: {message}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// Why.
        message: String,
    },
    /// Building the image's ext4 disk failed.
    #[error("building the disk of image {image}: {message}")]
    Disk {
        /// The image ID.
        image: String,
        /// Why.
        message: String,
    },
    /// The operation would remove an image something still uses or several names share.
    #[error("{0}")]
    Conflict(String),
    /// The pull was interrupted (Ctrl-C); the store is left consistent.
    #[error("interrupted")]
    Interrupted,
}

impl StoreError {
    /// An I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An invalid-document error.
    pub fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
