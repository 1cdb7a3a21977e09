//! `-u USER[:GROUP]` resolution through the image's own /etc/passwd and /etc/group.

use std::path::{Path, PathBuf};

/// The identity a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary group IDs.
    pub additional_gids: Vec<u32>,
    /// Home directory (for `$HOME`).
    pub home: String,
}

/// Why a user or group could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user name that the image's /etc/passwd does not list.
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    /// A group name that the image's /etc/group does not list.
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `rel` (e.g. "etc/passwd") below `rootfs` only if it resolves inside it: a symlink
/// pointing out of the image must not make us read the host's file.
fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    let root = rootfs.canonicalize().ok()?;
    let path: PathBuf = root.join(rel).canonicalize().ok()?;
    if !path.starts_with(&root) {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_in_root(rootfs, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<GroupEntry> {
    read_in_root(rootfs, "etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `USER[:GROUP]` (names or numbers) against the image at `rootfs`.
pub fn resolve(spec: &str, rootfs: &Path) -> Result<Identity, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(rootfs);
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        ),
    };
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => return Err(UserError::NoUser(user.to_string())),
    };
    let all_groups = groups(rootfs);
    let gid = match group.filter(|g| !g.is_empty()) {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                all_groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| UserError::NoGroup(g.to_string()))?
                    .gid
            }
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };
    let additional_gids = match entry {
        Some(e) => all_groups
            .iter()
            .filter(|g| g.members.contains(&e.name) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root" } else { "/" }.to_string());
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nstaff:x:50:alice,bob\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_and_numbers() {
        let r = rootfs();
        let a = resolve("alice", r.path()).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.additional_gids, [50]);
        let b = resolve("1000:staff", r.path()).unwrap();
        assert_eq!((b.uid, b.gid), (1000, 50));
        let c = resolve("4242:7", r.path()).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (4242, 7, "/"));
        assert!(matches!(
            resolve("nobody", r.path()),
            Err(UserError::NoUser(_))
        ));
        assert!(matches!(
            resolve("alice:nogroup", r.path()),
            Err(UserError::NoGroup(_))
        ));
    }

    #[test]
    fn passwd_symlink_out_of_root_is_ignored() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", r.path().join("etc/passwd"))
            .unwrap();
        assert!(matches!(
            resolve("root", r.path()),
            Err(UserError::NoUser(_))
        ));
    }
}
