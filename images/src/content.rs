//! The content-addressed blob store: `blobs/sha256/<hex>`.
//!
//! A blob is written to a temp file under `tmp/`, hashed while it streams (and,
//! for layers, decompressed and hashed again for its diff_id), checked against
//! what its descriptor promised, fsynced, and only then renamed to its digest.
//! Nothing half-written or unverified is ever visible under a digest, and a
//! writer that is dropped before `commit` removes its temp file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, HashingWriter, Sha256Hasher};
use crate::error::{Result, StoreError};

/// The blob directory and the temp directory blobs are written in.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// What a committed blob turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Digest of the bytes stored.
    pub digest: Digest,
    /// Their length.
    pub size: u64,
    /// Digest of the decompressed stream, when the writer tracked it.
    pub diff_id: Option<Digest>,
    /// Length of the decompressed stream, when tracked.
    pub diff_size: Option<u64>,
}

/// What a blob must match before it is committed.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// The descriptor's digest.
    pub digest: Option<&'a Digest>,
    /// The descriptor's size.
    pub size: Option<u64>,
    /// The config's diff_id for this layer.
    pub diff_id: Option<&'a Digest>,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique temp name that carries our PID, so a later `open` can tell a dead
/// writer's leftovers from a live one's.
pub(crate) fn temp_name(tag: &str) -> String {
    format!(
        ".tmp-{}-{}-{tag}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The PID a temp name was made by, if it is one of ours.
pub(crate) fn temp_owner(name: &str) -> Option<i32> {
    name.strip_prefix(".tmp-")?.split('-').next()?.parse().ok()
}

impl ContentStore {
    /// The content store rooted at `blobs` (…/blobs/sha256), writing temps in `tmp`.
    pub fn new(blobs: PathBuf, tmp: PathBuf) -> ContentStore {
        ContentStore { blobs, tmp }
    }

    /// Where the blob with this digest lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// True when the blob is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens a stored blob for reading.
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest);
        File::open(&p).map_err(|e| StoreError::io("open blob", p, e))
    }

    /// Reads a (small) stored blob into memory.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.path(digest);
        fs::read(&p).map_err(|e| StoreError::io("read blob", p, e))
    }

    /// Size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let p = self.path(digest);
        fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| StoreError::io("stat blob", p, e))
    }

    /// Every digest in the store (entries that are not digests are skipped).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let rd = fs::read_dir(&self.blobs).map_err(|e| StoreError::io("list", &self.blobs, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io("list", &self.blobs, e))?;
            if let Some(d) = ent
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes a blob (missing is fine).
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove blob", p, e)),
        }
    }

    /// Starts writing a blob; `what` names it in errors (e.g. the layer digest).
    pub fn writer(&self, what: impl Into<String>) -> Result<BlobWriter> {
        let tmp_path = self.tmp.join(temp_name("blob"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| StoreError::io("create temp blob", &tmp_path, e))?;
        Ok(BlobWriter {
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            tmp_path,
            final_dir: self.blobs.clone(),
            hasher: Sha256Hasher::new(),
            diff: None,
            diff_error: None,
            what: what.into(),
        })
    }

    /// Stores an in-memory blob (config, manifest), verifying it when a digest is given.
    pub fn put_bytes(&self, data: &[u8], expected: Option<&Digest>, what: &str) -> Result<Digest> {
        let d = Digest::of_bytes(data);
        if let Some(e) = expected {
            if *e != d {
                return Err(StoreError::DigestMismatch {
                    what: what.to_string(),
                    expected: e.to_string(),
                    actual: d.to_string(),
                });
            }
        }
        if self.has(&d) {
            return Ok(d);
        }
        let mut w = self.writer(what)?;
        w.write_all(data)
            .map_err(|e| StoreError::io("write blob", &w.tmp_path, e))?;
        w.commit(&Expect {
            digest: Some(&d),
            ..Default::default()
        })?;
        Ok(d)
    }

    /// Re-hashes a stored blob; returns its actual digest.
    pub fn verify(&self, digest: &Digest) -> Result<Digest> {
        let mut f = self.open(digest)?;
        let mut h = Sha256Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| StoreError::io("read blob", self.path(digest), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    }
}

/// Decompresses what is written to it and hashes the result, to verify diff_ids
/// in the same pass that stores the compressed bytes.
enum DiffHasher {
    /// Waiting for enough bytes to recognise the compression.
    Sniff(Vec<u8>),
    Plain(HashingWriter<io::Sink>),
    Gzip(Box<flate2::write::MultiGzDecoder<HashingWriter<io::Sink>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashingWriter<io::Sink>>>),
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl DiffHasher {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            DiffHasher::Sniff(buf) => {
                buf.extend_from_slice(data);
                if buf.len() >= ZSTD_MAGIC.len() {
                    let buf = std::mem::take(buf);
                    self.start(&buf)?;
                }
                Ok(())
            }
            DiffHasher::Plain(w) => w.write_all(data),
            DiffHasher::Gzip(w) => w.write_all(data),
            DiffHasher::Zstd(w) => w.write_all(data),
        }
    }

    fn start(&mut self, head: &[u8]) -> io::Result<()> {
        let sink = HashingWriter::new(io::sink());
        *self = if head.starts_with(GZIP_MAGIC) {
            DiffHasher::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
        } else if head.starts_with(ZSTD_MAGIC) {
            DiffHasher::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?))
        } else {
            DiffHasher::Plain(sink)
        };
        self.write(head)
    }

    fn finish(mut self) -> io::Result<(Digest, u64)> {
        if let DiffHasher::Sniff(buf) = &mut self {
            let buf = std::mem::take(buf);
            self.start(&buf)?;
        }
        let sink = match self {
            DiffHasher::Sniff(_) => unreachable!("started above"),
            DiffHasher::Plain(w) => w,
            DiffHasher::Gzip(w) => w.finish()?,
            DiffHasher::Zstd(mut w) => {
                w.flush()?;
                w.into_inner()
            }
        };
        let (_, d, n) = sink.finish();
        Ok((d, n))
    }
}

/// A blob being written: bytes go to a temp file and through the hashers.
pub struct BlobWriter {
    file: Option<io::BufWriter<File>>,
    tmp_path: PathBuf,
    final_dir: PathBuf,
    hasher: Sha256Hasher,
    diff: Option<DiffHasher>,
    diff_error: Option<io::Error>,
    what: String,
}

impl BlobWriter {
    /// Also decompress (gzip, zstd or plain, by magic bytes) and hash the stream,
    /// so `commit` can check the layer's diff_id.
    pub fn track_diff_id(&mut self) {
        self.diff = Some(DiffHasher::Sniff(Vec::new()));
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    fn corrupt_stream(&self, e: io::Error) -> StoreError {
        StoreError::Invalid {
            what: self.what.clone(),
            reason: format!("cannot decompress: {e}"),
        }
    }

    /// Verifies the blob against `expect`, fsyncs it and renames it to its digest.
    /// On any mismatch the temp file is removed and nothing is stored.
    pub fn commit(mut self, expect: &Expect<'_>) -> Result<Committed> {
        let Some(file) = self.file.take() else {
            return Err(StoreError::invalid(&self.what, "blob committed twice"));
        };
        let hasher = std::mem::take(&mut self.hasher);
        let size = hasher.len();
        let digest = hasher.finish();
        let what = self.what.clone();
        if let Some(exp) = expect.size {
            if exp != size {
                return Err(StoreError::SizeMismatch {
                    what,
                    expected: exp,
                    actual: size,
                });
            }
        }
        if let Some(exp) = expect.digest {
            if *exp != digest {
                return Err(StoreError::DigestMismatch {
                    what,
                    expected: exp.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let finished = match (self.diff_error.take(), self.diff.take()) {
            (Some(e), _) => Err(e),
            (None, Some(d)) => d.finish().map(Some),
            (None, None) => Ok(None),
        };
        let (diff_id, diff_size) = match finished {
            Ok(Some((id, n))) => (Some(id), Some(n)),
            Ok(None) => (None, None),
            Err(e) if expect.diff_id.is_some() => return Err(self.corrupt_stream(e)),
            Err(_) => (None, None),
        };
        if let (Some(exp), Some(got)) = (expect.diff_id, &diff_id) {
            if exp != got {
                return Err(StoreError::DigestMismatch {
                    what: format!("{what} (uncompressed diff_id)"),
                    expected: exp.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        let file = file
            .into_inner()
            .map_err(|e| StoreError::io("write blob", &self.tmp_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync blob", &self.tmp_path, e))?;
        drop(file);
        let dest = self.final_dir.join(digest.hex());
        fs::rename(&self.tmp_path, &dest)
            .map_err(|e| StoreError::io("rename blob into", &dest, e))?;
        // The rename is durable only once the directory entry is.
        if let Ok(dir) = File::open(&self.final_dir) {
            let _ = dir.sync_all();
        }
        self.tmp_path = PathBuf::new();
        Ok(Committed {
            digest,
            size,
            diff_id,
            diff_size,
        })
    }

    /// The temp file's path (for error messages).
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob already committed"))?;
        file.write_all(buf)?;
        self.hasher.update(buf);
        // A stream that does not decompress is reported by `commit`, and only when
        // a diff_id was expected: load stores files before it knows which are layers.
        if self.diff_error.is_none() {
            if let Some(d) = &mut self.diff {
                if let Err(e) = d.write(buf) {
                    self.diff_error = Some(e);
                    self.diff = None;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&blobs).unwrap();
        fs::create_dir_all(&tmp).unwrap();
        (dir, ContentStore::new(blobs, tmp))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn commit_verifies_digest_and_diff_id() {
        let (dir, cs) = store();
        let raw = b"hello layer".repeat(1000);
        let gz = gzip(&raw);
        let mut w = cs.writer("layer").unwrap();
        w.track_diff_id();
        for chunk in gz.chunks(7) {
            w.write_all(chunk).unwrap();
        }
        let c = w
            .commit(&Expect {
                digest: Some(&Digest::of_bytes(&gz)),
                size: Some(gz.len() as u64),
                diff_id: Some(&Digest::of_bytes(&raw)),
            })
            .unwrap();
        assert_eq!(c.diff_size, Some(raw.len() as u64));
        assert_eq!(fs::read(cs.path(&c.digest)).unwrap(), gz);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let (dir, cs) = store();
        let raw = b"plain tar bytes".to_vec();
        let wrong = Digest::of_bytes(b"something else");
        let mut w = cs.writer("layer sha256:x").unwrap();
        w.track_diff_id();
        w.write_all(&raw).unwrap();
        let err = w
            .commit(&Expect {
                digest: Some(&wrong),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("layer sha256:x"), "{err}");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(cs.list().unwrap().is_empty());

        let mut w = cs.writer("layer").unwrap();
        w.track_diff_id();
        w.write_all(&raw).unwrap();
        let err = w
            .commit(&Expect {
                diff_id: Some(&wrong),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("diff_id"), "{err}");
        assert!(cs.list().unwrap().is_empty());
    }

    #[test]
    fn zstd_diff_id() {
        let (_dir, cs) = store();
        let raw = b"zstd layer".repeat(500);
        let z = zstd::encode_all(&raw[..], 3).unwrap();
        let mut w = cs.writer("layer").unwrap();
        w.track_diff_id();
        w.write_all(&z).unwrap();
        let c = w.commit(&Expect::default()).unwrap();
        assert_eq!(c.diff_id, Some(Digest::of_bytes(&raw)));
    }

    #[test]
    fn temp_names_carry_the_pid() {
        let n = temp_name("blob");
        assert_eq!(temp_owner(&n), Some(std::process::id() as i32));
        assert_eq!(temp_owner("abc"), None);
    }
}
