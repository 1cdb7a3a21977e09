//! Boots the real Debian cloud kernel (placed by scripts/setup.sh) and waits for
//! its banner (`Linux version`) on our serial port, then stops the VM through the
//! stop handle. Both forms are booted: the bzImage as it ships (64-bit boot
//! protocol, zero page, ACPI) and the ELF vmlinux extracted from it (PVH entry).
//!
//! On this project's machine /dev/kvm is a nested kvm_pvm that emulates guest
//! ring 0, so the kernel crawls: measured here the ELF prints its banner after
//! ~16 s and the bzImage (which first decompresses itself, emulated) after ~160 s.
//! The budget is `VESSEL_BOOT_BANNER_SECS` (default 480 s) per kernel.
//!
//! Where KVM runs the boot at hardware speed (the bzImage banner within
//! [`FAST_BANNER`]), or when `VESSEL_BOOT_ROUND_TRIP=1` asks for it, the test goes
//! on: it boots the bzImage with a busybox initramfs that loads the virtio modules
//! and answers on `/dev/hvc0`, checks a virtio-console round trip, pings a peer the
//! test plays on the other end of a virtio-net card (ARP, then ICMP echo, in QEMU's
//! stream framing), and expects the guest's ACPI power-off to end the VM with
//! `PowerOff`.

mod common;

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vessel_vmm::config::{ConsoleConfig, KernelFormat, NetConfig};
use vessel_vmm::{ExitReason, Vm};

const KERNEL: &str = "/var/cache/vessel/kernel/vmlinuz";
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 \
                       tsc_early_khz=2000000";
const BANNER: &[u8] = b"Linux version";
const E820_LINE: &[u8] = b"BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable";

/// A banner this fast means KVM runs guest ring 0 natively.
const FAST_BANNER: Duration = Duration::from_secs(10);
const MODULES_DIR: &str = "/var/cache/vessel/kernel/lib/modules";
/// virtio modules in load order (paths under the version's `kernel/` directory).
const MODULES: [&str; 7] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/char/virtio_console.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];
/// The guest's network card, and the one host on the other end of its link (played by
/// [`network_peer`]).
const GUEST_MAC: [u8; 6] = [0x02, 0x56, 0x45, 0x53, 0x00, 0x07];
const PEER_MAC: [u8; 6] = [0x02, 0x56, 0x45, 0x53, 0x00, 0xfe];
const PEER_IP: [u8; 4] = [10, 0, 2, 2];
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_console failover net_failover virtio_net; do insmod /lib/$m.ko; done
i=0
while [ ! -e /dev/hvc0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "vessel-init: hvc0 $( [ -e /dev/hvc0 ] && echo ready || echo missing )"
# One open file for the whole exchange: input that arrives while no process holds the
# console open is not kept for the next opener.
exec 3<>/dev/hvc0
stty -F /dev/hvc0 raw -echo
echo ready >&3
read -r line <&3
echo "echo:$line" >&3
# User space on the serial port needs its transmit interrupt (printk polls instead).
timeout 10 sh -c 'echo "user-space-serial: $(cat /proc/uptime)" > /dev/ttyS0'
# The virtio-net card: ARP and ICMP echo with the peer on the other end of the link.
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
if ping -c 2 -W 5 10.0.2.2 >/dev/null 2>&1; then r=ok; else r=failed; fi
timeout 10 sh -c "echo 'virtio-net: ping $r, mac $(cat /sys/class/net/eth0/address)' > /dev/ttyS0"
poweroff -f
"#;

fn budget() -> Duration {
    let secs = std::env::var("VESSEL_BOOT_BANNER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(480);
    Duration::from_secs(secs)
}

/// Boots `kernel` until the banner appears; returns the time it took.
fn boot_to_banner(kernel: &Path) -> Duration {
    let mut config = config_for(kernel, KernelFormat::Linux);
    config.cmdline = CMDLINE.into();
    config.memory_mib = 256;
    config.timeout_ms = None;
    let serial = SharedBuf::default();
    let start = Instant::now();
    let vm = Vm::with_serial(&config, Box::new(serial.clone())).expect("build VM");
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    let limit = budget();
    let contains = |needle: &[u8]| serial.contents().windows(needle.len()).any(|w| w == needle);
    let mut seen = None;
    while start.elapsed() < limit && !runner.is_finished() {
        if seen.is_none() && contains(BANNER) {
            seen = Some(start.elapsed());
        }
        // The e820 map follows the banner in the same early-console burst.
        if seen.is_some() && contains(E820_LINE) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.stop();
    let outcome = runner.join().expect("VM thread");
    let log = String::from_utf8_lossy(&serial.contents()).into_owned();
    let Some(elapsed) = seen else {
        panic!(
            "no banner from {} after {:?} (VM ended: {outcome:?}); serial:\n{log}",
            kernel.display(),
            start.elapsed()
        );
    };
    // The VM was running when we stopped it (unless it died right after the banner).
    match outcome {
        Ok(ExitReason::Stopped) => {}
        other => eprintln!("note: VM ended with {other:?} after the banner"),
    }
    assert!(
        log.contains(std::str::from_utf8(E820_LINE).unwrap()),
        "kernel did not log our e820 map:\n{log}"
    );
    eprintln!("{}: banner after {elapsed:.1?}", kernel.display());
    elapsed
}

/// Extracts the ELF vmlinux from the bzImage (LZ4 payload, as Debian builds it).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), String> {
    let data = std::fs::read(bzimage).map_err(|e| e.to_string())?;
    let magic = [0x02, 0x21, 0x4c, 0x18];
    let at = data
        .windows(4)
        .position(|w| w == magic)
        .ok_or("no LZ4 payload in the bzImage")?;
    let mut child = Command::new("lz4")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).map_err(|e| e.to_string())?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("lz4: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("lz4 stdin")?;
    // lz4 stops at the end of the frame and may close its input early.
    let _ = stdin.write_all(&data[at..]);
    drop(stdin);
    let _ = child.wait();
    let head = std::fs::read(out).map_err(|e| e.to_string())?;
    if head.len() < 4 || head[..4] != *b"\x7fELF" {
        return Err("lz4 output is not an ELF file".into());
    }
    Ok(())
}

/// Packs /init, a static busybox and the virtio modules into a newc cpio.
fn build_initramfs(dir: &Path) -> Result<PathBuf, String> {
    let version = std::fs::read_dir(MODULES_DIR)
        .map_err(|e| format!("{MODULES_DIR}: {e}"))?
        .flatten()
        .next()
        .ok_or("no kernel modules installed")?
        .file_name();
    let modules = Path::new(MODULES_DIR).join(version).join("kernel");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or("busybox-static is not installed")?;
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("lib")).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| e.to_string())?;
    let mut entries = vec![
        "init".to_string(),
        "bin".into(),
        "bin/busybox".into(),
        "lib".into(),
    ];
    for m in MODULES {
        let name = Path::new(m)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::copy(modules.join(m), root.join("lib").join(&name))
            .map_err(|e| format!("{m}: {e}"))?;
        entries.push(format!("lib/{name}"));
    }
    std::fs::write(root.join("init"), INIT).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let out = dir.join("initrd.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cpio: {e}"))?;
    let list = entries.join("\n") + "\n";
    cpio.stdin
        .take()
        .ok_or("cpio stdin")?
        .write_all(list.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = cpio.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("cpio failed: {status}"));
    }
    Ok(out)
}

/// Reads from `stream` until `needle` has been seen or `deadline` passes.
fn read_until(stream: &mut UnixStream, needle: &[u8], deadline: Instant) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline && !got.windows(needle.len()).any(|w| w == needle) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    got
}

/// How many lines of the host's kernel log are KVM's "Unhandled WRMSR/RDMSR" (None where
/// the log cannot be read).
fn host_unhandled_msr_lines() -> Option<usize> {
    let out = Command::new("dmesg").stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("Unhandled WRMSR") || l.contains("Unhandled RDMSR"))
            .count()
    })
}

// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The answer of a host at PEER_IP/PEER_MAC to one Ethernet frame: an ARP reply to a
/// request for its address, an echo reply to an ICMP echo request; with what it was.
fn peer_answer(f: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    if f.len() < 14 {
        return None;
    }
    let mut out = f.to_vec();
    out[..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&PEER_MAC);
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0806 if f.len() >= 42 && f[20..22] == [0, 1] && f[38..42] == PEER_IP => {
            let a = &mut out[14..];
            a[7] = 2; // reply
            a[18..28].copy_from_slice(&f[22..32]); // target = the asker
            a[8..14].copy_from_slice(&PEER_MAC);
            a[14..18].copy_from_slice(&PEER_IP);
            Some(("arp", out))
        }
        0x0800 if f.len() >= 34 && f[23] == 1 && f[30..34] == PEER_IP => {
            let ihl = usize::from(f[14] & 0xf) * 4;
            let icmp = 14 + ihl;
            if f.len() < icmp + 8 || f[icmp] != 8 {
                return None;
            }
            // Swapping the addresses leaves the IP header's checksum as it was.
            out[26..30].copy_from_slice(&f[30..34]);
            out[30..34].copy_from_slice(&f[26..30]);
            out[icmp] = 0;
            out[icmp + 2..icmp + 4].fill(0);
            let sum = checksum(&out[icmp..]);
            out[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
            Some(("echo", out))
        }
        _ => None,
    }
}

/// Plays the one other host on the guest card's link, in QEMU's `-netdev stream`
/// framing, until the VM closes its end; returns what it answered, with the source MAC
/// of each question.
fn network_peer(mut sock: UnixStream) -> std::thread::JoinHandle<Vec<(String, [u8; 6])>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut len = [0u8; 4];
        while sock.read_exact(&mut len).is_ok() {
            let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
            if sock.read_exact(&mut f).is_err() {
                break;
            }
            if let Some((what, reply)) = peer_answer(&f) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[6..12]);
                seen.push((what.to_string(), mac));
                let mut msg = (reply.len() as u32).to_be_bytes().to_vec();
                msg.extend_from_slice(&reply);
                if sock.write_all(&msg).is_err() {
                    break;
                }
            }
        }
        seen
    })
}

/// Boots `kernel` with the test initramfs and checks a virtio-console round trip,
/// ICMP echo over the virtio-net card, and ACPI power-off.
fn console_round_trip(kernel: &Path, extra_cmdline: &str) {
    let dir = tempfile::tempdir().unwrap();
    let initrd = match build_initramfs(dir.path()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP (console round trip): {e}");
            return;
        }
    };
    let (mut host, guest) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut config = config_for(kernel, KernelFormat::Linux);
    config.initrd = Some(initrd);
    config.cmdline = format!("{CMDLINE} {extra_cmdline}");
    config.memory_mib = 256;
    config.timeout_ms = Some(budget().as_millis() as u64);
    let fd = guest.into_raw_fd();
    config.console = ConsoleConfig::Fds {
        input: fd,
        output: fd,
    };
    let net_socket = dir.path().join("net.sock");
    let listener = std::os::unix::net::UnixListener::bind(&net_socket).unwrap();
    config.net = Some(NetConfig {
        socket: net_socket,
        mac: GUEST_MAC.map(|b| format!("{b:02x}")).join(":"),
    });
    let serial = SharedBuf::default();
    let unhandled_msr_lines_before = host_unhandled_msr_lines();
    let vm = Vm::with_serial(&config, Box::new(serial.clone())).expect("build VM");
    let peer_sock = listener.accept().expect("the VMM connects").0;
    let peer_end = peer_sock.try_clone().unwrap();
    let peer = network_peer(peer_sock);
    let runner = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + budget();
    let log = || String::from_utf8_lossy(&serial.contents()).into_owned();
    let hello = read_until(&mut host, b"ready", deadline);
    assert!(
        hello.windows(5).any(|w| w == b"ready"),
        "no `ready` on the console (got {hello:?}); serial:\n{}",
        log()
    );
    host.write_all(b"ping\n").unwrap();
    let reply = read_until(&mut host, b"echo:ping", deadline);
    assert!(
        reply.windows(9).any(|w| w == b"echo:ping"),
        "no echo on the console (got {reply:?}); serial:\n{}",
        log()
    );
    let reason = runner.join().expect("VM thread").expect("VM run");
    assert_eq!(reason, ExitReason::PowerOff, "serial:\n{}", log());
    // The VM is gone: end the peer.
    let _ = peer_end.shutdown(std::net::Shutdown::Both);
    let seen = peer.join().expect("network peer");
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    assert!(
        log().contains(&format!("virtio-net: ping ok, mac {mac}")),
        "no ping over the virtio-net card (the peer answered {seen:?}):\n{}",
        log()
    );
    assert!(
        seen.iter().any(|(w, m)| w == "arp" && *m == GUEST_MAC)
            && seen
                .iter()
                .filter(|(w, m)| w == "echo" && *m == GUEST_MAC)
                .count()
                >= 2,
        "the peer saw {seen:?}"
    );
    assert!(
        log().contains("user-space-serial: "),
        "a user-space write to /dev/ttyS0 did not reach the serial output:\n{}",
        log()
    );
    // No PMU: the guest's probe faults and Linux says why, rather than finding "broken"
    // counters, and the host's KVM logs nothing about MSRs it does not back.
    assert!(
        log().contains("PMU not available due to virtualization")
            || log().contains("no PMU driver, software events only"),
        "the guest found a PMU:\n{}",
        log()
    );
    if let Some(before) = unhandled_msr_lines_before {
        let after = host_unhandled_msr_lines().unwrap_or(before);
        assert_eq!(
            after, before,
            "the host's KVM logged unhandled MSR accesses during the boot"
        );
    }
    eprintln!(
        "{}: console round trip, ping over virtio-net and ACPI power-off OK",
        kernel.display()
    );
}

#[test]
fn debian_kernel_prints_its_banner_on_our_serial() {
    if skip_without_kvm() {
        return;
    }
    let kernel = PathBuf::from(KERNEL);
    if !kernel.exists() {
        eprintln!("SKIP: {KERNEL} missing (run scripts/setup.sh)");
        return;
    }
    // One test, kernels in sequence: two emulated boots at once would halve each
    // one's speed on a small machine.
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    match extract_vmlinux(&kernel, &vmlinux) {
        Ok(()) => {
            boot_to_banner(&vmlinux);
        }
        Err(e) => eprintln!("SKIP (ELF vmlinux part): {e}"),
    }
    let banner = boot_to_banner(&kernel);
    let forced = std::env::var("VESSEL_BOOT_ROUND_TRIP").is_ok_and(|v| v == "1");
    if banner < FAST_BANNER || forced {
        // On an emulating KVM the forced run needs the kernel to avoid the
        // instructions it cannot emulate (see docs/vmm.md).
        let extra = std::env::var("VESSEL_BOOT_EXTRA_CMDLINE").unwrap_or_default();
        // A forced run on a slow KVM uses the ELF, which skips the emulated
        // decompression; a fast KVM boots the bzImage as users do.
        let rt_kernel = if forced && vmlinux.exists() {
            &vmlinux
        } else {
            &kernel
        };
        console_round_trip(rt_kernel, &extra);
    } else {
        eprintln!(
            "SKIP (console round trip): the banner took {banner:.1?}, so this KVM emulates \
             guest ring 0 and a boot to userspace would take many minutes"
        );
    }
}
