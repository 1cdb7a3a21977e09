//! A container's host cgroup (`/vessel/<id>` in every hierarchy): where it is, whether the
//! OOM killer struck, and removing what a crashed run left. In container mode libcontainer
//! creates it and applies the limits; in VM mode [`create`] makes it for the VM's host
//! processes (the VMM and its helpers), limited to what the VM was given plus an overhead.

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

/// What a VM's host processes may use together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (RAM and page cache charged to the group).
    pub memory: u64,
    /// CPU time per 100 ms period, in microseconds (100_000 is one CPU).
    pub cpu_quota_us: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// The CFS period every quota is expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Creates the container's cgroup with `limits` (the memory, cpu and pids controllers; on
/// cgroup v1 one directory in each) and returns the `cgroup.procs` files a process writes
/// itself into to join it.
pub fn create(id: &str, limits: Limits) -> Result<Vec<PathBuf>, String> {
    let rel = path(id);
    let rel = rel.trim_start_matches('/');
    let write = |file: PathBuf, value: String| {
        std::fs::write(&file, &value)
            .map_err(|e| format!("writing {value} to {}: {e}", file.display()))
    };
    let mkdir = |dir: &Path| {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
    };
    if is_v2() {
        // Controllers reach a child only if every ancestor enables them for its children.
        let mut dir = PathBuf::from(ROOT);
        for part in Path::new(rel)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            let _ = write(
                dir.join("cgroup.subtree_control"),
                "+memory +cpu +pids".into(),
            );
            dir.push(part);
            mkdir(&dir)?;
        }
        let _ = write(
            dir.join("cgroup.subtree_control"),
            "+memory +cpu +pids".into(),
        );
        let dir = Path::new(ROOT).join(rel);
        mkdir(&dir)?;
        write(dir.join("memory.max"), limits.memory.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write(dir.join("memory.swap.max"), "0".into())?;
        }
        write(
            dir.join("cpu.max"),
            format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
        )?;
        write(dir.join("pids.max"), limits.pids.to_string())?;
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    let v1 = |controller: &str| Path::new(ROOT).join(controller).join(rel);
    let (memory, cpu, pids) = (v1("memory"), v1("cpu"), v1("pids"));
    for d in [&memory, &cpu, &pids] {
        mkdir(d)?;
    }
    write(
        memory.join("memory.limit_in_bytes"),
        limits.memory.to_string(),
    )?;
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        write(
            memory.join("memory.memsw.limit_in_bytes"),
            limits.memory.to_string(),
        )?;
    }
    write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
    write(
        cpu.join("cpu.cfs_quota_us"),
        limits.cpu_quota_us.to_string(),
    )?;
    write(pids.join("pids.max"), limits.pids.to_string())?;
    Ok([memory, cpu, pids]
        .into_iter()
        .map(|d| d.join("cgroup.procs"))
        .collect())
}

/// The pids in the container's cgroup (every hierarchy), sorted, each once.
pub fn procs(id: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs(id)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}
