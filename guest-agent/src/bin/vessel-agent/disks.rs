//! Finding the image disk and the container disk among the guest's block devices.
//!
//! The host gives each virtio-blk device a serial (`vessel-image`, `vessel-container`) so
//! the agent does not depend on probe order; if a VMM cannot set serials, the order on the
//! command line is the fallback (image first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vessel_agent::disk::{CONTAINER_SERIAL, IMAGE_SERIAL};

const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// The two disks' device nodes.
pub struct Disks {
    /// The image's ext4, mounted read-only.
    pub image: PathBuf,
    /// The container's ext4, the overlay's upper layer.
    pub container: PathBuf,
}

/// Waits until both disks exist and returns their device nodes.
pub fn find() -> Result<Disks, String> {
    let start = Instant::now();
    loop {
        let mut vd: Vec<(String, String)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/sys/block") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("vd") {
                    continue;
                }
                let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                vd.push((name, serial.trim().to_string()));
            }
        }
        vd.sort();
        let by_serial = |s: &str| vd.iter().find(|(_, ser)| ser == s).map(|(n, _)| n.clone());
        let found = match (by_serial(IMAGE_SERIAL), by_serial(CONTAINER_SERIAL)) {
            (Some(i), Some(c)) => Some((i, c)),
            _ if vd.len() >= 2 && vd.iter().all(|(_, s)| s.is_empty()) => {
                Some((vd[0].0.clone(), vd[1].0.clone()))
            }
            _ => None,
        };
        if let Some((i, c)) = found {
            let (image, container) = (PathBuf::from("/dev").join(i), PathBuf::from("/dev").join(c));
            if image.exists() && container.exists() {
                return Ok(Disks { image, container });
            }
        }
        if start.elapsed() > APPEAR_TIMEOUT {
            return Err(format!(
                "the image and container disks did not appear within {APPEAR_TIMEOUT:?} (block devices: {vd:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
