//! Image references (`alpine`, `ghcr.io/o/r:1@sha256:...`) normalised as docker
//! does: default registry `docker.io`, `library/` for single-component Docker Hub
//! names, default tag `latest` when neither a tag nor a digest is given.
//!
//! The grammar is the distribution spec's (github.com/distribution/reference):
//! lowercase path components separated by `.`, `_`, `__` or runs of `-`; a domain
//! is recognised by a `.`, a `:`, an uppercase letter or `localhost` in the first
//! of several components; tags are `[\w][\w.-]{0,127}`; a name is at most 255 bytes.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker Hub's legacy name, normalised to [`DEFAULT_REGISTRY`].
const LEGACY_REGISTRY: &str = "index.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_NAMESPACE: &str = "library";
/// The longest full name (registry and repository) the spec allows.
const NAME_MAX: usize = 255;
/// The longest tag the spec allows.
const TAG_MAX: usize = 128;

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("invalid reference: empty string")]
    Empty,
    /// The repository part has uppercase letters.
    #[error("invalid reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    /// A path component breaks the grammar.
    #[error("invalid reference {reference:?}: invalid repository name component {component:?}")]
    BadComponent {
        /// The whole input.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// The registry part breaks the grammar.
    #[error("invalid reference {reference:?}: invalid registry {registry:?}")]
    BadRegistry {
        /// The whole input.
        reference: String,
        /// The offending registry.
        registry: String,
    },
    /// The tag breaks the grammar.
    #[error("invalid reference {reference:?}: invalid tag {tag:?} (want [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")]
    BadTag {
        /// The whole input.
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The digest is malformed or not sha256.
    #[error("invalid reference {reference:?}: {source}")]
    BadDigest {
        /// The whole input.
        reference: String,
        /// What is wrong with the digest.
        source: DigestError,
    },
    /// The full name is longer than 255 bytes.
    #[error("invalid reference {0:?}: repository name must not be longer than 255 characters")]
    NameTooLong(String),
    /// A bare 64-hex string, which would be ambiguous with an image ID.
    #[error("invalid repository name {0:?}: cannot specify 64-byte hexadecimal strings")]
    HexName(String),
}

/// A normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` would.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ReferenceError::HexName(input.to_string()));
        }
        // The name grammar has no '@', so the first '@' starts the digest.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|source| ReferenceError::BadDigest {
                    reference: input.to_string(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A ':' after the last '/' separates the tag; earlier ones belong to a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag {
                    reference: input.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        let (registry, path) = split_registry(name);
        if let Some(registry) = registry {
            if !valid_registry(registry) {
                return Err(ReferenceError::BadRegistry {
                    reference: input.to_string(),
                    registry: registry.to_string(),
                });
            }
        }
        if path.is_empty() {
            return Err(ReferenceError::BadComponent {
                reference: input.to_string(),
                component: String::new(),
            });
        }
        for component in path.split('/') {
            if !valid_component(component) {
                if valid_component(&component.to_ascii_lowercase()) {
                    return Err(ReferenceError::Uppercase(input.to_string()));
                }
                return Err(ReferenceError::BadComponent {
                    reference: input.to_string(),
                    component: component.to_string(),
                });
            }
        }
        if name.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong(input.to_string()));
        }
        let registry = match registry {
            None | Some(LEGACY_REGISTRY) => DEFAULT_REGISTRY,
            Some(r) => r,
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for a digest-only reference.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository` without tag or digest, e.g. `docker.io/library/alpine`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name docker shows: `alpine`, `user/app`, `127.0.0.1:5000/x`.
    pub fn familiar_name(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The short form with tag and digest: `alpine:latest`, `127.0.0.1:5000/x:1`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        self.push_suffix(&mut s);
        s
    }

    /// The same repository with another tag (and no digest), as `vessel tag` makes.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                reference: self.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// The same repository pinned to a digest (no tag): `name@sha256:...`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Splits off the registry: the first component, when another follows and it
/// looks like a host (has `.` or `:`, is `localhost`, or has uppercase letters).
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `[a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        let sep = b[i];
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let run = &b[start..i];
        let ok = match sep {
            b'.' => run.len() == 1,
            b'_' => run.len() <= 2 && run.iter().all(|&x| x == b'_'),
            b'-' => run.iter().all(|&x| x == b'-'),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `host (':' [0-9]+)?` where host is dotted DNS labels or a bracketed IPv6 address.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => !h.is_empty() && h.split('.').all(valid_label),
    }
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// distribution/reference normalize_test.go TestValidateReferenceName.
    #[test]
    fn validate_reference_name() {
        let valid = [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
        ];
        for s in valid {
            p(s);
        }
        let invalid = [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        ];
        for s in invalid {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }

    /// normalize_test.go TestValidateRemoteName.
    #[test]
    fn validate_remote_name() {
        for s in [
            "docker/docker",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ] {
            p(s);
        }
        let long = format!(
            "{}/docker",
            "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_".repeat(4)
        );
        for s in [
            "docker/Docker",
            "docker///docker",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "-docker/docker",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            long.as_str(),
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }

    /// normalize_test.go TestParseRepositoryInfo: (remote, familiar, full, ambiguous, domain).
    #[test]
    fn parse_repository_info() {
        let cases = [
            (
                "fooo/bar",
                "fooo/bar",
                "docker.io/fooo/bar",
                "index.docker.io/fooo/bar",
                "docker.io",
            ),
            (
                "library/ubuntu",
                "ubuntu",
                "docker.io/library/ubuntu",
                "library/ubuntu",
                "docker.io",
            ),
            (
                "nonlibrary/ubuntu",
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                "",
                "docker.io",
            ),
            (
                "other/library",
                "other/library",
                "docker.io/other/library",
                "",
                "docker.io",
            ),
            (
                "private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "privatebase",
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                "",
                "127.0.0.1:8000",
            ),
            (
                "private/moonbase",
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                "",
                "example.com",
            ),
            (
                "privatebase",
                "example.com/privatebase",
                "example.com/privatebase",
                "",
                "example.com",
            ),
            (
                "private/moonbase",
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                "",
                "example.com:8000",
            ),
            (
                "privatebasee",
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                "",
                "example.com:8000",
            ),
            (
                "library/ubuntu-12.04-base",
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
                "docker.io",
            ),
            (
                "library/foo",
                "foo",
                "docker.io/library/foo",
                "docker.io/foo",
                "docker.io",
            ),
            (
                "library/foo/bar",
                "library/foo/bar",
                "docker.io/library/foo/bar",
                "",
                "docker.io",
            ),
            (
                "store/foo/bar",
                "store/foo/bar",
                "docker.io/store/foo/bar",
                "",
                "docker.io",
            ),
            ("bar", "Foo/bar", "Foo/bar", "", "Foo"),
            ("bar", "FOO/bar", "FOO/bar", "", "FOO"),
        ];
        for (remote, familiar, full, ambiguous, domain) in cases {
            for s in [familiar, full, ambiguous] {
                if s.is_empty() {
                    continue;
                }
                let r = p(s);
                assert_eq!(r.familiar_name(), familiar, "{s}");
                assert_eq!(r.name(), full, "{s}");
                assert_eq!(r.registry(), domain, "{s}");
                assert_eq!(r.repository(), remote, "{s}");
            }
        }
    }

    /// normalize_test.go TestParseReferenceWithTagAndDigest: both are kept.
    #[test]
    fn tag_and_digest_kept() {
        let short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
        let r = p(short);
        assert_eq!(r.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(r.tag(), Some("latest"));
        assert!(r.digest().is_some());
        assert_eq!(r.familiar(), short);
    }

    /// normalize_test.go TestNormalizedSplitHostname.
    #[test]
    fn split_hostname() {
        for (input, domain, path) in [
            ("test.com/foo", "test.com", "foo"),
            ("test_com/foo", "docker.io", "test_com/foo"),
            ("docker/migrator", "docker.io", "docker/migrator"),
            ("test.com:8080/foo", "test.com:8080", "foo"),
            ("test-com:8080/foo", "test-com:8080", "foo"),
            ("foo", "docker.io", "library/foo"),
            ("xn--n3h.com/foo", "xn--n3h.com", "foo"),
            ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
            ("docker.io/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo", "docker.io", "library/foo"),
            ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
            ("localhost/foo", "localhost", "foo"),
            ("localhost:5000/foo", "localhost:5000", "foo"),
        ] {
            let r = p(input);
            assert_eq!((r.registry(), r.repository()), (domain, path), "{input}");
        }
    }

    /// normalize_test.go TestParseAnyReference (named cases) and TestParseDockerRef:
    /// the default tag is added unless a digest pins the reference.
    #[test]
    fn full_strings() {
        for (input, want) in [
            ("redis", "docker.io/library/redis:latest"),
            ("redis:latest", "docker.io/library/redis:latest"),
            ("docker.io/library/redis:latest", "docker.io/library/redis:latest"),
            (&format!("redis@{D}"), &format!("docker.io/library/redis@{D}")),
            (&format!("docker.io/library/redis@{D}"), &format!("docker.io/library/redis@{D}")),
            ("dmcgowan/myapp", "docker.io/dmcgowan/myapp:latest"),
            ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest"),
            ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest"),
            (&format!("dmcgowan/myapp@{D}"), &format!("docker.io/dmcgowan/myapp@{D}")),
            (
                "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
                "docker.io/library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9:latest",
            ),
            ("dbcc1", "docker.io/library/dbcc1:latest"),
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox:latest", "docker.io/library/busybox:latest"),
            ("library/busybox:latest", "docker.io/library/busybox:latest"),
            ("gcr.io/library/busybox", "gcr.io/library/busybox:latest"),
            ("127.0.0.1:5000/x:1", "127.0.0.1:5000/x:1"),
            ("ghcr.io/o/r:v1.2_3-rc", "ghcr.io/o/r:v1.2_3-rc"),
        ] {
            let r = p(input);
            assert_eq!(r.to_string(), want, "{input}");
            assert_eq!(p(&r.to_string()), r, "round trip of {input}");
        }
    }

    #[test]
    fn familiar_forms() {
        assert_eq!(p("alpine").familiar(), "alpine:latest");
        assert_eq!(p("docker.io/library/alpine:3.20").familiar(), "alpine:3.20");
        assert_eq!(p("127.0.0.1:5000/x:1").familiar(), "127.0.0.1:5000/x:1");
        assert_eq!(p("user/app").familiar(), "user/app:latest");
        assert_eq!(p(&format!("alpine@{D}")).familiar(), format!("alpine@{D}"));
        assert_eq!(p(&format!("alpine@{D}")).tag(), None);
    }

    #[test]
    fn bad_tags_and_digests() {
        let long_tag = format!("busybox:{}", "a".repeat(129));
        let ok_tag = format!("busybox:{}", "a".repeat(128));
        p(&ok_tag);
        for s in [
            "busybox:",
            "busybox:-foo",
            "busybox:.foo",
            "busybox:a#b",
            long_tag.as_str(),
            "busybox@",
            "busybox@sha256:abc",
            "busybox@md5:dbcc1c35ac38df41fd2f5e4130b32ffd",
            "localhost:5000/foo?test",
            "",
            "...",
        ] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
        let e = Reference::parse("docker.io/docker/Docker").unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
    }

    #[test]
    fn retag() {
        let r = p(&format!("127.0.0.1:5000/x:1@{D}"));
        assert_eq!(r.with_tag("2").unwrap().to_string(), "127.0.0.1:5000/x:2");
        assert!(r.with_tag("-x").is_err());
        let d = Digest::parse(D).unwrap();
        assert_eq!(
            p("x").with_digest(d).to_string(),
            format!("docker.io/library/x@{D}")
        );
    }
}
