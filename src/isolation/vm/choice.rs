//! Choosing the VMM backend: the built-in VMM where KVM can run a full Linux guest, QEMU
//! where it cannot (with KVM acceleration if usable, else TCG emulation).
//!
//! Whether this host's KVM boots Linux is decided from what is known about it, not by a
//! slow trial boot: the nested, page-table-based `kvm_pvm` module emulates the guest's
//! kernel mode and stops a Linux boot with an emulation failure (see
//! docs/vm-mode.md). `VESSEL_KVM_BOOTS_LINUX=1` or `=0` overrides the detection.

use std::fmt;
use std::path::Path;

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// vessel's own VMM (`vessel-vmm`), on KVM.
    Builtin,
    /// `qemu-system-x86_64 -M microvm`.
    Qemu {
        /// Use KVM (otherwise TCG emulation).
        kvm: bool,
    },
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vmm::Builtin => f.write_str("builtin (vessel-vmm on KVM)"),
            Vmm::Qemu { kvm: true } => f.write_str("qemu (microvm, KVM)"),
            Vmm::Qemu { kvm: false } => f.write_str("qemu (microvm, TCG emulation)"),
        }
    }
}

/// A backend decision and the reason for it, for `vessel kernel` and `--debug`.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The VMM.
    pub vmm: Vmm,
    /// Why.
    pub reason: String,
}

/// What this host's KVM can do.
#[derive(Debug, Clone)]
pub struct KvmState {
    /// `/dev/kvm` opens read-write.
    pub usable: bool,
    /// It can run a full Linux guest.
    pub boots_linux: bool,
    /// Explanation.
    pub detail: String,
}

/// Probes `/dev/kvm`.
pub fn kvm_state() -> KvmState {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if let Ok(v) = std::env::var("VESSEL_KVM_BOOTS_LINUX") {
        let yes = v == "1";
        return KvmState {
            usable,
            boots_linux: usable && yes,
            detail: format!("VESSEL_KVM_BOOTS_LINUX={v}"),
        };
    }
    if !usable {
        return KvmState {
            usable,
            boots_linux: false,
            detail: "/dev/kvm is missing or not accessible".into(),
        };
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return KvmState {
            usable,
            boots_linux: false,
            detail: "/dev/kvm is kvm_pvm, a nested KVM that emulates the guest's kernel mode; \
                     Linux guests stop with an emulation failure early in boot (the built-in \
                     VMM runs in a guest with a real KVM: scripts/nested-kvm.sh -- COMMAND, \
                     see docs/vmm.md)"
                .into(),
        };
    }
    KvmState {
        usable,
        boots_linux: true,
        detail: "/dev/kvm is hardware-assisted KVM".into(),
    }
}

/// Whether `qemu-system-x86_64` is on PATH.
pub fn qemu_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(super::qemu::BINARY).is_file())
    })
}

/// Resolves `--vmm auto|builtin|qemu` for this host.
pub fn choose(requested: &str) -> Result<Choice, String> {
    let kvm = kvm_state();
    let builtin_bin = super::builtin::binary();
    let no_vm =
        "no VM can run here; `--isolation container` runs the image on the host kernel instead";
    match requested {
        "" | "auto" => {
            if kvm.boots_linux && builtin_bin.is_ok() {
                Ok(Choice {
                    vmm: Vmm::Builtin,
                    reason: format!("auto: {}", kvm.detail),
                })
            } else if qemu_available() {
                let why = if kvm.boots_linux {
                    "vessel-vmm not found".to_string()
                } else {
                    kvm.detail.clone()
                };
                Ok(Choice {
                    vmm: Vmm::Qemu {
                        kvm: kvm.boots_linux,
                    },
                    reason: format!("auto: {why}"),
                })
            } else if kvm.boots_linux {
                Err(format!(
                    "{}; qemu-system-x86_64 is not installed either; {no_vm}",
                    builtin_bin.err().unwrap_or_default()
                ))
            } else {
                Err(format!(
                    "the built-in VMM cannot run Linux here ({}) and qemu-system-x86_64 is not installed; {no_vm}",
                    kvm.detail
                ))
            }
        }
        "builtin" => {
            if !kvm.boots_linux {
                return Err(format!(
                    "--vmm builtin needs a KVM that runs a full Linux guest: {}; use --vmm qemu (emulated) or `--isolation container`",
                    kvm.detail
                ));
            }
            builtin_bin?;
            Ok(Choice {
                vmm: Vmm::Builtin,
                reason: format!("--vmm builtin: {}", kvm.detail),
            })
        }
        "qemu" => {
            if !qemu_available() {
                return Err(format!(
                    "--vmm qemu: qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86); {no_vm}"
                ));
            }
            Ok(Choice {
                vmm: Vmm::Qemu {
                    kvm: kvm.boots_linux,
                },
                reason: format!("--vmm qemu: {}", kvm.detail),
            })
        }
        other => Err(format!("unknown --vmm {other:?} (auto, builtin or qemu)")),
    }
}
