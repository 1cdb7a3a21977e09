//! The QEMU backend: `qemu-system-x86_64 -M microvm`, virtio-mmio devices found by the
//! guest through ACPI, KVM acceleration where it boots Linux, TCG emulation elsewhere.

use std::process::Command;
use vessel_agent::channel::AGENT_PORT;
use vessel_agent::disk::{CONTAINER_SERIAL, IMAGE_SERIAL};

use super::machine_spec::MachineSpec;

/// The TCG translation cache, in MiB: bounded (QEMU's default is 1 GiB) so that the VM's
/// cgroup can hold QEMU to a known overhead.
pub const TCG_CACHE_MIB: u64 = 256;

/// The QEMU binary looked up on PATH.
pub const BINARY: &str = "qemu-system-x86_64";

/// The QEMU command line for `spec`; `sandbox` turns QEMU's own seccomp filter on.
pub fn command(spec: &MachineSpec, kvm: bool, sandbox: bool) -> Command {
    let mut c = Command::new(BINARY);
    // The RTC stays on: without it the Debian kernel's boot takes about 2 s longer here.
    if spec.shares.is_empty() {
        c.args(["-M", "microvm,x-option-roms=off"]);
    } else {
        // vhost-user: virtiofsd maps the guest's memory, so it must be shareable memory;
        // and it speaks virtio 1.x only, which virtio-mmio gives when not legacy.
        c.args(["-M", "microvm,x-option-roms=off,memory-backend=mem"])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ))
            .args(["-global", "virtio-mmio.force-legacy=false"]);
    }
    if kvm {
        // `host`/`max` abort on some nested KVMs setting MSR 0x10a; qemu64 minus cx16 runs.
        c.args(["-accel", "kvm", "-cpu", "qemu64,-cx16"]);
    } else {
        c.args(["-accel", &format!("tcg,tb-size={TCG_CACHE_MIB}")]);
    }
    // QEMU's own seccomp filter on top of the jail's: no obsolete calls, no setuid, no
    // fork/exec, no scheduler or resource changes.
    if sandbox {
        c.args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    c.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-m", &format!("{}M", spec.memory_mib)])
        .args(["-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .args(["-append", &spec.cmdline])
        .arg("-serial")
        .arg(format!("file:{}", spec.console_log.display()))
        .arg("-drive")
        .arg(format!(
            "id=image,file={},format=raw,if=none,readonly=on,rerror=report",
            qemu_escape(&spec.image_disk.to_string_lossy())
        ))
        .arg("-device")
        .arg(format!(
            "virtio-blk-device,drive=image,serial={IMAGE_SERIAL}"
        ))
        .arg("-drive")
        // werror/rerror=report: a write the host cannot store (a full disk) is an I/O
        // error in the guest. QEMU's default for ENOSPC is to pause the VM, silently.
        .arg(format!(
            "id=container,file={},format=raw,if=none,cache=unsafe,werror=report,rerror=report",
            qemu_escape(&spec.container_disk.to_string_lossy())
        ))
        .arg("-device")
        .arg(format!(
            "virtio-blk-device,drive=container,serial={CONTAINER_SERIAL}"
        ))
        // A generic port, not a virtconsole: QEMU drops console output its socket cannot
        // take at once, and throttles (back-pressure to the guest's writer) only ports.
        .args(["-device", "virtio-serial-device,max_ports=2"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={}",
            qemu_escape(&spec.channel.to_string_lossy())
        ))
        .arg("-device")
        .arg(format!("virtserialport,chardev=agent,name={AGENT_PORT}"));
    if let Some((socket, mac)) = &spec.net {
        // QEMU's stream backend speaks passt's framing (a length before each frame).
        c.arg("-netdev")
            .arg(format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                qemu_escape(&socket.to_string_lossy())
            ))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=net0,mac={mac}"));
    }
    for (i, (tag, socket)) in spec.shares.iter().enumerate() {
        c.arg("-chardev")
            .arg(format!(
                "socket,id=fs{i},path={}",
                qemu_escape(&socket.to_string_lossy())
            ))
            .arg("-device")
            .arg(format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"));
    }
    c
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(super::qemu_escape("/a,b/c"), "/a,,b/c");
    }
}
