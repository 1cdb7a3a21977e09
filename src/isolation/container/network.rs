//! `--network none`: the container's own network namespace, with loopback brought up
//! (runtimes leave it down; docker brings it up).

use std::os::fd::AsRawFd;

use nix::sched::{setns, CloneFlags};

use crate::isolation::IsolationError;

/// Brings up `lo` in the network namespace of process `pid`.
pub fn loopback_up(pid: i32) -> Result<(), IsolationError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| IsolationError::io("opening the container's network namespace", e))?;
    // setns applies to the calling thread only, so a short-lived thread keeps vessel's
    // own threads in the host namespace.
    std::thread::spawn(move || -> Result<(), IsolationError> {
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| IsolationError::runtime("entering the network namespace", e))?;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
            // Loopback is down, so binding to it fails; any AF_INET socket serves for ioctls.
            std::net::UdpSocket::bind("0.0.0.0:0")
        });
        let sock = sock.map_err(|e| IsolationError::io("creating a socket", e))?;
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the interface named in req and writes its flags into req.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(IsolationError::io(
                "reading loopback flags",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled in.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads req, which names lo and holds the new flags.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(IsolationError::io(
                "bringing loopback up",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    })
    .join()
    .map_err(|_| IsolationError::runtime("bringing loopback up", "thread panicked"))?
}
