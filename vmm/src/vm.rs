//! A VM: KVM VM with in-kernel irqchip and PIT, guest memory, devices, the loaded
//! kernel and configured vCPUs. `Vm::new` builds it; `Vm::run` starts the vCPU
//! threads and runs the event loop until the VM ends.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::acpi::{create_acpi_tables, MmioDeviceInfo};
use crate::boot::loader::{self, LoadRequest};
use crate::boot::regs::setup_boot_vcpu;
use crate::config::{KernelFormat, SerialOutput, VmConfig};
use crate::device_manager::Devices;
use crate::devices::virtio::VirtioDevice;
use crate::error::VmmError;
use crate::event_loop::EventLoop;
use crate::exit::ExitReason;
use crate::memory::{self, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::seccomp::{self, Filters};
use crate::vcpu::{self, ExitSignal, VcpuContext};
use crate::virtio_config;

/// How long `run` waits for vCPU threads to leave `KVM_RUN` after the VM ends.
const VCPU_STOP_PATIENCE: Duration = Duration::from_secs(2);

/// A built, not yet running VM.
pub struct Vm {
    // Declared before the VmFd so they are dropped (and unmapped) after it.
    vcpus: Vec<VcpuFd>,
    devices: Devices,
    exit: Arc<ExitSignal>,
    timeout: Option<Duration>,
    vm: VmFd,
    mem: GuestMemoryMmap,
}

/// Ends a VM from another thread.
#[derive(Clone, Debug)]
pub struct VmHandle {
    exit: Arc<ExitSignal>,
}

impl VmHandle {
    /// Stops the VM; `run` returns [`ExitReason::Stopped`] unless it already ended.
    ///
    /// Lock-free, so it may be called from a signal handler.
    pub fn stop(&self) {
        self.exit.request_stop();
    }
}

/// A line-buffered writer that ignores explicit flushes: the UART flushes after every
/// byte it transmits, which would make each character of the kernel log a write(2)
/// (seen with strace: the boot log at loglevel 7 slowed the boot by seconds).
struct LinesOnly<W: Write>(std::io::LineWriter<W>);

impl<W: Write> Write for LinesOnly<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_serial(out: &SerialOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match out {
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        // Line-buffered: the kernel log is line-oriented, and one write(2) per byte
        // would cost a syscall per character. The buffer is flushed when the VM
        // (and so the serial device) is dropped at the end of `run`.
        SerialOutput::File { path } => Box::new(LinesOnly(std::io::LineWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| VmmError::Io("opening the serial output file", e))?,
        ))),
    })
}

impl Vm {
    /// Builds the VM described by `config`, with serial output per `config.serial`.
    pub fn new(config: &VmConfig) -> Result<Self, VmmError> {
        let out = open_serial(&config.serial)?;
        Self::with_serial(config, out)
    }

    /// Builds the VM with the serial port writing to `serial_out` (tests, embedding).
    pub fn with_serial(
        config: &VmConfig,
        serial_out: Box<dyn Write + Send>,
    ) -> Result<Self, VmmError> {
        Self::with_parts(config, serial_out, Vec::new())
    }

    /// Builds the VM with the serial port writing to `serial_out` and `extra` virtio
    /// devices placed after the ones `config` asks for (tests, embedding).
    pub fn with_parts(
        config: &VmConfig,
        serial_out: Box<dyn Write + Send>,
        extra: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, VmmError> {
        config.validate()?;
        let mut virtio = virtio_config::virtio_devices(config)?;
        virtio.extend(extra);
        vcpu::install_kick_handler()?;
        let kvm = Kvm::new().map_err(|e| VmmError::Kvm("open /dev/kvm", e))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
        // vhost-user backends map guest memory themselves: it must be shared.
        let mem = if config.filesystems.is_empty() {
            memory::create_guest_memory(config.memory_mib)?
        } else {
            memory::create_shared_guest_memory(config.memory_mib)?
        };
        register_memory(&vm, &mem)?;
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmmError::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        if !crate::cpu::pmu::deny_pmu_msrs(&vm)
            .map_err(|e| VmmError::Kvm("KVM_X86_SET_MSR_FILTER", e))?
        {
            log::debug!("KVM has no MSR filter: the guest's PMU probe reaches KVM");
        }
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;

        let devices = Devices::new(&vm, &mem, serial_out, virtio)?;
        // Raw images are not ACPI-aware; Linux needs the tables to find its devices.
        let mut cmdline = std::borrow::Cow::Borrowed(config.cmdline.as_str());
        let rsdp = match config.kernel_format {
            KernelFormat::Linux => {
                let mmio: Vec<MmioDeviceInfo> = devices
                    .slots
                    .iter()
                    .map(|s| MmioDeviceInfo {
                        base: s.base,
                        size: s.len,
                        irq: s.gsi,
                    })
                    .collect();
                if config.virtio_mmio_cmdline {
                    cmdline = kernel_cmdline(&config.cmdline, &mmio).into();
                }
                let rsdp = create_acpi_tables(&mem, config.vcpus, &mmio)
                    .map_err(|e| VmmError::Device("ACPI tables".into(), e.to_string()))?;
                Some(rsdp.0)
            }
            KernelFormat::Raw { .. } => None,
        };
        let plan = loader::load(
            &mem,
            &LoadRequest {
                kernel: &config.kernel,
                format: &config.kernel_format,
                initrd: config.initrd.as_deref(),
                cmdline: &cmdline,
                memory_mib: config.memory_mib,
                rsdp,
            },
        )?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
            crate::cpu::configure(&fd, id, config.vcpus, &supported)
                .map_err(|e| VmmError::Cpu(id, e))?;
            if id == 0 {
                setup_boot_vcpu(&fd, &mem, &plan)?;
            }
            vcpus.push(fd);
        }
        Ok(Vm {
            vcpus,
            devices,
            exit: Arc::new(ExitSignal::new().map_err(|e| VmmError::Io("eventfd", e))?),
            timeout: config.timeout(),
            vm,
            mem,
        })
    }

    /// A handle that can stop this VM from another thread, before or during `run`.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            exit: self.exit.clone(),
        }
    }

    /// The KVM VM fd (for tests and embedding).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Runs the VM until it ends; returns why.
    pub fn run(self) -> Result<ExitReason, VmmError> {
        self.run_with(None)
    }

    /// Runs the VM with each thread confined by its seccomp filter (the `vessel-vmm`
    /// binary's way): vCPU threads install theirs, then wait until this thread has
    /// installed its own, so no guest instruction runs before every filter is in place. A
    /// filter that cannot be installed ends the VM before the guest runs.
    pub fn run_with(mut self, filters: Option<Arc<Filters>>) -> Result<ExitReason, VmmError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut threads = Vec::with_capacity(self.vcpus.len());
        // Set (and each vCPU thread unparked) once this thread's filter is installed.
        let go = Arc::new(std::sync::OnceLock::<()>::new());
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            let ctx = VcpuContext {
                id: id as u8,
                io_bus: self.devices.io_bus.clone(),
                mmio_bus: self.devices.mmio_bus.clone(),
                exit: self.exit.clone(),
                mem: self.mem.clone(),
            };
            let filters = filters.clone();
            let go = go.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(f) = filters {
                        if let Err(e) = seccomp::apply(&f.vcpu) {
                            ctx.exit.report(Err(e));
                            return;
                        }
                        seccomp::selftest("vcpu");
                    }
                    // park may wake spuriously: wait for the flag itself.
                    while go.get().is_none() {
                        std::thread::park();
                    }
                    vcpu::run_vcpu(fd, ctx)
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.exit
                        .report(Err(VmmError::Io("spawning a vCPU thread", e)));
                    break;
                }
            }
        }
        if let Some(f) = &filters {
            if let Err(e) = seccomp::apply(&f.main) {
                self.exit.report(Err(e));
            }
            seccomp::selftest("main");
        }
        let _ = go.set(());
        for t in &threads {
            t.thread().unpark();
        }
        let outcome = EventLoop {
            exit: &self.exit,
            poweroff_evt: &self.devices.poweroff_evt,
            reset_evt: &self.devices.reset_evt,
            transports: &self.devices.transports,
            deadline,
        }
        .run();
        // Whatever ended the loop, make the vCPUs stop; a vCPU that reported first
        // keeps its reason (first report wins), which the loop already returned.
        self.exit.report(Ok(ExitReason::Stopped));
        vcpu::stop_vcpus(threads, VCPU_STOP_PATIENCE);
        outcome
    }
}

/// `base` followed by one `virtio_mmio.device=` parameter per window: the command-line
/// fallback for kernels that read devices from there instead of ACPI.
fn kernel_cmdline(base: &str, mmio: &[MmioDeviceInfo]) -> String {
    let mut line = base.trim_end().to_string();
    for m in mmio {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&m.kernel_cmdline_arg());
    }
    line
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`. The Vm drops its
        // clone only after the VmFd, and every vCPU thread (the only thing that can
        // still enter the guest after that) holds a clone of its own, so the slot
        // never points at unmapped or reused host memory while the guest can run.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_fallback_names_every_window() {
        let mmio = [
            MmioDeviceInfo {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        assert_eq!(
            kernel_cmdline("console=ttyS0 ", &mmio),
            "console=ttyS0 virtio_mmio.device=0x1000@0xd0000000:5 \
             virtio_mmio.device=0x1000@0xd0001000:6"
        );
        assert_eq!(
            kernel_cmdline("", &mmio[..1]),
            "virtio_mmio.device=0x1000@0xd0000000:5"
        );
        assert_eq!(kernel_cmdline("quiet", &[]), "quiet");
    }

    #[test]
    fn cmdline_fallback_is_off_unless_asked() {
        let cfg = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
        assert!(!cfg.virtio_mmio_cmdline);
        let cfg = VmConfig::from_json(r#"{"kernel": "/k", "virtio_mmio_cmdline": true}"#).unwrap();
        assert!(cfg.virtio_mmio_cmdline);
    }
}
