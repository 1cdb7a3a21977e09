//! The guest's network as the container sees it: loopback up (the kernel starts every
//! interface down, and no init but us is there to raise it), and with the default network
//! the card configured with the static address the host chose (its helper, passt, answers
//! at the gateway; no DHCP client is needed in the guest).

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use vessel_agent::NetworkSpec;

/// How long the network card's driver may take to register its interface.
const CARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A datagram socket for interface ioctls, closed on drop.
struct Socket(libc::c_int);

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned by Socket.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Brings `lo` up.
pub fn loopback_up() -> io::Result<()> {
    set_up(&Socket::new()?, "lo")
}

fn request(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl(s: &Socket, op: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> io::Result<()> {
    // SAFETY: `arg` points at the ifreq or rtentry that `op` reads (and may write), owned
    // by the caller for the duration of the call.
    if unsafe { libc::ioctl(s.0, op as _, arg) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set_up(s: &Socket, name: &str) -> io::Result<()> {
    let mut req = request(name)?;
    ioctl(
        s,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "reading flags",
    )?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        s,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "bringing it up",
    )
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as the
    // family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_addr(s: &Socket, name: &str, op: libc::c_ulong, ip: Ipv4Addr, what: &str) -> io::Result<()> {
    let mut req = request(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(s, op, (&mut req as *mut libc::ifreq).cast(), what)
}

/// The first interface other than `lo`, once its driver has registered it.
fn card() -> Result<String, String> {
    let deadline = Instant::now() + CARD_TIMEOUT;
    loop {
        let names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lo")
                    .collect()
            })
            .unwrap_or_default();
        if let Some(n) = names.into_iter().min() {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the VM has no network card after {CARD_TIMEOUT:?} (virtio_net missing from the guest kernel?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Loads the card's driver, gives the card its address and brings it up, and routes
/// everything through the gateway.
pub fn configure(spec: &NetworkSpec, cmdline: &str) -> Result<(), String> {
    crate::modules::load_all(Path::new("/modules"), "network.order", cmdline)?;
    let name = card()?;
    let fail = |e: io::Error| format!("configuring {name}: {e}");
    let s = Socket::new().map_err(fail)?;
    if spec.prefix_len > 32 {
        return Err(format!("prefix length {} is not IPv4", spec.prefix_len));
    }
    let mask = Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(spec.prefix_len))
            .unwrap_or(0),
    );
    set_addr(
        &s,
        &name,
        libc::SIOCSIFADDR,
        spec.address,
        "setting the address",
    )
    .map_err(fail)?;
    set_addr(&s, &name, libc::SIOCSIFNETMASK, mask, "setting the netmask").map_err(fail)?;
    set_up(&s, &name).map_err(fail)?;
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(spec.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(
        &s,
        libc::SIOCADDRT,
        (&mut rt as *mut libc::rtentry).cast(),
        "adding the default route",
    )
    .map_err(fail)
}
