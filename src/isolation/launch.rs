//! What a backend is asked to run: the container's process, its mounts, network,
//! resources and privileges, resolved once by the lifecycle (`crate::container::lifecycle`)
//! from the image and the command line. Backends only run it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A fully resolved process: what to execute, as whom, where, with which environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; never empty.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, unique keys, in order of first definition.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups (from the image's /etc/group).
    pub additional_gids: Vec<u32>,
    /// Hostname of the container.
    pub hostname: String,
    /// Give the process a pseudo-terminal.
    pub terminal: bool,
}

/// Network attachment of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// An address of its own behind a user-mode stack on the host (passt for a VM, pasta
    /// for a container): outbound TCP and UDP, DNS, published ports (docker's `bridge`).
    #[value(alias = "bridge")]
    Default,
    /// A network namespace of its own with only the loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

/// A host path made visible inside the container (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// The named volume whose directory `source` is (`-v NAME:/path`), if it is one.
    #[serde(default)]
    pub volume: Option<String>,
}

/// Resource limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (also the VM's memory size in VM mode).
    pub memory: Option<u64>,
    /// CPU quota in CPUs (1.5 = one and a half CPUs; the vCPU count in VM mode).
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
}

/// Options that only VM isolation uses; container isolation ignores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmOptions {
    /// `--vmm`: `auto`, `builtin` or `qemu`; `None` when not given (`auto`).
    pub vmm: Option<String>,
    /// Guest kernel chosen with `--kernel`.
    pub kernel: Option<PathBuf>,
    /// Show the guest kernel log and backend decisions.
    pub debug: bool,
}

/// Everything a backend needs to start a container's main process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Container ID (64 hex digits).
    pub id: String,
    /// The isolation mode that runs it.
    pub isolation: super::IsolationKind,
    /// The state root (where VM isolation finds the installed kernel and its boot cache).
    pub state_root: PathBuf,
    /// The container's directory under the state root (`containers/<id>`).
    pub dir: PathBuf,
    /// ID of the image the container runs.
    pub image_id: String,
    /// The image's unpacked root filesystem; never modified.
    pub image_rootfs: PathBuf,
    /// The image as an ext4 disk (VM isolation), shared read-only by its VMs.
    pub image_disk: Option<PathBuf>,
    /// The resolved process (argv, env, cwd, user, hostname, terminal).
    pub process: ProcessSpec,
    /// `-v` bind mounts.
    pub binds: Vec<BindMount>,
    /// `--tmpfs` mount points.
    pub tmpfs: Vec<PathBuf>,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--network`.
    pub network: NetworkMode,
    /// `-p`/`-P`: published ports, with their host ports chosen.
    #[serde(default)]
    pub ports: Vec<super::network::PortMapping>,
    /// cgroup limits.
    pub resources: Resources,
    /// `--cap-add`, upper-case without the `CAP_` prefix.
    pub cap_add: Vec<String>,
    /// `--cap-drop`, upper-case without the `CAP_` prefix (`ALL` drops every default).
    pub cap_drop: Vec<String>,
    /// VM-only options.
    pub vm: VmOptions,
}
