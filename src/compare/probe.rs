//! The probe run inside each isolation mode, and the parsing of what it prints.

use std::collections::BTreeMap;

/// The probe script, run with `sh -c` inside the container or VM.
pub const SCRIPT: &str = include_str!("probe.sh");

/// Environment variable carrying the host PID the probe looks for in its /proc.
pub const HOST_PID_ENV: &str = "VESSEL_PROBE_HOST_PID";
/// Environment variable carrying the marker file's path relative to the host's root disk.
pub const MARKER_ENV: &str = "VESSEL_PROBE_MARKER";

/// What the probe printed: key → value, in the order of the script.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings(BTreeMap<String, String>);

impl Findings {
    /// Parses `key=value` lines; other lines (the workload's noise) are ignored.
    pub fn parse(output: &str) -> Findings {
        let mut map = BTreeMap::new();
        for line in output.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    map.insert(k.to_string(), v.trim().to_string());
                }
            }
        }
        Findings(map)
    }

    /// The value the probe printed for `key`, if it printed one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether the probe ran at all (it always prints `kernel=`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_values_and_ignores_noise() {
        let f = Findings::parse("kernel=6.1.0\nnoise line\nBAD=1\nprobe_sysrq=blocked\n=x\n");
        assert_eq!(f.get("kernel"), Some("6.1.0"));
        assert_eq!(f.get("probe_sysrq"), Some("blocked"));
        assert_eq!(f.get("BAD"), None);
        assert_eq!(f.get("noise line"), None);
    }

    /// The probe is real shell: run it on this host with busybox's sh where available and
    /// check it prints every key the report reads.
    #[test]
    fn script_runs_under_busybox_sh() {
        let sh = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(sh) = sh else {
            eprintln!("SKIP: busybox not installed");
            return;
        };
        let out = std::process::Command::new(sh)
            .args(["sh", "-c", SCRIPT])
            .env(HOST_PID_ENV, std::process::id().to_string())
            .env("VESSEL_PROBE_NO_ESCAPES", "1")
            .output()
            .expect("run busybox sh");
        let f = Findings::parse(&String::from_utf8_lossy(&out.stdout));
        for key in super::super::report::PROBE_KEYS {
            assert!(f.get(key).is_some(), "probe printed no {key}: {f:?}");
        }
        assert_eq!(f.get("host_pid_visible"), Some("yes"));
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(f.get("kernel"), Some(host_kernel.trim()));
    }
}
