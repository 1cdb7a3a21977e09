//! The host channel: the virtio-serial port named [`AGENT_PORT`], found through sysfs.
//!
//! A generic port, not a console: a write blocks this process (only) while the host is
//! slow, which is the back-pressure that keeps a slow reader on the host from losing
//! output. The host's end closing reads as end of stream.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vessel_agent::channel::AGENT_PORT;

/// How long the console driver may take to create the port after its module loads.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
const PORTS: &str = "/sys/class/virtio-ports";

/// The device node of the port called `name`, if the driver has added it.
fn find(name: &str) -> Option<PathBuf> {
    std::fs::read_dir(PORTS).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim_end() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// Opens the agent's port once it exists.
pub fn open() -> io::Result<File> {
    let start = Instant::now();
    loop {
        // devtmpfs creates the node when the driver registers the port, which can be a
        // moment after the port's name shows in sysfs.
        if let Some(path) = find(AGENT_PORT).filter(|p| p.exists()) {
            return File::options().read(true).write(true).open(path);
        }
        if start.elapsed() > APPEAR_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {AGENT_PORT} appeared under {PORTS} \
                     (is virtio_console loaded and the port attached?)"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
