//! The container's process, resolved from the image config and the `run` flags the way
//! docker applies them. Both isolation modes start exactly this.

use std::path::Path;

use super::user::{self, UserError};
pub use crate::isolation::ProcessSpec;

/// docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image's config that shape its process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
}

impl ImageDefaults {
    /// Extracts the process defaults from an OCI image configuration.
    pub fn from_oci(config: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        }
    }
}

/// What the `run` (or `exec`) command line asks for.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--entrypoint`; `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// COMMAND [ARG...].
    pub command: Vec<String>,
    /// `-e`/`--env-file` entries in order: `K=V`, or `K` to take the host's value.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `-t`.
    pub terminal: bool,
}

/// Why a process could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Neither the image nor the command line names a command.
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// `-w` or the image's WorkingDir is relative.
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkdir(String),
    /// An environment entry is malformed.
    #[error("invalid environment variable {0:?}")]
    BadEnv(String),
    /// An env file could not be read.
    #[error("reading env file {path}: {source}")]
    EnvFile {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The user or group is not known to the image.
    #[error(transparent)]
    User(#[from] UserError),
}

/// Reads a docker env file: `KEY=VALUE` or `KEY` lines; blank lines and `#` comments skipped.
pub fn read_env_file(path: &Path) -> Result<Vec<String>, ProcessError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcessError::EnvFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

/// Sets `key=value` in `env`, replacing an earlier definition in place.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or_default().to_string();
    match env
        .iter_mut()
        .find(|e| e.split('=').next() == Some(key.as_str()))
    {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter().any(|e| e.split('=').next() == Some(key))
}

/// Combines the image defaults with the overrides; `rootfs` is the image's root filesystem,
/// read for /etc/passwd and /etc/group when a user is named.
pub fn resolve(
    image: &ImageDefaults,
    ov: &Overrides,
    default_hostname: &str,
    rootfs: &Path,
) -> Result<ProcessSpec, ProcessError> {
    // docker: --entrypoint replaces the image's entrypoint and drops the image's Cmd.
    let (entrypoint, cmd) = match &ov.entrypoint {
        Some(e) => {
            let ep = if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            };
            (ep, ov.command.clone())
        }
        None if !ov.command.is_empty() => (image.entrypoint.clone(), ov.command.clone()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand);
    }

    let hostname = ov
        .hostname
        .clone()
        .unwrap_or_else(|| default_hostname.to_string());
    let mut env = Vec::new();
    for e in &image.env {
        if !e.contains('=') {
            return Err(ProcessError::BadEnv(e.clone()));
        }
        set_env(&mut env, e.clone());
    }
    for e in &ov.env {
        if e.is_empty() || e.starts_with('=') {
            return Err(ProcessError::BadEnv(e.clone()));
        }
        if e.contains('=') {
            set_env(&mut env, e.clone());
        } else if let Ok(v) = std::env::var(e) {
            set_env(&mut env, format!("{e}={v}"));
        }
    }
    if !has_env(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has_env(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if ov.terminal && !has_env(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }

    let cwd = ov
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(ProcessError::RelativeWorkdir(cwd));
    }

    let user_spec = ov
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| image.user.clone())
        .unwrap_or_else(|| "0".to_string());
    let who = user::resolve(&user_spec, rootfs)?;
    if !has_env(&env, "HOME") {
        env.push(format!("HOME={}", who.home));
    }

    Ok(ProcessSpec {
        args,
        env,
        cwd,
        uid: who.uid,
        gid: who.gid,
        additional_gids: who.additional_gids,
        hostname,
        terminal: ov.terminal,
    })
}

/// The process `vessel exec` runs in a container whose main process is `base`: the same
/// resolution as `run`'s, with `base` in the image's place (its environment, working
/// directory and user) and `ov` on top. Without `-u` it runs as `base`'s user, groups
/// included.
pub fn for_exec(
    base: &ProcessSpec,
    ov: &Overrides,
    rootfs: &Path,
) -> Result<ProcessSpec, ProcessError> {
    let image = ImageDefaults {
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: base.env.clone(),
        working_dir: Some(base.cwd.clone()),
        user: None,
    };
    let ov = Overrides {
        entrypoint: None,
        hostname: Some(base.hostname.clone()),
        ..ov.clone()
    };
    let mut p = resolve(&image, &ov, &base.hostname, rootfs)?;
    if ov.user.as_deref().is_none_or(str::is_empty) {
        p.uid = base.uid;
        p.gid = base.gid;
        p.additional_gids = base.additional_gids.clone();
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["a".into(), "b".into()],
            env: vec!["A=1".into(), "PATH=/bin".into()],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    fn resolve_with(ov: Overrides) -> ProcessSpec {
        let dir = tempfile::tempdir().unwrap();
        resolve(&image(), &ov, "host", dir.path()).unwrap()
    }

    #[test]
    fn exec_takes_the_containers_process_and_its_own_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let base = ProcessSpec {
            args: vec!["main".into()],
            env: vec!["PATH=/bin".into(), "A=1".into(), "HOME=/home/app".into()],
            cwd: "/srv".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![27],
            hostname: "box".into(),
            terminal: false,
        };
        let ov = Overrides {
            command: vec!["sh".into()],
            env: vec!["A=2".into(), "B=3".into()],
            terminal: true,
            ..Default::default()
        };
        let p = for_exec(&base, &ov, dir.path()).unwrap();
        assert_eq!(p.args, ["sh"]);
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.clone()),
            (1000, 1000, vec![27])
        );
        assert_eq!(p.cwd, "/srv");
        assert!(p.env.contains(&"A=2".to_string()) && p.env.contains(&"B=3".to_string()));
        assert!(p.env.contains(&"TERM=xterm".to_string()));
        assert!(p.env.contains(&"HOME=/home/app".to_string()));
        let ov = Overrides {
            command: vec!["id".into()],
            workdir: Some("/tmp".into()),
            user: Some("0:0".into()),
            ..Default::default()
        };
        let p = for_exec(&base, &ov, dir.path()).unwrap();
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (0, 0, "/tmp"));
        assert!(for_exec(&base, &Overrides::default(), dir.path()).is_err());
    }

    #[test]
    fn entrypoint_and_cmd_combine_and_override() {
        assert_eq!(resolve_with(Overrides::default()).args, ["/ep", "a", "b"]);
        let ov = Overrides {
            command: vec!["c".into()],
            ..Default::default()
        };
        assert_eq!(resolve_with(ov).args, ["/ep", "c"]);
        let ov = Overrides {
            entrypoint: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(resolve_with(ov).args, ["/x"]);
        let ov = Overrides {
            entrypoint: Some(String::new()),
            command: vec!["sh".into()],
            ..Default::default()
        };
        assert_eq!(resolve_with(ov).args, ["sh"]);
    }

    #[test]
    fn no_command_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(
            &ImageDefaults::default(),
            &Overrides::default(),
            "h",
            dir.path(),
        );
        assert!(matches!(err, Err(ProcessError::NoCommand)));
    }

    #[test]
    fn env_merges_by_key() {
        let ov = Overrides {
            env: vec!["A=2".into(), "B=3".into()],
            ..Default::default()
        };
        let p = resolve_with(ov);
        assert_eq!(p.env[0], "A=2");
        assert!(p.env.contains(&"PATH=/bin".to_string()));
        assert!(p.env.contains(&"B=3".to_string()));
        assert!(p.env.contains(&"HOSTNAME=host".to_string()));
        assert!(p.env.contains(&"HOME=/root".to_string()));
        assert_eq!(p.cwd, "/srv");
    }

    #[test]
    fn relative_workdir_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ov = Overrides {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&image(), &ov, "h", dir.path()),
            Err(ProcessError::RelativeWorkdir(_))
        ));
    }
}
