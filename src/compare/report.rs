//! The comparison table: rows built from what was measured in each mode, and its
//! table, JSON and markdown renderings.

use serde::Serialize;
use serde_json::{json, Value};

use super::probe::Findings;
use crate::isolation::host_process::HostProcess;

/// Keys the probe must print for the report to fill every row.
#[cfg(test)]
pub const PROBE_KEYS: &[&str] = &[
    "kernel",
    "boot_id",
    "processes",
    "mounts",
    "interfaces",
    "cpus",
    "mem_total_kib",
    "dev_entries",
    "block_devices",
    "kvm_visible",
    "host_pid_visible",
    "hostname",
    "proc_sys",
    "probe_sysrq",
    "probe_module",
    "probe_host_disk",
];

/// Facts about the host the rows are compared against.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    /// `uname -r` of the host.
    pub kernel: String,
    /// The host kernel's boot ID: equal inside means the very same kernel instance.
    pub boot_id: String,
    /// The host's hostname.
    pub hostname: String,
}

/// The user's command as it ran once.
#[derive(Debug, Clone, Serialize)]
pub struct CommandOutcome {
    /// Exit status `vessel run` returned.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Memory a running instance holds on the host.
#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    /// Bytes.
    pub bytes: u64,
    /// How it was measured.
    pub method: String,
}

/// Everything measured for one isolation mode.
#[derive(Debug, Clone)]
pub struct ModeResult {
    /// Column heading, e.g. `container` or `vm (qemu)`.
    pub label: String,
    /// Start-to-exit latency of each successful run, milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The first run of the user's command.
    pub command: Result<CommandOutcome, String>,
    /// Host memory of one running instance.
    pub memory: Result<HostMemory, String>,
    /// Bytes the container's directory holds on disk while it runs.
    pub disk_added: Result<u64, String>,
    /// What the probe saw inside.
    pub findings: Result<Findings, String>,
    /// The host processes of one running instance (the VMM and its helpers, or the
    /// container's own processes) and what each may do.
    pub host_processes: Result<Vec<HostProcess>, String>,
    /// Why vessel could not run this mode at all, if it could not.
    pub failure: Option<String>,
}

/// One cell: a value for scripts and its display text.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Machine-readable value (number, string, bool or null when unmeasured).
    pub value: Value,
    /// What the table shows.
    pub display: String,
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        let s = s.into();
        Cell {
            value: Value::String(s.clone()),
            display: s,
        }
    }

    fn failed(reason: &str) -> Cell {
        Cell {
            value: Value::Null,
            display: format!("unmeasured: {reason}"),
        }
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `cost`, `workload sees`, `host reach` or `command`.
    pub section: &'static str,
    /// Stable key for scripts.
    pub key: &'static str,
    /// What the row measures.
    pub label: &'static str,
    /// Container isolation's cell.
    pub container: Cell,
    /// VM isolation's cell.
    pub vm: Cell,
    /// The two cells differ.
    pub differs: bool,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The image compared.
    pub image: String,
    /// The command run (empty: the image's default).
    pub command: Vec<String>,
    /// Runs per mode for the latency rows.
    pub runs: u32,
    /// The column headings: container mode, VM mode.
    pub modes: [String; 2],
    /// The host compared against.
    pub host: HostFacts,
    /// Every row.
    pub rows: Vec<Row>,
    /// Modes vessel could not run at all, with the reason: `[container, vm]`.
    pub failures: [Option<String>; 2],
}

/// Median and 90th percentile (nearest rank) of `samples`.
pub fn percentiles(samples: &[f64]) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let idx = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
        s[idx]
    };
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Some((median, rank(0.9)))
}

fn bytes_display(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024 * 1024 {
        format!("{:.1} MiB", b as f64 / MIB)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn ms_cell(v: Option<f64>, failed: &str) -> Cell {
    match v {
        Some(ms) => Cell {
            value: json!((ms * 10.0).round() / 10.0),
            display: format!("{ms:.0} ms"),
        },
        None => Cell::failed(failed),
    }
}

/// Builds every row from the two modes' results (`modes[0]` container, `modes[1]` VM).
pub fn build(
    image: &str,
    command: &[String],
    runs: u32,
    host: HostFacts,
    modes: [&ModeResult; 2],
) -> Report {
    let mut rows = Vec::new();
    let mut push = |section, key, label, cells: [Cell; 2]| {
        let [container, vm] = cells;
        let differs = container.value != vm.value;
        rows.push(Row {
            section,
            key,
            label,
            container,
            vm,
            differs,
        });
    };
    let per_mode = |f: &dyn Fn(&ModeResult) -> Cell| [f(modes[0]), f(modes[1])];

    // Cost.
    let pct = |m: &ModeResult| percentiles(&m.latencies_ms);
    push(
        "cost",
        "latency_median_ms",
        "start-to-exit latency, median",
        per_mode(&|m| ms_cell(pct(m).map(|p| p.0), "no successful run")),
    );
    push(
        "cost",
        "latency_p90_ms",
        "start-to-exit latency, p90",
        per_mode(&|m| ms_cell(pct(m).map(|p| p.1), "no successful run")),
    );
    push(
        "cost",
        "host_memory_bytes",
        "host memory per running instance",
        per_mode(&|m| match &m.memory {
            Ok(mem) => Cell {
                value: json!(mem.bytes),
                display: format!("{} ({})", bytes_display(mem.bytes), mem.method),
            },
            Err(e) => Cell::failed(e),
        }),
    );
    push(
        "cost",
        "disk_added_bytes",
        "disk added per container",
        per_mode(&|m| match &m.disk_added {
            Ok(b) => Cell {
                value: json!(b),
                display: bytes_display(*b),
            },
            Err(e) => Cell::failed(e),
        }),
    );

    // What the workload sees.
    let probe = |key: &'static str| {
        move |m: &ModeResult| match &m.findings {
            Ok(f) => match f.get(key) {
                Some(v) => Cell::text(v),
                None => Cell::failed("probe printed nothing"),
            },
            Err(e) => Cell::failed(e),
        }
    };
    let number = |key: &'static str| {
        move |m: &ModeResult| {
            let c = probe(key)(m);
            match c.value.as_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => Cell {
                    value: json!(n),
                    display: n.to_string(),
                },
                None => c,
            }
        }
    };
    push(
        "workload sees",
        "kernel_release",
        "kernel release",
        per_mode(&probe("kernel")),
    );
    push(
        "workload sees",
        "processes",
        "visible processes",
        per_mode(&number("processes")),
    );
    push(
        "workload sees",
        "mounts",
        "mounts",
        per_mode(&number("mounts")),
    );
    push(
        "workload sees",
        "interfaces",
        "network interfaces",
        per_mode(&probe("interfaces")),
    );
    push("workload sees", "cpus", "CPUs", per_mode(&number("cpus")));
    push(
        "workload sees",
        "memory_kib",
        "memory (MemTotal, KiB)",
        per_mode(&number("mem_total_kib")),
    );

    // What it can reach of the host.
    let same_kernel = |m: &ModeResult| -> Option<bool> {
        let f = m.findings.as_ref().ok()?;
        Some(f.get("boot_id")? == host.boot_id)
    };
    push(
        "host reach",
        "kernel_instance",
        "kernel its syscalls reach",
        per_mode(&|m| match (same_kernel(m), &m.findings) {
            (Some(true), _) => Cell::text(format!("the host's ({}, same boot ID)", host.kernel)),
            (Some(false), _) => Cell::text("a separate guest kernel (own boot ID)"),
            (None, Err(e)) => Cell::failed(e),
            (None, Ok(_)) => Cell::failed("probe printed no boot ID"),
        }),
    );
    let whose = |m: &ModeResult, v: Cell| match (same_kernel(m), v.value.as_str()) {
        (Some(true), Some(s)) => Cell::text(format!("host's: {s}")),
        (Some(false), Some(s)) => Cell::text(format!("guest's own: {s}")),
        _ => v,
    };
    push(
        "host reach",
        "block_devices",
        "block devices listed",
        per_mode(&|m| whose(m, probe("block_devices")(m))),
    );
    push(
        "host reach",
        "dev_entries",
        "entries in /dev",
        per_mode(&number("dev_entries")),
    );
    push(
        "host reach",
        "host_pids_visible",
        "host PIDs visible",
        per_mode(&probe("host_pid_visible")),
    );
    push(
        "host reach",
        "host_proc_sys",
        "host's /proc/sys",
        per_mode(&|m| {
            let v = probe("proc_sys")(m);
            match (same_kernel(m), v.value.as_str()) {
                (Some(true), Some("ro")) => Cell::text("visible, read-only"),
                (Some(true), Some("rw")) => Cell::text("visible, WRITABLE"),
                (Some(false), Some(_)) => Cell::text("not visible (guest kernel's own)"),
                (_, Some("absent")) => Cell::text("not visible"),
                _ => v,
            }
        }),
    );
    push(
        "host reach",
        "kvm_visible",
        "/dev/kvm visible",
        per_mode(&probe("kvm_visible")),
    );
    push(
        "host reach",
        "host_hostname_visible",
        "sees the host's hostname",
        per_mode(&|m| {
            let v = probe("hostname")(m);
            match v.value.as_str() {
                Some(h) => Cell::text(if h == host.hostname { "yes" } else { "no" }),
                None => v,
            }
        }),
    );
    let escape = |key: &'static str| {
        move |m: &ModeResult| {
            let v = probe(key)(m);
            match (same_kernel(m), v.value.as_str()) {
                (Some(false), Some(s)) if s.starts_with("allowed") => {
                    Cell::text(format!("{s}, guest kernel only"))
                }
                (Some(true), Some(s)) if s.starts_with("allowed") => {
                    Cell::text(format!("{s}, ON THE HOST KERNEL"))
                }
                _ => v,
            }
        }
    };
    push(
        "host reach",
        "probe_sysrq",
        "escape probe: write /proc/sysrq-trigger",
        per_mode(&escape("probe_sysrq")),
    );
    push(
        "host reach",
        "probe_module",
        "escape probe: load a kernel module",
        per_mode(&escape("probe_module")),
    );
    push(
        "host reach",
        "probe_host_disk",
        "escape probe: mount the host's disk",
        per_mode(&escape("probe_host_disk")),
    );

    // How each host process of a running instance is confined.
    let processes = |f: fn(&[HostProcess]) -> Cell| {
        move |m: &ModeResult| match &m.host_processes {
            Ok(p) if p.is_empty() => Cell::failed("no host process found in its cgroup"),
            Ok(p) => f(p),
            Err(e) => Cell::failed(e),
        }
    };
    push(
        "host reach",
        "host_processes_seccomp",
        "host processes: under a seccomp filter",
        per_mode(&processes(|p| {
            let n = p.iter().filter(|h| h.seccomp == 2).count();
            Cell {
                value: json!(n == p.len()),
                display: format!("{n} of {}", p.len()),
            }
        })),
    );
    push(
        "host reach",
        "host_processes_namespaces",
        "host processes: namespaces shared with the host",
        per_mode(&processes(|p| {
            let mut shared: Vec<&str> = p.iter().flat_map(|h| h.shared_namespaces()).collect();
            shared.sort_unstable();
            shared.dedup();
            Cell {
                value: json!(shared),
                display: if shared.is_empty() {
                    "none".into()
                } else {
                    shared.join(", ")
                },
            }
        })),
    );
    push(
        "host reach",
        "host_processes_capabilities",
        "host processes: effective capabilities",
        per_mode(&processes(|p| {
            let mut caps: Vec<&str> = p
                .iter()
                .filter(|h| !h.capless())
                .map(|h| h.cap_eff.as_str())
                .collect();
            caps.sort_unstable();
            caps.dedup();
            let without = p.iter().filter(|h| h.capless()).count();
            Cell {
                value: json!(caps),
                display: if caps.is_empty() {
                    format!("none ({without} of {})", p.len())
                } else {
                    format!(
                        "{without} of {} with none; others {}",
                        p.len(),
                        caps.join(", ")
                    )
                },
            }
        })),
    );

    // The command itself.
    push(
        "command",
        "exit_code",
        "exit code",
        per_mode(&|m| match &m.command {
            Ok(c) => Cell {
                value: json!(c.exit_code),
                display: c.exit_code.to_string(),
            },
            Err(e) => Cell::failed(e),
        }),
    );
    push(
        "command",
        "stdout",
        "output",
        per_mode(&|m| match &m.command {
            Ok(c) => Cell {
                value: json!(c.stdout),
                display: summarize(&c.stdout),
            },
            Err(e) => Cell::failed(e),
        }),
    );
    push(
        "command",
        "stderr",
        "error output",
        per_mode(&|m| match &m.command {
            Ok(c) => Cell {
                value: json!(c.stderr),
                display: summarize(&c.stderr),
            },
            Err(e) => Cell::failed(e),
        }),
    );

    Report {
        image: image.to_string(),
        command: command.to_vec(),
        runs,
        modes: [modes[0].label.clone(), modes[1].label.clone()],
        host,
        rows,
        failures: [modes[0].failure.clone(), modes[1].failure.clone()],
    }
}

/// One line of at most 60 characters standing for a whole output.
fn summarize(s: &str) -> String {
    let lines = s.lines().count();
    let first: String = s.lines().next().unwrap_or("").chars().take(60).collect();
    match lines {
        0 => "(empty)".to_string(),
        1 => first,
        n => format!("{first} … ({n} lines)"),
    }
}

/// Rows whose cells differ where they should not: the command's own result.
pub fn command_differs(report: &Report) -> bool {
    report
        .rows
        .iter()
        .any(|r| r.section == "command" && r.differs)
}

impl Report {
    /// Plain text table for a terminal.
    pub fn to_table(&self) -> String {
        let label_w = self.rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
        let cw = |f: fn(&Row) -> &Cell, h: &str| {
            self.rows
                .iter()
                .map(|r| f(r).display.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let (c0, c1) = (
            cw(|r| &r.container, &self.modes[0]),
            cw(|r| &r.vm, &self.modes[1]),
        );
        let mut out = String::new();
        out.push_str(&format!(
            "{:label_w$}  {:c0$}  {:c1$}\n",
            "", self.modes[0], self.modes[1]
        ));
        let mut section = "";
        for r in &self.rows {
            if r.section != section {
                section = r.section;
                out.push_str(&format!("{}\n", section.to_uppercase()));
            }
            let flag = if r.section == "command" && r.differs {
                "  <- differs"
            } else {
                ""
            };
            out.push_str(&format!(
                "{:label_w$}  {}{}  {}{}\n",
                r.label,
                r.container.display,
                " ".repeat(c0.saturating_sub(r.container.display.chars().count())),
                r.vm.display,
                flag,
            ));
        }
        out.push_str(&self.footnotes());
        out
    }

    /// One line per mode vessel could not run, naming why.
    fn footnotes(&self) -> String {
        self.modes
            .iter()
            .zip(&self.failures)
            .filter_map(|(mode, f)| f.as_ref().map(|f| format!("\n{mode}: {f}\n")))
            .collect()
    }

    /// Markdown table, as docs/isolation.md shows it.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| | measurement | {} | {} |\n|---|---|---|---|\n",
            esc(&self.modes[0]),
            esc(&self.modes[1])
        );
        for r in &self.rows {
            let flag = if r.section == "command" && r.differs {
                " **(differs)**"
            } else {
                ""
            };
            out.push_str(&format!(
                "| {} | {}{} | {} | {} |\n",
                r.section,
                r.label,
                flag,
                esc(&r.container.display),
                esc(&r.vm.display)
            ));
        }
        out.push_str(&self.footnotes());
        out
    }

    /// JSON for scripts.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        assert_eq!(percentiles(&[]), None);
        assert_eq!(percentiles(&[5.0]), Some((5.0, 5.0)));
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentiles(&s), Some((5.5, 9.0)));
        assert_eq!(percentiles(&[3.0, 1.0, 2.0]), Some((2.0, 3.0)));
    }

    fn mode(label: &str, boot_id: &str, kernel: &str, sysrq: &str) -> ModeResult {
        let probe = format!(
            "kernel={kernel}\nboot_id={boot_id}\nprocesses=1\nmounts=9\ninterfaces=lo\ncpus=2\n\
             mem_total_kib=1000\ndev_entries=12\nblock_devices=vda\nkvm_visible=no\n\
             host_pid_visible=no\nhostname=abc\nproc_sys=ro\nprobe_sysrq={sysrq}\n\
             probe_module=blocked\nprobe_host_disk=blocked\n"
        );
        ModeResult {
            host_processes: Ok(Vec::new()),
            label: label.into(),
            latencies_ms: vec![10.0, 20.0],
            command: Ok(CommandOutcome {
                exit_code: 0,
                stdout: "hi\n".into(),
                stderr: String::new(),
            }),
            memory: Ok(HostMemory {
                bytes: 2 << 20,
                method: "cgroup".into(),
            }),
            disk_added: Err("no dir".into()),
            findings: Ok(Findings::parse(&probe)),
            failure: None,
        }
    }

    #[test]
    fn rows_say_whose_kernel_is_reached() {
        let host = HostFacts {
            kernel: "6.18".into(),
            boot_id: "B".into(),
            hostname: "host".into(),
        };
        let c = mode("container", "B", "6.18", "blocked");
        let v = mode("vm", "G", "6.1", "allowed");
        let r = build("img", &[], 2, host, [&c, &v]);
        let row = |k: &str| r.rows.iter().find(|r| r.key == k).unwrap();
        assert!(row("kernel_instance").container.display.contains("host's"));
        assert!(row("kernel_instance").vm.display.contains("guest"));
        assert_eq!(row("probe_sysrq").vm.display, "allowed, guest kernel only");
        assert_eq!(row("host_proc_sys").container.display, "visible, read-only");
        assert_eq!(row("disk_added_bytes").vm.value, Value::Null);
        assert!(!command_differs(&r));
        let json: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), r.rows.len());
        assert!(r.to_markdown().lines().count() == r.rows.len() + 2);
        assert!(r.to_table().contains("ESCAPE PROBE") || r.to_table().contains("escape probe"));
    }
}
