//! Published ports: `-p [IP:][HOSTPORT:]CTRPORT[/tcp|/udp]` (ranges allowed), `-P`, and
//! the check that a host port is free before anything starts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port: a host address and port forwarded to a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address bound; `None` binds every address, as docker does.
    pub host_ip: Option<Ipv4Addr>,
    /// The host port; 0 until a free one is chosen (`-p CTRPORT`, `-P`).
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl PortMapping {
    /// `80/tcp`: the container side, as `vessel port` and docker key it.
    pub fn container_side(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol.as_str())
    }

    /// `0.0.0.0:8080`: the host side.
    pub fn host_side(&self) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            self.host_port,
        )
    }
}

impl fmt::Display for PortMapping {
    /// docker's `ps` form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.host_side(), self.container_side())
    }
}

/// A `-p` value that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid -p {spec:?}: {why} (use [IP:][HOSTPORT:]CTRPORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp)")]
pub struct PortSpecError {
    spec: String,
    why: String,
}

/// A port or an inclusive range of ports.
fn range(s: &str, what: &str, allow_zero: bool) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) if !allow_zero => Err(format!("{what} port 0")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{what} port {p:?} is not a number from 1 to 65535")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("{what} range {s} runs backwards"));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

/// Parses one `-p` value into one mapping per port (a range gives several).
pub fn parse(spec: &str) -> Result<Vec<PortMapping>, PortSpecError> {
    let err = |why: String| PortSpecError {
        spec: spec.to_string(),
        why,
    };
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(err(format!("unknown protocol {other:?}"))),
        None => (spec, Protocol::Tcp),
    };
    if ports.starts_with('[') {
        return Err(err(
            "IPv6 host addresses are not supported (containers have IPv4 only)".into(),
        ));
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, ctr) = match parts.as_slice() {
        [c] => (None, "", *c),
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(*ip), *h, *c),
        _ => return Err(err("too many ':'".into())),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if a.is_unspecified() => None,
            Ok(IpAddr::V4(a)) => Some(a),
            Ok(IpAddr::V6(_)) => {
                return Err(err(
                    "IPv6 host addresses are not supported (containers have IPv4 only)".into(),
                ))
            }
            Err(_) => return Err(err(format!("{ip:?} is not an IPv4 address"))),
        },
    };
    let (c0, c1) = range(ctr, "container", false).map_err(err)?;
    let (h0, h1) = if host.is_empty() {
        (0, 0)
    } else {
        range(host, "host", false).map_err(err)?
    };
    if host.is_empty() {
        return Ok((c0..=c1)
            .map(|c| PortMapping {
                host_ip,
                host_port: 0,
                container_port: c,
                protocol,
            })
            .collect());
    }
    if h1 - h0 != c1 - c0 {
        return Err(err(format!(
            "the host range {host} and the container range {ctr} differ in length"
        )));
    }
    Ok((h0..=h1)
        .zip(c0..=c1)
        .map(|(h, c)| PortMapping {
            host_ip,
            host_port: h,
            container_port: c,
            protocol,
        })
        .collect())
}

/// An image's `ExposedPorts` key (`80/tcp`, `53/udp`, `8080`), as `-P` publishes it.
pub fn exposed(key: &str) -> Option<PortMapping> {
    let (port, protocol) = match key.split_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return None,
        None => (key, Protocol::Tcp),
    };
    let container_port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    Some(PortMapping {
        host_ip: None,
        host_port: 0,
        container_port,
        protocol,
    })
}

/// Why a host port cannot be published.
#[derive(Debug, thiserror::Error)]
#[error("port {mapping}: cannot bind {addr}/{proto} on the host: {source}", addr = mapping.host_side(), proto = mapping.protocol.as_str())]
pub struct PortBusy {
    /// The mapping.
    pub mapping: PortMapping,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn bind(m: &PortMapping) -> std::io::Result<Bound> {
    Ok(match m.protocol {
        Protocol::Tcp => Bound::Tcp(TcpListener::bind(m.host_side())?),
        Protocol::Udp => Bound::Udp(UdpSocket::bind(m.host_side())?),
    })
}

/// Chooses free host ports for mappings that have none, and checks that every other one
/// can be bound now (a port another process listens on fails here, before anything is
/// started). Duplicates within `ports` are refused too.
pub fn reserve(ports: &mut [PortMapping]) -> Result<(), PortBusy> {
    let mut held = Vec::new();
    for i in 0..ports.len() {
        let m = ports[i];
        if m.host_port != 0 {
            if let Some(prev) = ports[..i].iter().find(|p| {
                p.host_port == m.host_port
                    && p.protocol == m.protocol
                    && (p.host_ip.is_none() || m.host_ip.is_none() || p.host_ip == m.host_ip)
            }) {
                return Err(PortBusy {
                    mapping: m,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("published twice (also as {prev})"),
                    ),
                });
            }
        }
        // Held until every port is checked, so two chosen ports never coincide.
        let b = bind(&m).map_err(|source| PortBusy { mapping: m, source })?;
        if m.host_port == 0 {
            let port = match &b {
                Bound::Tcp(l) => l.local_addr(),
                Bound::Udp(s) => s.local_addr(),
            }
            .map_err(|source| PortBusy { mapping: m, source })?
            .port();
            ports[i].host_port = port;
        }
        held.push(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> PortMapping {
        let v = parse(s).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v[0]
    }

    #[test]
    fn docker_forms_parse() {
        let m = one("8080:80");
        assert_eq!((m.host_ip, m.host_port, m.container_port), (None, 8080, 80));
        assert_eq!(m.protocol, Protocol::Tcp);
        let m = one("127.0.0.1:5353:53/udp");
        assert_eq!(m.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m.host_port, m.container_port), (5353, 53));
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!(one("80").host_port, 0);
        assert_eq!(one("127.0.0.1::80").host_port, 0);
        assert_eq!(one("0.0.0.0:1:2").host_ip, None);
        assert_eq!(one("8080:80/tcp").to_string(), "0.0.0.0:8080->80/tcp");
    }

    #[test]
    fn ranges_expand_pairwise() {
        let v = parse("8000-8002:80-82").unwrap();
        let pairs: Vec<_> = v.iter().map(|m| (m.host_port, m.container_port)).collect();
        assert_eq!(pairs, [(8000, 80), (8001, 81), (8002, 82)]);
        assert_eq!(parse("9000-9001").unwrap().len(), 2);
    }

    #[test]
    fn bad_values_say_why() {
        for (spec, why) in [
            ("", "not a number"),
            ("0:80", "host port 0"),
            ("8080:70000", "not a number"),
            ("a:b:c:d", "too many"),
            ("80/sctp", "unknown protocol"),
            ("[::1]:80:80", "IPv6"),
            ("::1:80:80", "too many"),
            ("300.1.1.1:80:80", "not an IPv4"),
            ("8000-8002:80-81", "differ in length"),
            ("90-80:90-80", "backwards"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn exposed_keys_parse() {
        assert_eq!(exposed("80/tcp").unwrap().container_port, 80);
        assert_eq!(exposed("53/udp").unwrap().protocol, Protocol::Udp);
        assert_eq!(exposed("8080").unwrap().protocol, Protocol::Tcp);
        assert!(exposed("80/sctp").is_none());
        assert!(exposed("x/tcp").is_none());
    }

    #[test]
    fn a_port_in_use_is_refused_and_free_ones_are_chosen() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut ports = parse(&format!("127.0.0.1:{port}:80")).unwrap();
        let e = reserve(&mut ports).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

        let mut ports = [
            parse("127.0.0.1::80").unwrap(),
            parse("127.0.0.1::81/udp").unwrap(),
        ]
        .concat();
        reserve(&mut ports).unwrap();
        assert!(ports.iter().all(|p| p.host_port != 0), "{ports:?}");

        let mut twice = [
            parse("127.0.0.1:40000:80").unwrap(),
            parse("40000:81").unwrap(),
        ]
        .concat();
        let e = reserve(&mut twice).unwrap_err();
        assert!(e.to_string().contains("published twice"), "{e}");
    }
}
