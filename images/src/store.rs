//! The image store: its layout under the state root, name resolution, tags and leases.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      content store (immutable, digest-verified)
//! <root>/rootfs/<hex>/           unpacked image trees (read-only by convention)
//! <root>/disks/<hex>.ext4        per-image ext4 disks for VM isolation
//! <root>/tmp/                    temp blobs and trees (.tmp-<pid>-…), swept on open
//! <root>/vessel.db               SQLite metadata (WAL)
//! <root>/store.lock              shared by writers, exclusive for garbage collection
//! ```

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use crate::content::{temp_owner, ContentStore};
use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::metadata::{self, ImageRecord};
use crate::reference::Reference;

/// An open image store.
pub struct Store {
    root: PathBuf,
    content: ContentStore,
    conn: Mutex<Connection>,
}

/// A held `store.lock`: shared while adding content, exclusive while collecting garbage.
pub(crate) struct StoreLock {
    _file: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| StoreError::io("create directory", p, e))
}

/// True when `pid` names a live process (or one we may not signal).
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists; it sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes a file or a whole tree without following symlinks (missing is fine).
pub(crate) fn remove_path(p: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("stat", p, e)),
    };
    let r = if md.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", p, e)),
    }
}

impl Store {
    /// Opens the store at `root`, creating its layout, and sweeps temp files
    /// left by processes that died (a Ctrl-C'd pull, a crash).
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["blobs/sha256", "rootfs", "disks", "tmp"] {
            mkdir(&root.join(sub))?;
        }
        // Unpacked trees and disks keep images' setuid binaries and device nodes: only
        // the store's owner may reach them, as docker does for /var/lib/docker.
        for sub in ["rootfs", "disks", "tmp"] {
            let p = root.join(sub);
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::io("chmod", &p, e))?;
        }
        let conn = metadata::open(&root.join("vessel.db"))?;
        let store = Store {
            root: root.to_path_buf(),
            content: ContentStore::new(root.join("blobs/sha256"), root.join("tmp")),
            conn: Mutex::new(conn),
        };
        store.sweep_temps();
        Ok(store)
    }

    fn sweep_temps(&self) {
        for dir in [
            self.tmp_dir(),
            self.root.join("rootfs"),
            self.root.join("disks"),
        ] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let name = ent.file_name();
                let Some(pid) = name.to_str().and_then(temp_owner) else {
                    continue;
                };
                if !alive(pid) {
                    let _ = remove_path(&ent.path());
                }
            }
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite metadata file. Other components may keep their own tables in it
    /// through their own connections (use WAL and a busy timeout, as this store does).
    pub fn db_path(&self) -> PathBuf {
        self.root.join("vessel.db")
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Where temp blobs and trees are built.
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where an image's unpacked tree lives.
    pub fn rootfs_path(&self, image_id: &str) -> PathBuf {
        self.root
            .join("rootfs")
            .join(image_id.strip_prefix("sha256:").unwrap_or(image_id))
    }

    /// Where an image's ext4 disk lives (built on demand by [`Store::image_disk`]).
    pub fn disk_path(&self, image_id: &str) -> PathBuf {
        self.root.join("disks").join(format!(
            "{}.ext4",
            image_id.strip_prefix("sha256:").unwrap_or(image_id)
        ))
    }

    /// The metadata connection.
    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions
        // roll back), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let p = self.root.join("store.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| StoreError::io("open", &p, e))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&f, op).map_err(|e| StoreError::io("lock", &p, e.into()))?;
        Ok(StoreLock { _file: f })
    }

    /// Held while adding content, so garbage collection never removes blobs or
    /// trees an image that is about to be recorded needs.
    pub(crate) fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(false)
    }

    /// Held while collecting garbage.
    pub(crate) fn lock_exclusive(&self) -> Result<StoreLock> {
        self.lock(true)
    }

    /// Resolves a name to an image ID: a reference (familiar or full, tag or
    /// digest), a full ID (`sha256:<hex>` or `<hex>`), or a unique ID prefix.
    pub fn resolve(&self, name_or_id: &str) -> Result<String> {
        let conn = self.db();
        if let Some(hex) = name_or_id.strip_prefix("sha256:") {
            return resolve_prefix(&conn, name_or_id, hex);
        }
        if let Ok(r) = Reference::parse(name_or_id) {
            if let Some(id) = metadata::resolve_ref(&conn, &r.to_string())? {
                return Ok(id);
            }
        }
        let is_hex = !name_or_id.is_empty()
            && name_or_id.len() <= 64
            && name_or_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex {
            return resolve_prefix(&conn, name_or_id, name_or_id);
        }
        // Surface a malformed name as such rather than as "not found".
        Reference::parse(name_or_id)?;
        Err(StoreError::NotFound(name_or_id.to_string()))
    }

    /// The image with this name or ID. [`StoreError::NotFound`] when there is none.
    pub fn image(&self, name_or_id: &str) -> Result<Image> {
        let id = self.resolve(name_or_id)?;
        self.image_by_id(&id)?
            .ok_or_else(|| StoreError::NotFound(name_or_id.to_string()))
    }

    /// The image with exactly this ID, if present.
    pub fn image_by_id(&self, id: &str) -> Result<Option<Image>> {
        let conn = self.db();
        let Some(rec) = metadata::get_image(&conn, id)? else {
            return Ok(None);
        };
        Ok(Some(self.build_image(&conn, rec)?))
    }

    fn build_image(&self, conn: &Connection, rec: ImageRecord) -> Result<Image> {
        let config = oci_spec::image::ImageConfiguration::from_reader(&rec.config[..])
            .map_err(|e| StoreError::invalid(format!("config of image {}", rec.id), e))?;
        let mut references = Vec::new();
        let mut repo_digests = Vec::new();
        for name in metadata::refs_of(conn, &rec.id)? {
            let familiar = Reference::parse(&name)
                .map(|r| r.familiar())
                .unwrap_or(name.clone());
            if name.contains('@') {
                repo_digests.push(familiar);
            } else {
                references.push(familiar);
            }
        }
        let created = rec
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        Ok(Image {
            rootfs: self.rootfs_path(&rec.id),
            layers: metadata::layers_of(conn, &rec.id)?,
            id: rec.id,
            references,
            repo_digests,
            config,
            created,
            size: rec.size,
            manifest_digest: rec.manifest_digest,
            added: rec.added,
        })
    }

    /// Every image in the store (unordered). An image whose record cannot be read
    /// is left out here (so one bad row does not hide the others) and reported by
    /// `system check`.
    pub fn all_images(&self) -> Result<Vec<Image>> {
        let conn = self.db();
        let recs = metadata::all_images(&conn)?;
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            match self.build_image(&conn, r) {
                Ok(i) => out.push(i),
                Err(StoreError::Db(e)) => return Err(StoreError::Db(e)),
                Err(_) => {}
            }
        }
        Ok(out)
    }

    /// Points `target` at the image `source` names (moving `target` if it named another image).
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let id = self.resolve(source)?;
        let r = Reference::parse(target)?;
        if r.digest().is_some() {
            return Err(StoreError::invalid(
                format!("target reference {target}"),
                "a tag cannot carry a digest",
            ));
        }
        metadata::set_ref(&self.db(), &r.to_string(), &id)
    }

    /// Records that `holder` (a container) uses `image_id`: `rmi` refuses to
    /// delete the image and garbage collection keeps it until the lease is removed.
    pub fn add_lease(&self, holder: &str, image_id: &str) -> Result<()> {
        let conn = self.db();
        if metadata::get_image(&conn, image_id)?.is_none() {
            return Err(StoreError::NotFound(image_id.to_string()));
        }
        metadata::add_lease(&conn, holder, image_id)
    }

    /// Drops `holder`'s lease (no error if it has none).
    pub fn remove_lease(&self, holder: &str) -> Result<()> {
        metadata::remove_lease(&self.db(), holder).map(|_| ())
    }

    /// Holders of leases on an image.
    pub fn leases(&self, image_id: &str) -> Result<Vec<String>> {
        metadata::leases_of(&self.db(), image_id)
    }
}

fn resolve_prefix(conn: &Connection, input: &str, hex: &str) -> Result<String> {
    if hex.is_empty() || hex.len() > 64 {
        return Err(StoreError::NotFound(input.to_string()));
    }
    let ids = metadata::ids_with_prefix(conn, hex)?;
    match ids.len() {
        0 => Err(StoreError::NotFound(input.to_string())),
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        _ => Err(StoreError::Ambiguous(input.to_string())),
    }
}
