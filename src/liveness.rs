//! Is a process the one that was recorded? A PID alone can be reused, so the process's start
//! time is recorded with it (supervisors, and the helpers of a container: virtiofsd,
//! passt, pasta).

/// Start time of `pid` in clock ticks after boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the
    // last ')' are unambiguous. starttime is the 20th of those.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid`, started at `start`, still exists (and is not a zombie).
pub fn alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X");
    !zombie && start_time(pid) == Some(start)
}

/// Records `pid` with its start time in the file `path`, for [`kill_recorded`] from any
/// later vessel process.
pub fn record(path: &std::path::Path, pid: i32) {
    let _ = std::fs::write(path, format!("{pid} {}", start_time(pid).unwrap_or(0)));
}

/// SIGKILLs the process recorded in `path` if it is still the one recorded, waits (up to
/// 2 s) until it is gone, so that what it held (a published port) is free when this
/// returns, and removes the record.
pub fn kill_recorded(path: &std::path::Path) {
    let recorded = std::fs::read_to_string(path).unwrap_or_default();
    let mut fields = recorded.split_whitespace().map(str::parse::<u64>);
    if let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) {
        let pid = pid as i32;
        if alive(pid, start) {
            // SAFETY: kill takes plain integers; the pid and its start time were checked
            // to be the recorded process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while alive(pid, start) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
    }
}
