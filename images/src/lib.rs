//! vessel-images: image references, registry pull, docker-archive and OCI-layout
//! load/save, a content-addressed blob store with image metadata, and safe layer
//! unpacking. It knows nothing of VMs or namespaces.

pub mod compression;
pub mod digest;
pub mod disk;
pub mod platform;
pub mod reference;
pub mod unpack;
