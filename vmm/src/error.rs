//! Host-side errors building or running a VM.

use crate::boot::loader::LoadError;
use crate::boot::regs::RegsError;
use crate::config::ConfigError;
use crate::cpu::CpuError;
use crate::memory::MemoryError;

/// Anything on the host side that stops a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initramfs or command line could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A vCPU could not be configured.
    #[error("vCPU {0}: {1}")]
    Cpu(u8, CpuError),
    /// Boot registers could not be set.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// A KVM ioctl failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// A device could not be created or wired.
    #[error("device {0}: {1}")]
    Device(String, String),
    /// A host I/O operation failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A seccomp filter could not be compiled or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}
