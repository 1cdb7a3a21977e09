//! vessel-vmm: a minimal KVM virtual machine monitor built on the rust-vmm crates.
//!
//! It boots a Linux kernel with an initramfs, a serial port, virtio-blk disks and a
//! virtio-console channel on virtio-mmio, described to the guest by ACPI tables.
//! It knows nothing of images or containers.

pub mod acpi;
pub mod devices;
