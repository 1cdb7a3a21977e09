//! Content digests: the validated `sha256:<hex>` type and streaming hashers.
//!
//! Only sha256 is accepted for content: it is what every registry and every
//! OCI/docker image in the wild uses, and accepting algorithms we cannot verify
//! would let unverified content into the store.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("invalid digest {0:?}: expected \"sha256:<64 lowercase hex digits>\"")]
    Malformed(String),
    /// An algorithm other than sha256.
    #[error("unsupported digest algorithm {algorithm:?} in {digest:?}: only sha256 is accepted")]
    UnsupportedAlgorithm {
        /// The algorithm named.
        algorithm: String,
        /// The whole digest string.
        digest: String,
    },
    /// The hex part is not 64 lowercase hex digits.
    #[error("invalid sha256 digest {0:?}: the hex part must be 64 lowercase hex digits")]
    BadHex(String),
}

/// A validated sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The algorithm prefix every digest carries.
    pub const ALGORITHM: &'static str = "sha256";

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.to_string()));
        };
        if algorithm != Self::ALGORITHM {
            if algorithm.is_empty() || hex.is_empty() {
                return Err(DigestError::Malformed(s.to_string()));
            }
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: algorithm.to_string(),
                digest: s.to_string(),
            });
        }
        Self::from_hex(hex).map_err(|_| DigestError::BadHex(s.to_string()))
    }

    /// Builds a digest from the 64 lowercase hex digits alone (as in `blobs/sha256/<hex>`).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::BadHex(hex.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// Builds a digest from the 32 raw bytes of a sha256 hash.
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    /// The digest of a byte slice held in memory (small blobs: configs, manifests).
    pub fn of_bytes(data: &[u8]) -> Digest {
        let mut h = Sha256Hasher::new();
        h.update(data);
        h.finish()
    }

    /// The algorithm, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        Self::ALGORITHM
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` shows an image ID.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", Self::ALGORITHM, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        Digest::parse(d.as_ref())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental sha256 that also counts the bytes it has seen.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    inner: Sha256,
    len: u64,
}

impl Sha256Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let out = self.inner.finalize();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&out);
        Digest::from_bytes(bytes)
    }
}

/// A `Read` that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256Hasher,
}

impl<R: Read> HashingReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing has been read yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner reader, for callers that need to reach it mid-stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the rest of the stream (so trailing bytes a consumer ignored, such as
    /// tar padding, are hashed too) and returns the digest and total length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }

    /// The digest and length of what was read so far, without draining.
    pub fn finish_partial(self) -> (Digest, u64) {
        let len = self.hasher.len();
        (self.hasher.finish(), len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A `Write` that hashes and counts every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer, the digest and the length of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        let len = self.hasher.len();
        (self.inner, self.hasher.finish(), len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Hash only what the inner writer accepted, so a short write is not counted twice.
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays() {
        let s = format!("sha256:{EMPTY}");
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), EMPTY);
        assert_eq!(d.short(), &EMPTY[..12]);
        assert_eq!(d, Digest::of_bytes(b""));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            &format!("sha256:{}", EMPTY.to_uppercase()),
            &format!("sha256:{}", &EMPTY[..63]),
            &format!("sha256:{EMPTY}0"),
            &format!("sha256:{}g", &EMPTY[..63]),
            &format!("sha256: {EMPTY}"),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Digest::parse(&format!("sha512:{EMPTY}")).unwrap_err();
        assert!(matches!(e, DigestError::UnsupportedAlgorithm { .. }));
        assert!(e.to_string().contains("only sha256"));
    }

    #[test]
    fn reader_and_writer_hash_the_stream() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let want = Digest::of_bytes(&data);

        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!((d, n), (want.clone(), data.len() as u64));

        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        let (out, d, n) = w.finish();
        assert_eq!(out, data);
        assert_eq!((d, n), (want, data.len() as u64));
    }

    #[test]
    fn known_vector() {
        assert_eq!(
            Digest::of_bytes(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn serde_round_trip() {
        let d = Digest::of_bytes(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"md5:abc\"").is_err());
    }
}
