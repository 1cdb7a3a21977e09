//! VMM start-up benchmark: time from process start to the first serial byte of a
//! tiny PVH guest, CPU time spent by then, and resident memory minus the guest
//! memory touched, for `vessel-vmm` and for QEMU's microvm, medians over N runs.
//!
//! Usage: bench_vmm --vessel PATH [--qemu PATH] [--runs N] [--memory-mib M]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    first_byte_ms: f64,
    cpu_ms: f64,
    rss_kib: u64,
    guest_kib: u64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU time of all live threads of `pid`, from schedstat (nanoseconds on CPU).
fn cpu_ms(pid: u32) -> f64 {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / 1e6
}

/// (total Rss, Rss of the guest-RAM mapping) in KiB. The guest RAM is the mapping
/// whose size is the guest memory size (QEMU may round it up by up to 4 MiB).
fn rss(pid: u32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest) = (0u64, 0u64);
    let mut size = 0u64;
    for line in smaps.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let v: u64 = v.parse().unwrap_or(0);
                total += v;
                if size >= guest_kib && size <= guest_kib + 4096 {
                    guest += v;
                }
            }
            _ => {}
        }
    }
    (total, guest)
}

fn measure(mut cmd: Command, guest_kib: u64) -> Option<Sample> {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let mut out = child.stdout.take()?;
    let mut buf = [0u8; 1];
    let got = out.read(&mut buf).ok()?;
    let first_byte_ms = start.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_ms(pid);
    if got == 0 {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    // Let the guest finish its line and the VMM settle before sampling memory.
    std::thread::sleep(Duration::from_millis(100));
    let (rss_kib, guest) = rss(pid, guest_kib);
    let _ = child.kill();
    let _ = child.wait();
    Some(Sample {
        first_byte_ms,
        cpu_ms: cpu,
        rss_kib,
        guest_kib: guest,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn run(name: &str, runs: usize, guest_kib: u64, make: &dyn Fn() -> Command) -> Option<[f64; 5]> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        if let Some(s) = measure(make(), guest_kib) {
            samples.push(s);
        }
    }
    if samples.is_empty() {
        eprintln!("{name}: no successful run");
        return None;
    }
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Some([
        m(&|s| s.first_byte_ms),
        m(&|s| s.cpu_ms),
        m(&|s| s.rss_kib as f64 / 1024.0),
        m(&|s| s.guest_kib as f64 / 1024.0),
        m(&|s| (s.rss_kib.saturating_sub(s.guest_kib)) as f64 / 1024.0),
    ])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vessel = PathBuf::from(arg(&args, "--vessel").expect("--vessel PATH is required"));
    let qemu = arg(&args, "--qemu").unwrap_or_else(|| "qemu-system-x86_64".into());
    let runs: usize = arg(&args, "--runs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let memory_mib: u64 = arg(&args, "--memory-mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let guest_kib = memory_mib * 1024;

    let dir = std::env::temp_dir().join(format!("vessel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let elf = dir.join("guest.elf");
    std::fs::write(&elf, vessel_vmm::tiny_guest::benchmark_guest(false)).expect("write guest");
    let mut config = vessel_vmm::VmConfig::new(&elf);
    config.memory_mib = memory_mib as u32;
    config.serial = vessel_vmm::config::SerialOutput::Stdout;
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, config.to_json()).expect("write config");

    let vessel_cmd = || {
        let mut c = Command::new(&vessel);
        c.arg("--config").arg(&config_path);
        c
    };
    let unfiltered_cmd = || {
        let mut c = Command::new(&vessel);
        c.arg("--no-seccomp").arg("--config").arg(&config_path);
        c
    };
    let qemu_cmd = || {
        let mut c = Command::new(&qemu);
        c.args(["-M", "microvm", "-accel", "kvm", "-cpu", "qemu64,-cx16"])
            .args(["-m", &format!("{memory_mib}M")])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", "none", "-kernel"])
            .arg(&elf);
        c
    };
    println!("tiny PVH guest, {memory_mib} MiB, medians of {runs} runs");
    println!(
        "{:<28} {:>14} {:>12} {:>10} {:>12} {:>14}",
        "VMM", "1st byte (ms)", "CPU (ms)", "RSS (MiB)", "guest (MiB)", "overhead (MiB)"
    );
    let rows: [(&str, &dyn Fn() -> Command); 3] = [
        ("vessel-vmm (seccomp filters)", &vessel_cmd),
        ("vessel-vmm --no-seccomp", &unfiltered_cmd),
        ("qemu -M microvm -accel kvm", &qemu_cmd),
    ];
    for (name, make) in rows {
        if let Some([first, cpu, rss, guest, over]) = run(name, runs, guest_kib, make) {
            println!("{name:<28} {first:>14.1} {cpu:>12.1} {rss:>10.1} {guest:>12.2} {over:>14.1}");
        }
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
