//! The metadata database: images, their layers, references and leases, in SQLite.
//!
//! WAL mode and a busy timeout let concurrent `vessel` processes read and write
//! without corrupting anything; every multi-row change is one transaction.
//! Other parts of vessel keep their own tables in the same file through their
//! own connections (see `Store::db_path`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    id              TEXT PRIMARY KEY,      -- sha256:<hex> of the config
    config          BLOB NOT NULL,         -- the config JSON as stored
    manifest_digest TEXT,                  -- the manifest it came with, if any
    created         TEXT,                  -- the config's created timestamp
    added           INTEGER NOT NULL,      -- unix time it entered this store
    size            INTEGER NOT NULL       -- sum of its layers' uncompressed sizes
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    blob_digest TEXT NOT NULL,             -- the stored (usually compressed) blob
    blob_size   INTEGER NOT NULL,
    media_type  TEXT NOT NULL,
    diff_id     TEXT NOT NULL,             -- digest of the uncompressed tar
    diff_size   INTEGER NOT NULL,
    PRIMARY KEY (image_id, idx)
);
CREATE INDEX IF NOT EXISTS image_layers_blob ON image_layers(blob_digest);
CREATE TABLE IF NOT EXISTS refs (
    name     TEXT PRIMARY KEY,             -- normalised: registry/repo:tag or registry/repo@sha256:...
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    added    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS refs_image ON refs(image_id);
CREATE TABLE IF NOT EXISTS leases (
    holder   TEXT PRIMARY KEY,             -- e.g. a container ID
    image_id TEXT NOT NULL,
    added    INTEGER NOT NULL
);
";

/// One layer of an image as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    /// The blob in the content store.
    pub blob_digest: String,
    /// Its size.
    pub blob_size: u64,
    /// Its media type.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub diff_size: u64,
}

/// One image row.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// sha256:<hex> of the config.
    pub id: String,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The manifest digest, if known.
    pub manifest_digest: Option<String>,
    /// The config's `created`.
    pub created: Option<String>,
    /// When it was added (unix seconds).
    pub added: i64,
    /// Uncompressed size of all layers.
    pub size: u64,
}

/// Opens (creating) the database at `path`.
pub fn open(path: &Path) -> Result<Connection> {
    // Switching a fresh file to WAL takes an exclusive lock and SQLite does not
    // always wait for it through the busy handler, so several processes opening
    // a new store at once can see "database is locked": retry for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match try_open(path) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

fn try_open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    // journal_mode returns a row, so it goes through query_row.
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Unix time now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Records an image with its layers (a no-op for an image already present)
/// and points `refs` at it, in one transaction.
pub fn insert_image(
    conn: &mut Connection,
    rec: &ImageRecord,
    layers: &[LayerRecord],
    refs: &[String],
) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let exists: bool = tx
        .query_row("SELECT 1 FROM images WHERE id = ?1", [&rec.id], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        tx.execute(
            "INSERT INTO images (id, config, manifest_digest, created, added, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![rec.id, rec.config, rec.manifest_digest, rec.created, rec.added, rec.size as i64],
        )?;
        for (i, l) in layers.iter().enumerate() {
            tx.execute(
                "INSERT INTO image_layers (image_id, idx, blob_digest, blob_size, media_type, diff_id, diff_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![rec.id, i as i64, l.blob_digest, l.blob_size as i64, l.media_type, l.diff_id, l.diff_size as i64],
            )?;
        }
    } else if rec.manifest_digest.is_some() {
        tx.execute(
            "UPDATE images SET manifest_digest = COALESCE(manifest_digest, ?2) WHERE id = ?1",
            params![rec.id, rec.manifest_digest],
        )?;
    }
    for r in refs {
        set_ref(&tx, r, &rec.id)?;
    }
    tx.commit()?;
    Ok(())
}

/// Points reference `name` at `image_id` (moving it if it pointed elsewhere).
pub fn set_ref(conn: &Connection, name: &str, image_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO refs (name, image_id, added) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, added = excluded.added",
        params![name, image_id, now()],
    )?;
    Ok(())
}

fn image_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: r.get(0)?,
        config: r.get(1)?,
        manifest_digest: r.get(2)?,
        created: r.get(3)?,
        added: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
    })
}

const IMAGE_COLS: &str = "id, config, manifest_digest, created, added, size";

/// The image with exactly this ID.
pub fn get_image(conn: &Connection, id: &str) -> Result<Option<ImageRecord>> {
    Ok(conn
        .query_row(
            &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1"),
            [id],
            image_from_row,
        )
        .optional()?)
}

/// Every image.
pub fn all_images(conn: &Connection) -> Result<Vec<ImageRecord>> {
    let mut st = conn.prepare(&format!("SELECT {IMAGE_COLS} FROM images"))?;
    let rows = st.query_map([], image_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// IDs of images whose hex starts with `prefix`.
pub fn ids_with_prefix(conn: &Connection, hex_prefix: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT id FROM images WHERE substr(id, 8, ?2) = ?1")?;
    let rows = st.query_map(params![hex_prefix, hex_prefix.len() as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The image a reference points to.
pub fn resolve_ref(conn: &Connection, name: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT image_id FROM refs WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?)
}

/// References of an image, oldest first.
pub fn refs_of(conn: &Connection, image_id: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT name FROM refs WHERE image_id = ?1 ORDER BY added, name")?;
    let rows = st.query_map([image_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes one reference; true if it existed.
pub fn remove_ref(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM refs WHERE name = ?1", [name])? > 0)
}

/// Layers of an image, base first.
pub fn layers_of(conn: &Connection, image_id: &str) -> Result<Vec<LayerRecord>> {
    let mut st = conn.prepare(
        "SELECT blob_digest, blob_size, media_type, diff_id, diff_size FROM image_layers WHERE image_id = ?1 ORDER BY idx",
    )?;
    let rows = st.query_map([image_id], |r| {
        Ok(LayerRecord {
            blob_digest: r.get(0)?,
            blob_size: r.get::<_, i64>(1)? as u64,
            media_type: r.get(2)?,
            diff_id: r.get(3)?,
            diff_size: r.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes an image row (its layers and references go with it).
pub fn delete_image(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM refs WHERE image_id = ?1", [id])?;
    conn.execute("DELETE FROM image_layers WHERE image_id = ?1", [id])?;
    conn.execute("DELETE FROM images WHERE id = ?1", [id])?;
    Ok(())
}

/// Leases held on an image.
pub fn leases_of(conn: &Connection, image_id: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT holder FROM leases WHERE image_id = ?1 ORDER BY added")?;
    let rows = st.query_map([image_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Takes (or moves) `holder`'s lease onto `image_id`.
pub fn add_lease(conn: &Connection, holder: &str, image_id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO leases (holder, image_id, added) VALUES (?1, ?2, ?3)
         ON CONFLICT(holder) DO UPDATE SET image_id = excluded.image_id",
        params![holder, image_id, now()],
    )?;
    Ok(())
}

/// Drops `holder`'s lease; true if it had one.
pub fn remove_lease(conn: &Connection, holder: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM leases WHERE holder = ?1", [holder])? > 0)
}

/// Every blob digest some image uses (layers, configs, manifests).
pub fn used_blobs(conn: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    let mut st = conn.prepare(
        "SELECT blob_digest FROM image_layers UNION SELECT id FROM images UNION SELECT manifest_digest FROM images WHERE manifest_digest IS NOT NULL",
    )?;
    for r in st.query_map([], |r| r.get::<_, String>(0))? {
        out.insert(r?);
    }
    Ok(out)
}
