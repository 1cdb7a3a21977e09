//! Layer compression: which one a media type names, what the bytes really are,
//! and a decompressing reader.
//!
//! Media types are not trusted alone: some tools label gzip layers as plain tar
//! (or the reverse), and docker-archive tarballs carry no media types at all, so
//! the first bytes decide when they disagree with the label.

use std::io::{self, Cursor, Read};

/// OCI layer, uncompressed.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI layer, gzip.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI layer, zstd.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 layer (always gzip by name).
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 2 foreign (nondistributable) layer.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// A media type that is not a layer type we can unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported layer media type {0:?} (want an OCI or docker tar layer, uncompressed, gzip or zstd)")]
pub struct CompressionError(pub String);

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type names: OCI `tar`, `tar+gzip`,
    /// `tar+zstd` (and their nondistributable forms) and docker's `tar.gzip`.
    pub fn from_media_type(media_type: &str) -> Result<Compression, CompressionError> {
        // Parameters (`; charset=...`) are not part of the type.
        let mt = media_type.split(';').next().unwrap_or("").trim();
        let rest = mt
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
            .or_else(|| mt.strip_prefix("application/vnd.oci.image.layer.v1."))
            .map(|r| match r {
                "tar" => Some(Compression::None),
                "tar+gzip" => Some(Compression::Gzip),
                "tar+zstd" => Some(Compression::Zstd),
                _ => None,
            })
            .or_else(|| {
                mt.strip_prefix("application/vnd.docker.image.rootfs.diff.")
                    .or_else(|| {
                        mt.strip_prefix("application/vnd.docker.image.rootfs.foreign.diff.")
                    })
                    .map(|r| match r {
                        "tar" => Some(Compression::None),
                        "tar.gzip" => Some(Compression::Gzip),
                        "tar.zstd" => Some(Compression::Zstd),
                        _ => None,
                    })
            })
            .flatten();
        rest.ok_or_else(|| CompressionError(media_type.to_string()))
    }

    /// What the first bytes of a blob say it is; anything that is neither gzip
    /// nor zstd is taken as plain tar (the tar reader rejects what is not).
    pub fn sniff(prefix: &[u8]) -> Compression {
        if prefix.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI media type for a layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// Wraps `r` in a decoder for `c`. The returned reader yields the tar stream.
pub fn decompress<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        // Multi-member, because concatenated gzip streams are valid gzip and some
        // layer builders write them.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Reads the first bytes of `r`, decides the compression from them (the
/// declared one only names what was expected; the bytes win), and returns it
/// with a reader of the decompressed tar stream. Nothing read is lost.
pub fn decompress_sniffed<'a, R: Read + 'a>(
    mut r: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut prefix = Vec::with_capacity(ZSTD_MAGIC.len());
    // A short read is not the end of the stream; keep reading until the magic fits or EOF.
    let mut buf = [0u8; 4];
    while prefix.len() < ZSTD_MAGIC.len() {
        let n = match r.read(&mut buf[..ZSTD_MAGIC.len() - prefix.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        prefix.extend_from_slice(&buf[..n]);
    }
    let c = Compression::sniff(&prefix);
    let whole = Cursor::new(prefix).chain(r);
    Ok((c, decompress(whole, c)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn media_types() {
        use Compression::*;
        for (mt, want) in [
            (OCI_LAYER_TAR, None),
            (OCI_LAYER_GZIP, Gzip),
            (OCI_LAYER_ZSTD, Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Zstd,
            ),
            (DOCKER_LAYER_GZIP, Gzip),
            (DOCKER_FOREIGN_LAYER_GZIP, Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip; x=y", Gzip),
        ] {
            assert_eq!(Compression::from_media_type(mt), Ok(want), "{mt}");
        }
        for bad in [
            "",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.docker.image.rootfs.diff.tar.xz",
            "application/octet-stream",
        ] {
            let e = Compression::from_media_type(bad).unwrap_err();
            assert!(e.to_string().contains("unsupported layer media type"));
        }
    }

    fn payload() -> Vec<u8> {
        (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn compressed(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        }
    }

    /// Hands out one byte per read, to prove sniffing copes with short reads.
    struct Trickle<R>(R);
    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn round_trips_and_sniffs() {
        let data = payload();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let blob = compressed(c, &data);
            assert_eq!(Compression::sniff(&blob), c);

            let mut out = Vec::new();
            decompress(&blob[..], c)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{c:?}");

            let (got, mut r) = decompress_sniffed(Trickle(&blob[..])).unwrap();
            assert_eq!(got, c);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "sniffed {c:?}");
        }
    }

    #[test]
    fn empty_and_tiny_streams() {
        let (c, mut r) = decompress_sniffed(&b""[..]).unwrap();
        assert_eq!(c, Compression::None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        let (c, mut r) = decompress_sniffed(&b"ab"[..]).unwrap();
        assert_eq!(c, Compression::None);
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut blob = compressed(Compression::Gzip, &payload());
        let mid = blob.len() / 2;
        blob[mid] ^= 0xff;
        blob.truncate(blob.len() - 4);
        let mut out = Vec::new();
        assert!(decompress(&blob[..], Compression::Gzip)
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }
}
