//! vCPU threads: each runs `KVM_RUN` in a loop, dispatches port and MMIO exits to
//! the buses, and reports the exits that end the VM to the event loop.
//!
//! Nothing here trusts exit data: addresses and lengths come from the guest, so an
//! access no device claims reads as all-ones and is otherwise ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::Bus;
use crate::error::VmmError;
use crate::exit::ExitReason;

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
const SYSTEM_EVENT_RESET: u32 = 2;
/// `KVM_SYSTEM_EVENT_CRASH`.
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The outcome of a VM, shared between vCPU threads, the event loop and stop
/// handles. The first reported outcome wins.
#[derive(Debug)]
pub struct ExitSignal {
    outcome: Mutex<Option<Result<ExitReason, VmmError>>>,
    stopping: AtomicBool,
    evt: EventFd,
    stop_evt: EventFd,
}

impl ExitSignal {
    /// A signal whose eventfd the event loop watches.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `outcome` unless one is already recorded, and wakes the event loop.
    pub fn report(&self, outcome: Result<ExitReason, VmmError>) {
        {
            let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        // The counter saturating (EAGAIN) still leaves the eventfd readable.
        let _ = self.evt.write(1);
    }

    /// Asks the VM to stop, without taking any lock: safe from a signal handler
    /// (it only stores an atomic and writes an eventfd).
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_evt.write(1);
    }

    /// The eventfd [`ExitSignal::request_stop`] writes.
    pub fn stop_eventfd(&self) -> &EventFd {
        &self.stop_evt
    }

    /// Whether the VM is ending.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Takes the recorded outcome.
    pub fn take(&self) -> Option<Result<ExitReason, VmmError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The eventfd signalled on every report.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    /// vCPU index (also its APIC ID).
    pub id: u8,
    /// Port-I/O bus.
    pub io_bus: Arc<Bus>,
    /// MMIO bus.
    pub mmio_bus: Arc<Bus>,
    /// Where to report the end of the VM.
    pub exit: Arc<ExitSignal>,
    /// Keeps guest RAM mapped while this vCPU can still run: its KVM memory slots
    /// point into this mapping, and a vCPU that outlives `Vm::run` (one that did
    /// not leave `KVM_RUN` in time) must never see that address range reused.
    pub mem: vm_memory::GuestMemoryMmap,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process. Its only purpose is that the
/// signal interrupts `KVM_RUN` with EINTR instead of killing the process.
pub fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler).map_err(|e| {
            VmmError::Io(
                "installing the vCPU kick signal handler",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        });
    });
    result
}

/// Runs one vCPU until the VM ends.
pub fn run_vcpu(mut fd: VcpuFd, ctx: VcpuContext) {
    let mut exits = 0u64;
    while !ctx.exit.stopping() {
        exits += 1;
        if let Some(outcome) = run_once(&mut fd, &ctx) {
            ctx.exit.report(outcome);
            return;
        }
    }
    if std::env::var_os("VESSEL_VMM_TRACE").is_some() {
        eprintln!(
            "vcpu{} exits {exits} regs {:x?} sregs {:x?}",
            ctx.id,
            fd.get_regs(),
            fd.get_sregs().map(|s| (s.cr0, s.cr3, s.cr4, s.efer, s.cs))
        );
    }
}

/// One `KVM_RUN`; `Some` when the VM must end.
fn run_once(fd: &mut VcpuFd, ctx: &VcpuContext) -> Option<Result<ExitReason, VmmError>> {
    let vcpu = ctx.id;
    let exit = match fd.run() {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return None,
        Err(e) => return Some(Err(VmmError::Kvm("KVM_RUN", e))),
    };
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.io_bus.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            ctx.io_bus.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio_bus.read(addr, data) {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio_bus.write(addr, data);
        }
        // With the in-kernel LAPIC, HLT stays in KVM; an exit here is spurious.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        VcpuExit::Shutdown => return Some(Ok(ExitReason::TripleFault { vcpu })),
        VcpuExit::FailEntry(reason, _cpu) => {
            return Some(Ok(ExitReason::FailEntry { vcpu, reason }))
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(Ok(match kind {
                SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                SYSTEM_EVENT_RESET => ExitReason::Reset,
                SYSTEM_EVENT_CRASH => ExitReason::UnhandledExit {
                    vcpu,
                    exit: "system event: guest crash".into(),
                },
                other => ExitReason::UnhandledExit {
                    vcpu,
                    exit: format!("system event {other}"),
                },
            }))
        }
        VcpuExit::InternalError => return Some(Ok(internal_error(fd, vcpu))),
        other => {
            return Some(Ok(ExitReason::UnhandledExit {
                vcpu,
                exit: format!("{other:?}"),
            }))
        }
    }
    None
}

fn internal_error(fd: &mut VcpuFd, vcpu: u8) -> ExitReason {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the
    // `internal` member of the union; it is plain integers.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let data = internal.data[..n].to_vec();
    let rip = fd.get_regs().ok().map(|r| r.rip);
    ExitReason::InternalError {
        vcpu,
        suberror: internal.suberror,
        data,
        rip,
    }
}

/// Kicks vCPU threads out of `KVM_RUN` until they have all returned, for up to
/// `patience`; threads that do not return in time are left detached.
pub fn stop_vcpus(threads: Vec<JoinHandle<()>>, patience: Duration) {
    let deadline = Instant::now() + patience;
    let mut pending = threads;
    while !pending.is_empty() && Instant::now() < deadline {
        // A kick can land just before a thread re-enters KVM_RUN; repeating it covers
        // that window without a per-thread immediate_exit pointer.
        for t in &pending {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        pending = rest;
    }
    if !pending.is_empty() {
        log::warn!("{} vCPU thread(s) did not stop in time", pending.len());
    }
}
