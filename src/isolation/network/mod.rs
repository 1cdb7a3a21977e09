//! The default network of both isolation modes: a user-mode network stack on the host
//! (passt for a VM's network card, pasta for a container's network namespace, both from
//! Debian's `passt` package) that translates the container's TCP and UDP to ordinary host
//! sockets. One address plan, one set of names and one port syntax serve both modes; see
//! docs/networking.md.

use std::net::Ipv4Addr;

pub mod helper;
pub mod ports;

pub use ports::PortMapping;

/// The container's address (podman's slirp4netns plan, which users know).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The prefix length of the container's network.
pub const PREFIX_LEN: u8 = 24;
/// The gateway, which is also the host: connections to it reach the host's loopback.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The resolver the container is given: the helper forwards its queries to the host's
/// first resolver in `/etc/resolv.conf`.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The host's name inside the container (docker's `host.docker.internal`).
pub const HOST_NAME: &str = "host.vessel.internal";

/// `/etc/hosts` of a container: loopback, its own name, and the host's.
pub fn hosts(hostname: &str, networked: bool) -> String {
    let mut h = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if networked {
        h.push_str(&format!("{ADDRESS}\t{hostname}\n{GATEWAY}\t{HOST_NAME}\n"));
    } else {
        h.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    h
}

/// `/etc/resolv.conf` of a networked container.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS}\n")
}

/// The files under `/etc` a container gets (name, contents), as docker bind-mounts them:
/// none with the host's network, where the image's own are left alone.
pub fn etc_files(hostname: &str, network: super::NetworkMode) -> Vec<(&'static str, String)> {
    use super::NetworkMode::*;
    match network {
        Host => Vec::new(),
        None => vec![
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts(hostname, false)),
        ],
        Default => vec![
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts(hostname, true)),
            ("resolv.conf", resolv_conf()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::NetworkMode;

    #[test]
    fn names_follow_the_mode() {
        let f = etc_files("box", NetworkMode::Default);
        let get = |n: &str| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert!(get("hosts").unwrap().contains("10.0.2.100\tbox\n"));
        assert!(get("hosts")
            .unwrap()
            .contains("10.0.2.2\thost.vessel.internal\n"));
        assert_eq!(get("resolv.conf").unwrap(), "nameserver 10.0.2.3\n");
        let none = etc_files("box", NetworkMode::None);
        assert_eq!(none.len(), 2);
        assert!(!none[1].1.contains("host.vessel.internal"));
        assert!(etc_files("box", NetworkMode::Host).is_empty());
    }
}
