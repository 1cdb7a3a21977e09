//! Platforms (`linux/amd64`, `linux/arm64/v8`) and choosing a manifest from an
//! image index for one.
//!
//! Normalisation follows containerd's `platforms` package so that the many
//! spellings found in the wild compare equal (`x86_64` is `amd64`, `aarch64` is
//! `arm64`, arm64 without a variant is `v8`, arm without a variant is `v7`).

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Descriptor;

/// Why a platform string is invalid or no manifest fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The string is not `os[/arch[/variant]]`.
    #[error(
        "invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
    )]
    Invalid(String),
    /// The index has no manifest for the wanted platform.
    #[error("no manifest for platform {wanted} in the image index; available: {}", list(.available))]
    NoMatch {
        /// The platform asked for.
        wanted: Platform,
        /// Every platform the index offers, in index order.
        available: Vec<String>,
    },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none (no manifest in the index names a platform)".to_string()
    } else {
        v.join(", ")
    }
}

/// An OS, CPU architecture and optional CPU variant, normalised.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Platform {
    /// Operating system, as Go's GOOS (`linux`).
    pub os: String,
    /// CPU architecture, as Go's GOARCH (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// Builds a normalised platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            other => other.to_string(),
        };
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform {
            os,
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    /// Parses `os/arch[/variant]`; a lone architecture (`arm64`) means linux,
    /// a lone `linux` means the host's architecture.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !parts.iter().all(ok_part) {
            return Err(PlatformError::Invalid(s.to_string()));
        }
        match parts.as_slice() {
            [one] if one.eq_ignore_ascii_case("linux") => {
                let host = Platform::host();
                Ok(Platform::new(
                    one,
                    &host.architecture,
                    host.variant.as_deref(),
                ))
            }
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(PlatformError::Invalid(s.to_string())),
        }
    }

    /// The platform this binary runs on.
    pub fn host() -> Platform {
        let arch = std::env::consts::ARCH;
        Platform::new(std::env::consts::OS, arch, None)
    }

    /// The platform an index entry or image config declares.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Platform {
        Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    }

    /// How well an image built for `candidate` suits this platform: `None` when it
    /// cannot run here, otherwise a rank where higher is better (exact match best).
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return None;
        }
        if self.variant == candidate.variant {
            return Some(100);
        }
        // Older variants of arm and amd64 run on newer CPUs (an arm v7 CPU runs v6
        // and v5 code; an x86-64-v3 CPU runs v2). Prefer the newest that fits.
        let level = |v: &Option<String>| -> Option<u32> {
            match v {
                None if self.architecture == "amd64" => Some(1),
                None => None,
                Some(v) => v.strip_prefix('v')?.parse().ok(),
            }
        };
        match self.architecture.as_str() {
            "arm" | "amd64" => {
                let want = level(&self.variant)?;
                let have = level(&candidate.variant)?;
                (have <= want).then_some(have)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

/// containerd's `normalizeArch`, except that arm64 keeps an explicit `v8` so
/// that `linux/arm64` and `linux/arm64/v8` compare equal.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v) = match arch.as_str() {
        "i386" | "i686" | "x86" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64",
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "" | "8" | "v8" | "v8.0" => "v8".to_string(),
                "9" | "9.0" | "v9.0" => "v9".to_string(),
                _ => variant,
            },
        ),
        "armhf" => ("arm", "v7".to_string()),
        "armel" => ("arm", "v6".to_string()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        _ => return (arch, variant),
    };
    (a.to_string(), v)
}

/// Chooses the manifest for `wanted` from an index's manifest descriptors: the
/// best-ranked match (see [`Platform::rank`]), the first in index order on a tie.
/// An index whose only manifest names no platform (as single-image OCI layouts
/// often are) yields that manifest.
pub fn select<'a>(
    wanted: &Platform,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, PlatformError> {
    let mut best: Option<(u32, &Descriptor)> = None;
    let mut available = Vec::new();
    for d in manifests {
        let Some(p) = d.platform() else { continue };
        let p = Platform::from_oci(p);
        available.push(p.to_string());
        if let Some(r) = wanted.rank(&p) {
            if best.is_none_or(|(b, _)| r > b) {
                best = Some((r, d));
            }
        }
    }
    if let Some((_, d)) = best {
        return Ok(d);
    }
    if let [only] = manifests {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    Err(PlatformError::NoMatch {
        wanted: wanted.clone(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{DescriptorBuilder, MediaType, PlatformBuilder};

    fn desc(n: u8, platform: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        let digest = format!("sha256:{}", format!("{n:02x}").repeat(32));
        let mut b = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .size(100u64)
            .digest(oci_spec::image::Digest::from_str(&digest).unwrap());
        if let Some((os, arch, variant)) = platform {
            let mut pb = PlatformBuilder::default().os(os).architecture(arch);
            if let Some(v) = variant {
                pb = pb.variant(v);
            }
            b = b.platform(pb.build().unwrap());
        }
        b.build().unwrap()
    }

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn parse_and_normalise() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/amd64/v1").to_string(), "linux/amd64");
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/arm64").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armel").to_string(), "linux/arm/v6");
        assert_eq!(p("linux/arm/6").to_string(), "linux/arm/v6");
        assert_eq!(p("linux/i386").to_string(), "linux/386");
        assert_eq!(p("Linux/AMD64").to_string(), "linux/amd64");
        assert_eq!(p("arm64").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux").os, "linux");
        for bad in ["", "/", "linux/", "linux//v7", "a/b/c/d", "linux/amd 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_normalised() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert_ne!(h.architecture, "x86_64");
        assert_ne!(h.architecture, "aarch64");
        assert_eq!(Platform::parse(&h.to_string()).unwrap(), h);
    }

    #[test]
    fn selects_exact_platform() {
        let m = [
            desc(1, Some(("linux", "arm64", Some("v8")))),
            desc(2, Some(("linux", "amd64", None))),
            desc(3, Some(("linux", "arm", Some("v7")))),
            desc(4, Some(("unknown", "unknown", None))),
        ];
        assert_eq!(select(&p("linux/amd64"), &m).unwrap(), &m[1]);
        assert_eq!(select(&p("linux/arm64"), &m).unwrap(), &m[0]);
        assert_eq!(select(&p("linux/aarch64"), &m).unwrap(), &m[0]);
        assert_eq!(select(&p("linux/arm/v7"), &m).unwrap(), &m[2]);
    }

    #[test]
    fn arm64_without_variant_in_index_matches() {
        let m = [desc(1, Some(("linux", "arm64", None)))];
        assert_eq!(select(&p("linux/arm64/v8"), &m).unwrap(), &m[0]);
    }

    #[test]
    fn older_variant_is_compatible_newer_is_not() {
        let m = [
            desc(1, Some(("linux", "arm", Some("v5")))),
            desc(2, Some(("linux", "arm", Some("v6")))),
        ];
        // A v7 CPU runs v6 code: the newest compatible wins.
        assert_eq!(select(&p("linux/arm/v7"), &m).unwrap(), &m[1]);
        // A v5 CPU cannot run v6.
        assert_eq!(select(&p("linux/arm/v5"), &m).unwrap(), &m[0]);
        let only_v8 = [desc(3, Some(("linux", "arm", Some("v8"))))];
        assert!(select(&p("linux/arm/v7"), &only_v8).is_err());

        let amd = [
            desc(1, Some(("linux", "amd64", Some("v3")))),
            desc(2, Some(("linux", "amd64", None))),
        ];
        assert_eq!(select(&p("linux/amd64"), &amd).unwrap(), &amd[1]);
        assert_eq!(select(&p("linux/amd64/v3"), &amd).unwrap(), &amd[0]);
        assert_eq!(select(&p("linux/amd64/v2"), &amd).unwrap(), &amd[1]);
    }

    #[test]
    fn no_match_lists_every_platform() {
        let m = [
            desc(1, Some(("linux", "arm64", Some("v8")))),
            desc(2, Some(("linux", "s390x", None))),
            desc(3, Some(("windows", "amd64", None))),
        ];
        let err = select(&p("linux/amd64"), &m).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("linux/amd64"), "{msg}");
        assert!(
            msg.contains("linux/arm64/v8, linux/s390x, windows/amd64"),
            "{msg}"
        );
        match err {
            PlatformError::NoMatch { available, .. } => assert_eq!(available.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn single_unplatformed_manifest_is_taken() {
        let m = [desc(1, None)];
        assert_eq!(select(&p("linux/amd64"), &m).unwrap(), &m[0]);
        let two = [desc(1, None), desc(2, None)];
        assert!(select(&p("linux/amd64"), &two).is_err());
        assert!(select(&p("linux/amd64"), &[]).is_err());
    }
}
