//! The container's cgroup: where it is, whether the OOM killer struck, and removing what a
//! crashed run left. libcontainer creates it and applies the limits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{get_cgroup_setup, CgroupSetup};

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path of a container (relative to each hierarchy's root).
pub fn path(id: &str) -> String {
    format!("/vessel/{id}")
}

fn is_v2() -> bool {
    matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified))
}

/// Whether memory+swap can be limited (cgroup v1 with swap accounting, or v2 with swap
/// files, which the root cgroup itself never has: look at its children).
pub fn has_swap_accounting() -> bool {
    if is_v2() {
        std::fs::read_dir(ROOT)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.path().join("memory.swap.max").exists())
            })
            .unwrap_or(false)
    } else {
        Path::new(ROOT)
            .join("memory/memory.memsw.limit_in_bytes")
            .exists()
    }
}

/// Every directory that holds the container's cgroup (one per v1 controller, one on v2).
fn dirs(id: &str) -> Vec<PathBuf> {
    let rel = path(id);
    let rel = rel.trim_start_matches('/');
    if is_v2() {
        return vec![Path::new(ROOT).join(rel)];
    }
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(ROOT) {
        for e in entries.flatten() {
            // Skip the comounted aliases (cpu -> cpu,cpuacct): they are symlinks.
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(e.path().join(rel));
            }
        }
    }
    out
}

fn count(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the OOM killer killed a process of the container's cgroup.
pub fn oom_killed(id: &str) -> bool {
    let rel = path(id);
    let rel = rel.trim_start_matches('/');
    if is_v2() {
        let events = std::fs::read_to_string(Path::new(ROOT).join(rel).join("memory.events"))
            .unwrap_or_default();
        count(&events, "oom_kill") > 0
    } else {
        let control = std::fs::read_to_string(
            Path::new(ROOT)
                .join("memory")
                .join(rel)
                .join("memory.oom_control"),
        )
        .unwrap_or_default();
        count(&control, "oom_kill") > 0
    }
}

/// SIGKILLs every process listed in one cgroup directory.
fn kill_procs(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// SIGKILLs every process in the container's cgroups.
pub fn kill_all(id: &str) {
    for dir in dirs(id) {
        kill_procs(&dir);
    }
}

/// Kills whatever is left in the container's cgroups and removes them. For the case where
/// libcontainer's own state is gone (a crash between creating the cgroup and saving state).
pub fn remove(id: &str) {
    for dir in dirs(id) {
        if !dir.exists() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            kill_procs(&dir);
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
