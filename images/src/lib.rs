//! vessel-images: image references, registry pull, docker-archive and OCI-layout
//! load/save, a content-addressed blob store with image metadata, and safe layer
//! unpacking. It knows nothing of VMs or namespaces.
//!
//! The entry point for the rest of vessel is [`Store`]: `Store::open(root)`, then
//! `store.image(name)`, `store.pull_blocking(..)`, `store.image_disk(&image)`,
//! leases with `store.add_lease`/`store.remove_lease`.

pub mod compression;
pub mod digest;
pub mod disk;
pub mod platform;
pub mod reference;
pub mod unpack;

pub mod check;
pub mod content;
pub mod error;
pub mod image;
mod image_disk;
mod import;
pub mod inspect;
pub mod interrupt;
pub mod list;
pub mod load;
pub mod metadata;
pub mod progress;
pub mod pull;
pub mod remove;
mod rootfs;
pub mod save;
pub mod store;
pub mod usage;

pub use error::StoreError;
pub use image::Image;
pub use store::Store;
