//! What the two network helpers (passt for VMs, pasta for containers) share: finding the
//! binary, their common options, waiting until they serve, and ending one a crashed
//! supervisor left behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ports::{PortMapping, Protocol};
use super::{ADDRESS, DNS, GATEWAY, PREFIX_LEN};
use crate::liveness;

/// How long a helper may take to serve (its socket or interface, and every published port).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The helper's log, in the container's directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("network.log")
}

/// Where the helper's pid and start time are kept for cleanup by any vessel process.
fn pid_file(dir: &Path) -> PathBuf {
    dir.join("network.pid")
}

/// `$VESSEL_PASST`/`$VESSEL_PASTA`, else the program on `PATH`.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let var = format!("VESSEL_{}", name.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            format!(
                "{name} is not installed (Debian's passt package; scripts/setup.sh installs it), \
                 needed for the default network; --network none runs without it"
            )
        })
}

/// Options both helpers take: foreground, IPv4 only, the address plan, the DNS forwarder,
/// and one `-t`/`-u` per published port.
pub fn common_args(ports: &[PortMapping]) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["--foreground", "--quiet", "--ipv4-only"]
        .map(OsString::from)
        .to_vec();
    for (flag, value) in [
        ("--address", ADDRESS.to_string()),
        ("--netmask", PREFIX_LEN.to_string()),
        ("--gateway", GATEWAY.to_string()),
        ("--dns-forward", DNS.to_string()),
    ] {
        a.push(flag.into());
        a.push(value.into());
    }
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let flag = match proto {
            Protocol::Tcp => "--tcp-ports",
            Protocol::Udp => "--udp-ports",
        };
        let mut any = false;
        for m in ports.iter().filter(|m| m.protocol == proto) {
            let addr = m.host_ip.map(|ip| format!("{ip}/")).unwrap_or_default();
            a.push(flag.into());
            a.push(format!("{addr}{}:{}", m.host_port, m.container_port).into());
            any = true;
        }
        if !any {
            // pasta's default is to forward every port bound in the namespace.
            a.push(flag.into());
            a.push("none".into());
        }
    }
    a
}

/// Records a started helper for [`cleanup`].
pub fn record(dir: &Path, pid: i32) {
    liveness::record(&pid_file(dir), pid);
}

/// Kills the helper a crashed supervisor left for the container in `dir`, if it is still
/// the process that was started, and forgets it.
pub fn cleanup(dir: &Path) {
    liveness::kill_recorded(&pid_file(dir));
}

/// Local ports in `table` (`/proc/net/tcp` format) in `state` (hex, e.g. `0A` LISTEN).
fn ports_in(table: &str, state: Option<&str>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            if let Some(s) = state {
                if f.get(3)? != &s {
                    return None;
                }
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The published ports no socket of this network namespace holds yet.
pub fn unbound(ports: &[PortMapping]) -> Vec<PortMapping> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut tcp = ports_in(&read("/proc/net/tcp"), Some("0A"));
    tcp.extend(ports_in(&read("/proc/net/tcp6"), Some("0A")));
    let mut udp = ports_in(&read("/proc/net/udp"), None);
    udp.extend(ports_in(&read("/proc/net/udp6"), None));
    ports
        .iter()
        .filter(|m| {
            let held = match m.protocol {
                Protocol::Tcp => &tcp,
                Protocol::Udp => &udp,
            };
            !held.contains(&m.host_port)
        })
        .copied()
        .collect()
}

/// Waits until `ready()` and every published port is bound. `try_wait` is the helper's
/// own (a [`std::process::Child`]'s or a jailed process's); `log` is its log, quoted in a
/// failure.
pub fn wait_ready(
    name: &str,
    ports: &[PortMapping],
    log: &Path,
    mut try_wait: impl FnMut() -> std::io::Result<Option<std::process::ExitStatus>>,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let missing = unbound(ports);
        if missing.is_empty() && ready() {
            return Ok(());
        }
        let why = if let Ok(Some(status)) = try_wait() {
            Some(format!("{name} exited ({status}) before serving"))
        } else if Instant::now() > deadline {
            Some(match missing.first() {
                Some(m) => format!(
                    "{name} did not bind {}/{} within {READY_TIMEOUT:?} (is the port in use?)",
                    m.host_side(),
                    m.protocol.as_str()
                ),
                None => format!("{name} was not serving within {READY_TIMEOUT:?}"),
            })
        } else {
            None
        };
        if let Some(mut why) = why {
            // Without a system logger the helpers say so before every line.
            let said: Vec<String> = crate::isolation::vm::log_tail(log, 12)
                .into_iter()
                .filter(|l| !l.contains("to syslog"))
                .collect();
            for l in &said[said.len().saturating_sub(4)..] {
                why.push_str(&format!("\n  {name}: {l}"));
            }
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_the_kernel_tables() {
        let table = "  sl  local_address rem_address   st\n\
                     0: 0100007F:1F90 00000000:0000 0A 0\n\
                     1: 0100007F:0050 0100007F:1234 01 0\n";
        assert_eq!(ports_in(table, Some("0A")), [8080]);
        assert_eq!(ports_in(table, None), [8080, 80]);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let m = PortMapping {
            host_ip: None,
            host_port: l.local_addr().unwrap().port(),
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert!(unbound(&[m]).is_empty());
        drop(l);
        assert_eq!(unbound(&[m]), [m]);
    }

    #[test]
    fn ports_become_options() {
        let ports = [
            super::super::ports::parse("127.0.0.1:8080:80").unwrap()[0],
            super::super::ports::parse("5353:53/udp").unwrap()[0],
        ];
        let a: Vec<String> = common_args(&ports)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        assert!(joined.contains("--tcp-ports 127.0.0.1/8080:80"), "{joined}");
        assert!(joined.contains("--udp-ports 5353:53"), "{joined}");
        assert!(!joined.contains("none"), "{joined}");
        let a = common_args(&[]);
        assert_eq!(a.iter().filter(|s| *s == "none").count(), 2);
    }
}
