//! vessel-vmm: a minimal KVM virtual machine monitor built on the rust-vmm crates.
//!
//! It boots a Linux kernel with an initramfs, a serial port, virtio-blk disks and a
//! virtio-console channel on virtio-mmio, described to the guest by ACPI tables.
//! It knows nothing of images or containers.

pub mod acpi;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod device_manager;
pub mod devices;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod memory;
pub mod seccomp;
pub mod tiny_guest;
pub mod vcpu;
pub mod virtio_config;
pub mod vm;

pub use config::VmConfig;
pub use error::VmmError;
pub use exit::ExitReason;
pub use vm::{Vm, VmHandle};
