//! Why a VM ended, and the process exit code for each reason.
//!
//! | code | reason |
//! |-----:|--------|
//! | 0 | guest powered off (ACPI S5 or KVM system event) |
//! | 1 | host-side error (KVM, memory, files, devices) |
//! | 2 | usage or configuration error (binary only) |
//! | 3 | guest reset / reboot (i8042 `0xFE`, ACPI reset register, KVM system event) |
//! | 4 | triple fault (`KVM_EXIT_SHUTDOWN`) |
//! | 5 | KVM internal error (`KVM_EXIT_INTERNAL_ERROR`, e.g. emulation failure) |
//! | 6 | VM entry failed (`KVM_EXIT_FAIL_ENTRY`) |
//! | 7 | stopped by the host (stop handle, SIGTERM/SIGINT) |
//! | 8 | timeout (`timeout_ms` elapsed) |
//! | 9 | an exit this VMM does not handle |
//! | 10 | a thread made a system call its seccomp filter forbids (see [`crate::seccomp`]) |

use std::fmt;

/// `KVM_INTERNAL_ERROR_EMULATION`: KVM could not emulate an instruction.
pub const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_SIMUL_EX`: an exception while delivering another.
pub const KVM_INTERNAL_ERROR_SIMUL_EX: u32 = 2;
/// `KVM_INTERNAL_ERROR_DELIVERY_EV`: an event could not be delivered.
pub const KVM_INTERNAL_ERROR_DELIVERY_EV: u32 = 3;
/// `KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON`: the CPU exited for a reason KVM does not know.
pub const KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: u32 = 4;

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset or reboot; we end the VM instead.
    Reset,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// `kvm_run.internal.data[..ndata]`.
        data: Vec<u64>,
        /// Guest RIP at the exit, when it could be read.
        rip: Option<u64>,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// The host stopped the VM.
    Stopped,
    /// The configured timeout elapsed.
    Timeout,
    /// An exit reason this VMM does not handle.
    UnhandledExit {
        /// The vCPU.
        vcpu: u8,
        /// What kvm-ioctls reported.
        exit: String,
    },
}

impl ExitReason {
    /// The `vessel-vmm` process exit code for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset => 3,
            ExitReason::TripleFault { .. } => 4,
            ExitReason::InternalError { .. } => 5,
            ExitReason::FailEntry { .. } => 6,
            ExitReason::Stopped => 7,
            ExitReason::Timeout => 8,
            ExitReason::UnhandledExit { .. } => 9,
        }
    }
}

/// Exit code for a host-side error.
pub const EXIT_HOST_ERROR: i32 = 1;
/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when a thread broke its seccomp filter (the SIGSYS reporter's).
pub const EXIT_SECCOMP: i32 = 10;

/// The instruction bytes KVM attaches to an emulation failure
/// (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`): `data[0]` holds the
/// flags, then a byte with the length and up to 15 instruction bytes.
pub fn emulation_failure_bytes(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION || data.first()? & 1 == 0 {
        return None;
    }
    let raw: Vec<u8> = data
        .iter()
        .skip(1)
        .take(2)
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let (&len, bytes) = raw.split_first()?;
    Some(bytes[..usize::from(len).min(bytes.len())].to_vec())
}

/// What a KVM internal-error suberror means.
pub fn describe_suberror(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => {
            "emulation failure: KVM could not emulate a guest instruction (on a nested, \
             emulating KVM such as kvm_pvm this ends a Linux boot shortly after its banner)"
        }
        KVM_INTERNAL_ERROR_SIMUL_EX => "an exception occurred while delivering another exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => {
            "an event (interrupt or exception) could not be delivered"
        }
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => {
            "the CPU left the guest for a reason KVM does not handle"
        }
        _ => "unknown KVM internal error",
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest requested a reset"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError {
                vcpu,
                suberror,
                data,
                rip,
            } => {
                write!(
                    f,
                    "vCPU {vcpu}: KVM internal error, suberror {suberror} ({})",
                    describe_suberror(*suberror)
                )?;
                if let Some(rip) = rip {
                    write!(f, ", rip {rip:#x}")?;
                }
                if let Some(bytes) = emulation_failure_bytes(*suberror, data) {
                    write!(f, ", instruction bytes")?;
                    for b in bytes {
                        write!(f, " {b:02x}")?;
                    }
                }
                if !data.is_empty() {
                    write!(f, ", data [")?;
                    for (i, d) in data.iter().enumerate() {
                        let sep = if i == 0 { "" } else { " " };
                        write!(f, "{sep}{d:#x}")?;
                    }
                    write!(f, "]")?;
                }
                Ok(())
            }
            ExitReason::FailEntry { vcpu, reason } => write!(
                f,
                "vCPU {vcpu}: VM entry failed, hardware reason {reason:#x}"
            ),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::Timeout => write!(f, "timed out"),
            ExitReason::UnhandledExit { vcpu, exit } => {
                write!(f, "vCPU {vcpu}: unhandled KVM exit {exit}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let reasons = [
            ExitReason::PowerOff,
            ExitReason::Reset,
            ExitReason::TripleFault { vcpu: 0 },
            ExitReason::InternalError {
                vcpu: 0,
                suberror: 1,
                data: vec![],
                rip: None,
            },
            ExitReason::FailEntry { vcpu: 0, reason: 0 },
            ExitReason::Stopped,
            ExitReason::Timeout,
            ExitReason::UnhandledExit {
                vcpu: 0,
                exit: String::new(),
            },
        ];
        let mut codes: Vec<i32> = reasons.iter().map(ExitReason::exit_code).collect();
        codes.extend([EXIT_HOST_ERROR, EXIT_USAGE, EXIT_SECCOMP]);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }

    #[test]
    fn emulation_failure_bytes_are_decoded() {
        // As seen here: kvm_pvm failing `lock cmpxchg16b [rbp+0x20]` in a Linux boot.
        let data = [0x1, 0x7420_4dc7_0f48_f00f, 0x894d_0824_448b_4c66, 0x1000];
        let bytes = emulation_failure_bytes(1, &data).unwrap();
        assert_eq!(bytes.len(), 15);
        assert_eq!(&bytes[..6], &[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20]);
        assert_eq!(emulation_failure_bytes(1, &[0]), None);
        assert_eq!(emulation_failure_bytes(2, &data), None);
        assert_eq!(emulation_failure_bytes(1, &[1]), None);
        // A lying length byte is clamped to what is there.
        assert_eq!(emulation_failure_bytes(1, &[1, 0xff]).unwrap().len(), 7);
    }

    #[test]
    fn internal_error_message_names_the_suberror() {
        let r = ExitReason::InternalError {
            vcpu: 0,
            suberror: 1,
            data: vec![0x10, 0x2],
            rip: Some(0x1000),
        };
        let s = r.to_string();
        assert!(s.contains("suberror 1 (emulation failure"), "{s}");
        assert!(s.contains("rip 0x1000") && s.contains("[0x10 0x2]"), "{s}");
    }
}
