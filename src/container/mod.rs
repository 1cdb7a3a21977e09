//! Container lifecycle shared by both isolation modes: records, the state directory, logs,
//! supervision of a running container, and recovery after a crashed vessel.

pub mod image;
pub mod layout;
pub mod lifecycle;
pub mod logs;
pub mod names;
pub mod process;
pub mod record;
pub mod recovery;
pub mod signals;
pub mod supervise;
pub mod user;
pub mod volumes;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
