//! The host channel: the virtio-console port `/dev/hvc0`, switched to raw mode.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the console driver may take to create the device node after its module loads.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens `/dev/hvc0` once it exists and makes it a transparent byte pipe.
pub fn open() -> io::Result<File> {
    let path = Path::new("/dev/hvc0");
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > APPEAR_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/hvc0 did not appear (is virtio_console loaded and a console port attached?)",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let file = File::options().read(true).write(true).open(path)?;
    // The port is a tty: without raw mode the line discipline would turn \n into \r\n,
    // buffer lines and echo the host's frames back to it.
    // SAFETY: termios is plain data; tcgetattr fills it from a valid open fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and a valid termios pointer.
    if unsafe { libc::tcgetattr(file.as_raw_fd(), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: valid fd and a fully initialised termios.
    if unsafe { libc::tcsetattr(file.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}
