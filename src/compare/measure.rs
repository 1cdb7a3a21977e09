//! Measuring one isolation mode: repeated runs for latency, one detached instance for
//! host memory and disk, and the probe. Everything goes through the real `vessel`
//! binary, as a user's runs would.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vessel_images::Store;

use super::probe::{self, Findings};
use super::report::{CommandOutcome, HostMemory, ModeResult};
use crate::container::layout;
use crate::container::record::Records;
use crate::isolation::host_process::{self, HostProcess};

/// How to invoke vessel for one mode.
#[derive(Debug, Clone)]
pub struct ModeRunner {
    /// The `vessel` executable.
    pub exe: PathBuf,
    /// State root shared by both modes.
    pub root: PathBuf,
    /// `--isolation ...` and the mode's other `run` flags.
    pub run_flags: Vec<String>,
    /// Column heading.
    pub label: String,
}

/// Marker placed on the host's root disk; the disk probe reports an escape if it sees it.
pub struct HostMarker {
    path: PathBuf,
    /// Path relative to the root of the host's root filesystem.
    pub relative: String,
}

impl HostMarker {
    /// Writes a marker file on the filesystem that holds `/`.
    pub fn create() -> std::io::Result<HostMarker> {
        let root_dev = std::fs::metadata("/")?.dev();
        let dir = ["/var/tmp", "/tmp", "/root"]
            .into_iter()
            .find(|d| std::fs::metadata(d).is_ok_and(|m| m.dev() == root_dev))
            .unwrap_or("/var/tmp");
        let name = format!(".vessel-compare-marker-{}", std::process::id());
        let path = Path::new(dir).join(&name);
        std::fs::write(&path, b"vessel compare marker\n")?;
        Ok(HostMarker {
            relative: format!("{}/{name}", dir.trim_start_matches('/')),
            path,
        })
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What one running instance showed: host memory, disk, host processes.
type Instance = (
    Result<HostMemory, String>,
    Result<u64, String>,
    Result<Vec<HostProcess>, String>,
);

struct Outcome {
    elapsed: Duration,
    code: i32,
    stdout: String,
    stderr: String,
}

impl ModeRunner {
    fn vessel(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    fn run(
        &self,
        pre_image: &[String],
        image: &str,
        command: &[String],
    ) -> Result<Outcome, String> {
        let mut c = self.vessel();
        c.arg("run")
            .args(&self.run_flags)
            .args(pre_image)
            .arg(image)
            .args(command);
        let start = Instant::now();
        let out = c
            .output()
            .map_err(|e| format!("cannot start vessel: {e}"))?;
        Ok(Outcome {
            elapsed: start.elapsed(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Measures everything for this mode.
    pub fn measure(
        &self,
        image: &str,
        command: &[String],
        runs: u32,
        marker: &HostMarker,
    ) -> ModeResult {
        let rm = vec!["--rm".to_string()];
        let mut latencies = Vec::new();
        let mut first = None;
        for _ in 0..runs.max(1) {
            match self.run(&rm, image, command) {
                Ok(o) => {
                    // vessel's own failures (125) are not the workload's latency.
                    if o.code != 125 {
                        latencies.push(o.elapsed.as_secs_f64() * 1000.0);
                    }
                    first.get_or_insert(Ok(CommandOutcome {
                        exit_code: o.code,
                        stdout: o.stdout,
                        stderr: o.stderr,
                    }));
                }
                Err(e) => {
                    first.get_or_insert(Err(e));
                }
            }
        }
        let command = first.unwrap_or_else(|| Err("not run".into()));
        // When vessel itself cannot run this mode, every further measurement would fail
        // the same way: say why once instead.
        if let Ok(c) = &command {
            if c.exit_code == 125 && latencies.is_empty() {
                let why = first_error(&c.stderr).to_string();
                let unmeasured = "vessel could not run this mode".to_string();
                return ModeResult {
                    label: self.label.clone(),
                    latencies_ms: latencies,
                    command,
                    memory: Err(unmeasured.clone()),
                    disk_added: Err(unmeasured.clone()),
                    host_processes: Err(unmeasured.clone()),
                    findings: Err(unmeasured),
                    failure: Some(why),
                };
            }
        }
        let findings = self.probe(image, marker);
        let (memory, disk_added, host_processes) = self.instance(image);
        ModeResult {
            label: self.label.clone(),
            latencies_ms: latencies,
            command,
            memory,
            disk_added,
            host_processes,
            findings,
            failure: None,
        }
    }

    fn probe(&self, image: &str, marker: &HostMarker) -> Result<Findings, String> {
        let pre = vec![
            "--rm".to_string(),
            "-e".to_string(),
            format!("{}={}", probe::HOST_PID_ENV, std::process::id()),
            "-e".to_string(),
            format!("{}={}", probe::MARKER_ENV, marker.relative),
            "--entrypoint".to_string(),
            "/bin/sh".to_string(),
        ];
        let o = self.run(&pre, image, &["-c".to_string(), probe::SCRIPT.to_string()])?;
        let f = Findings::parse(&o.stdout);
        if f.is_empty() {
            return Err(format!(
                "probe failed (exit {}): {}",
                o.code,
                first_error(&o.stderr)
            ));
        }
        Ok(f)
    }

    /// Starts one detached instance, waits until its process runs, and measures its host
    /// memory, the disk its container directory holds, and how its host processes are
    /// confined.
    fn instance(&self, image: &str) -> Instance {
        let pre = vec![
            "-d".to_string(),
            "--entrypoint".to_string(),
            "/bin/sh".to_string(),
        ];
        let cmd = [
            "-c".to_string(),
            "echo vessel-compare-ready; exec sleep 120".to_string(),
        ];
        let o = match self.run(&pre, image, &cmd) {
            Ok(o) if o.code == 0 => o,
            Ok(o) => {
                let e = format!(
                    "detached run failed: {}",
                    o.stderr.lines().last().unwrap_or("")
                );
                return (Err(e.clone()), Err(e.clone()), Err(e));
            }
            Err(e) => return (Err(e.clone()), Err(e.clone()), Err(e)),
        };
        let id = o.stdout.trim().to_string();
        let result = self.measure_instance(&id);
        let _ = self
            .vessel()
            .args(["rm", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match result {
            Ok((m, d, p)) => (Ok(m), Ok(d), Ok(p)),
            Err(e) => (Err(e.clone()), Err(e.clone()), Err(e)),
        }
    }

    fn measure_instance(&self, id: &str) -> Result<(HostMemory, u64, Vec<HostProcess>), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let logs = self
                .vessel()
                .args(["logs", id])
                .output()
                .map_err(|e| e.to_string())?;
            if String::from_utf8_lossy(&logs.stdout).contains("vessel-compare-ready") {
                break;
            }
            if Instant::now() > deadline {
                return Err("instance never became ready".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let store = Store::open(&self.root).map_err(|e| e.to_string())?;
        let records = Records::open(&store.db_path()).map_err(|e| e.to_string())?;
        let record = records.find(id).map_err(|e| e.to_string())?;
        let mut roots: Vec<i32> = record.supervisor_pid.into_iter().collect();
        roots.extend(record.pid);
        if roots.is_empty() {
            return Err("the container has no host process recorded".into());
        }
        let mem = match record.pid.and_then(|pid| cgroup_memory(pid, &record.id)) {
            Some(bytes) => HostMemory {
                bytes,
                method: "cgroup usage".into(),
            },
            None => HostMemory {
                bytes: process_tree(&roots).into_iter().filter_map(pss).sum(),
                method: "PSS of its host processes".into(),
            },
        };
        let disk = allocated(&layout::container_dir(&self.root, &record.id));
        Ok((mem, disk, host_process::of_container(&record.id)))
    }
}

/// The line of vessel's stderr that says what failed.
fn first_error(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("vessel") || l.contains("panicked"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("no output")
}

/// `roots` and all their descendants, from a scan of /proc.
fn process_tree(roots: &[i32]) -> BTreeSet<i32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut tree: BTreeSet<i32> = roots.iter().copied().collect();
    loop {
        let before = tree.len();
        for &(pid, ppid) in &parent {
            if tree.contains(&ppid) {
                tree.insert(pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Proportional set size of a process in bytes (shared pages split among their users).
fn pss(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory charged to the cgroup of `pid` (v1 memory controller or v2), when that cgroup
/// is the container's own (its path names the container): a VMM runs in its caller's
/// cgroup, whose usage would count everything else in it.
fn cgroup_memory(pid: i32, id: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut v2 = None;
    for line in s.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !path.contains(id.get(..12)?) {
            continue;
        }
        if controllers.split(',').any(|c| c == "memory") {
            let f = format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes");
            return std::fs::read_to_string(f).ok()?.trim().parse().ok();
        }
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    let path = v2?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find_map(|base| std::fs::read_to_string(format!("{base}{path}/memory.current")).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Bytes allocated on disk under `path` (sparse files count what they hold), not
/// following symlinks or crossing into mounts.
fn allocated(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(dir) = std::fs::read_dir(path) {
            for e in dir.flatten() {
                let child = e.path();
                if std::fs::symlink_metadata(&child).is_ok_and(|m| m.dev() == meta.dev()) {
                    total += allocated(&child);
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_tree_includes_children() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let tree = process_tree(&[std::process::id() as i32]);
        assert!(tree.contains(&(child.id() as i32)));
        assert!(pss(std::process::id() as i32).is_some_and(|b| b > 0));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn allocated_counts_data_not_holes() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::fs::write(dir.path().join("data"), vec![1u8; 1 << 20]).unwrap();
        let n = allocated(dir.path());
        assert!((1 << 20..64 << 20).contains(&n), "{n}");
    }
}
