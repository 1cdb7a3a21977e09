//! How the host names the guest's two disks: virtio-blk serials both sides agree on, so
//! the agent finds its disks without depending on probe order.

/// Serial of the read-only image disk.
pub const IMAGE_SERIAL: &str = "vessel-image";
/// Serial of the writable container disk.
pub const CONTAINER_SERIAL: &str = "vessel-container";
