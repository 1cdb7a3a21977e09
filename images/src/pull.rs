//! `vessel pull`: fetch an image from a registry into the store.
//!
//! oci-client speaks the distribution protocol (anonymous, basic, bearer-token
//! challenges). We resolve indexes with our own platform matcher, stream every
//! blob into the content store (hashing, and for layers decompressing and
//! hashing for the diff_id, as it arrives), download layers in parallel, and
//! record the image only once all of it is verified and unpacked.
//!
//! An interrupted pull (Ctrl-C, crash) leaves only `.tmp-<pid>-…` files that the
//! next `Store::open` sweeps; complete blobs stay, so the next pull resumes with
//! the layers it still lacks.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::content::Expect;
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::Image;
use crate::import::{config_diff_ids, Fetched};
use crate::metadata::{self, LayerRecord};
use crate::platform::{self, Platform};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::store::Store;

/// Registry credentials.
#[derive(Clone)]
pub enum Credentials {
    /// HTTP basic auth (also used to obtain a bearer token when the registry asks for one).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Platform to choose from an index; `None` means this host's.
    pub platform: Option<Platform>,
    /// Hosts (`host[:port]`) that may be reached over plain HTTP. Loopback always may.
    pub insecure_registries: Vec<String>,
    /// Explicit credentials.
    pub credentials: Option<Credentials>,
    /// A docker-style `config.json` to take credentials from when none are given.
    /// `None`: `$VESSEL_AUTH_FILE`, then `~/.docker/config.json`, when they exist.
    pub authfile: Option<PathBuf>,
    /// Show progress (bars on a terminal, lines otherwise).
    pub progress: bool,
    /// Layers downloaded at once (0: 4).
    pub parallel: usize,
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest manifest or config accepted (they are held in memory).
const MAX_DOCUMENT: u64 = 16 << 20;

/// True for a registry on this machine: plain HTTP is acceptable there.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for `registry` from a docker-style config.json (`auths.<host>.auth`).
fn credentials_from_file(path: &std::path::Path, registry: &str) -> Result<Option<Credentials>> {
    use base64::Engine as _;
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read credentials file", path, e)),
    };
    let v: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| StoreError::invalid(path.display().to_string(), e))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        if registry == "docker.io" {
            "https://index.docker.io/v1/".to_string()
        } else {
            String::new()
        },
    ];
    for k in keys.iter().filter(|k| !k.is_empty()) {
        let Some(entry) = auths.get(k) else { continue };
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|x| x.as_str()),
            entry.get("password").and_then(|x| x.as_str()),
        ) {
            return Ok(Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            }));
        }
        let Some(auth) = entry.get("auth").and_then(|x| x.as_str()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| StoreError::invalid(format!("{} auths.{k}.auth", path.display()), e))?;
        let s = String::from_utf8_lossy(&decoded);
        let Some((u, p)) = s.split_once(':') else {
            return Err(StoreError::invalid(
                format!("{} auths.{k}.auth", path.display()),
                "expected base64 of user:password",
            ));
        };
        return Ok(Some(Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }));
    }
    Ok(None)
}

/// An error with its sources, which reqwest keeps out of its own message
/// ("error sending request" says nothing without "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn registry_error(registry: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Registry {
        registry: registry.to_string(),
        message: e.to_string(),
    }
}

fn media_type_of(bytes: &[u8]) -> (Option<String>, bool) {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(h) => {
            let is_index = h.manifests.is_some()
                || h.media_type.as_deref().is_some_and(|m| {
                    m == "application/vnd.oci.image.index.v1+json"
                        || m == "application/vnd.docker.distribution.manifest.list.v2+json"
                });
            (h.media_type, is_index)
        }
        Err(_) => (None, false),
    }
}

/// One registry session: the client, the image, its credentials.
struct Session {
    client: Client,
    image: oci_client::Reference,
    auth: RegistryAuth,
    registry: String,
}

impl Session {
    async fn manifest(&self, image: &oci_client::Reference) -> Result<(Vec<u8>, Digest)> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(image, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| {
                registry_error(
                    &self.registry,
                    format!("manifest of {image}: {}", chain(&e)),
                )
            })?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(StoreError::invalid(
                format!("manifest of {image}"),
                "too large",
            ));
        }
        // The registry's digest header is not trusted: hash what arrived.
        Ok((bytes.to_vec(), Digest::of_bytes(&bytes)))
    }
}

impl Store {
    /// Pulls `reference` on a runtime of its own (for callers that are not async,
    /// such as `vessel run --pull`). Must not be called from inside a tokio
    /// runtime (tokio refuses nested runtimes); async callers use [`Store::pull`].
    pub fn pull_blocking(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start async runtime", "", e))?;
        rt.block_on(self.pull(reference, opts))
    }

    /// Pulls `reference` into the store and returns the image.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        let r = Reference::parse(reference)?;
        let registry = r.registry().to_string();
        let mut http_hosts: Vec<String> = opts.insecure_registries.clone();
        if is_loopback(&registry) {
            http_hosts.push(registry.clone());
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http_hosts),
            platform_resolver: None,
            ..Default::default()
        });
        let image = match (r.tag(), r.digest()) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                registry.clone(),
                r.repository().to_string(),
                d.to_string(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                registry.clone(),
                r.repository().to_string(),
                t.to_string(),
            ),
            (None, None) => {
                return Err(StoreError::invalid(reference, "neither tag nor digest"));
            }
        };
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => {
                let file = opts.authfile.clone().or_else(|| {
                    std::env::var_os("VESSEL_AUTH_FILE")
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME")
                                .map(|h| PathBuf::from(h).join(".docker/config.json"))
                        })
                });
                match file {
                    Some(f) => credentials_from_file(&f, &registry)?,
                    None => None,
                }
            }
        };
        let auth = match creds {
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username, password)
            }
            None => RegistryAuth::Anonymous,
        };
        let session = Session {
            client,
            image,
            auth,
            registry: registry.clone(),
        };
        // Negotiates basic auth or a bearer token (anonymous ones too, as Docker Hub
        // wants) once; later requests reuse what the client cached.
        session
            .client
            .auth(&session.image, &session.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| registry_error(&registry, format!("authenticating: {}", chain(&e))))?;
        let progress = Progress::new(opts.progress);
        progress.note(&format!("Pulling {}", r.familiar()));
        let _lock = self.lock_shared()?;

        // Manifest, through an index if there is one.
        let (mut bytes, mut digest) = session.manifest(&session.image).await?;
        let top_digest = digest.clone();
        if let Some(pinned) = r.digest() {
            if *pinned != digest {
                return Err(StoreError::DigestMismatch {
                    what: format!("manifest of {}", r.familiar()),
                    expected: pinned.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let (_, is_index) = media_type_of(&bytes);
        if is_index {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::invalid(format!("image index {digest}"), e))?;
            let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
            let chosen = platform::select(&wanted, index.manifests()).map_err(|e| match e {
                platform::PlatformError::NoMatch { wanted, available } => {
                    StoreError::NoMatchingPlatform {
                        reference: r.familiar(),
                        wanted: wanted.to_string(),
                        available: if available.is_empty() {
                            "none".into()
                        } else {
                            available.join(", ")
                        },
                    }
                }
                other => StoreError::invalid(format!("image index {digest}"), other),
            })?;
            let want = Digest::try_from(chosen.digest())?;
            let child = session.image.clone_with_digest(want.to_string());
            let (b, d) = session.manifest(&child).await?;
            if d != want || b.len() as u64 != chosen.size() {
                return Err(StoreError::DigestMismatch {
                    what: format!("manifest for {wanted} in {}", r.familiar()),
                    expected: want.to_string(),
                    actual: d.to_string(),
                });
            }
            bytes = b;
            digest = d;
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::invalid(format!("manifest {digest}"), e))?;
        self.content()
            .put_bytes(&bytes, Some(&digest), &format!("manifest {digest}"))?;

        // Config.
        let config_desc = manifest.config();
        let config_digest = Digest::try_from(config_desc.digest())?;
        if config_desc.size() > MAX_DOCUMENT {
            return Err(StoreError::invalid(
                format!("config {config_digest}"),
                "too large",
            ));
        }
        if !self.content().has(&config_digest) {
            self.fetch_blob(&session, config_desc, None, &Progress::Quiet)
                .await?;
        }
        let config = self.content().read(&config_digest)?;
        let (diff_ids, _) = config_diff_ids(&config, &format!("config {config_digest}"))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::invalid(
                format!("image {config_digest}"),
                format!(
                    "the config lists {} layers but the manifest {}",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            ));
        }

        // Layers: reuse what the store has, download the rest in parallel.
        let known: HashMap<String, LayerRecord> = {
            let conn = self.db();
            let mut m = HashMap::new();
            for img in metadata::all_images(&conn)? {
                for l in metadata::layers_of(&conn, &img.id)? {
                    m.insert(l.blob_digest.clone(), l);
                }
            }
            m
        };
        let parallel = if opts.parallel == 0 { 4 } else { opts.parallel };
        let jobs = manifest
            .layers()
            .iter()
            .zip(diff_ids.iter())
            .map(|(desc, diff_id)| {
                let known = &known;
                let session = &session;
                let progress = &progress;
                async move {
                    let d = desc.digest().to_string();
                    if let Some(k) = known.get(&d) {
                        if k.diff_id == diff_id.to_string()
                            && self.content().has(&Digest::try_from(desc.digest())?)
                        {
                            progress.present(&short(&d));
                            return Ok::<_, StoreError>(LayerRecord {
                                media_type: desc.media_type().to_string(),
                                ..k.clone()
                            });
                        }
                    }
                    let c = self
                        .fetch_blob(session, desc, Some(diff_id), progress)
                        .await?;
                    Ok(LayerRecord {
                        blob_digest: c.digest.to_string(),
                        blob_size: c.size,
                        media_type: desc.media_type().to_string(),
                        diff_id: diff_id.to_string(),
                        diff_size: c.diff_size.unwrap_or(0),
                    })
                }
            });
        let results: Vec<Result<LayerRecord>> = futures::stream::iter(jobs)
            .buffered(parallel)
            .collect()
            .await;
        let layers = results.into_iter().collect::<Result<Vec<_>>>()?;

        // As docker records it: the tag (unless a digest was given, which wins), and
        // the repository pinned to the digest the registry served for the name (the
        // index's, for a multi-platform image).
        let pinned = Reference::parse(&r.name())?.with_digest(top_digest);
        let mut refs = Vec::new();
        if r.digest().is_none() {
            refs.push(r.to_string());
        }
        refs.push(pinned.to_string());
        let fetched = Fetched {
            config_digest,
            config,
            manifest_digest: Some(digest),
            layers,
        };
        if crate::interrupt::requested() {
            return Err(StoreError::Interrupted);
        }
        progress.note("Unpacking");
        // Unpacking is synchronous file work; it runs last, once nothing is in flight.
        let img = self.commit_image(&fetched, &refs)?;
        progress.note(&format!("Pulled {} ({})", r.familiar(), img.id));
        Ok(img)
    }

    /// Streams one blob into the content store, verifying size, digest and (for
    /// layers) diff_id. On any failure nothing of it stays in the store.
    async fn fetch_blob(
        &self,
        session: &Session,
        desc: &Descriptor,
        diff_id: Option<&Digest>,
        progress: &Progress,
    ) -> Result<crate::content::Committed> {
        let digest = Digest::try_from(desc.digest())?;
        let what = if diff_id.is_some() {
            format!("layer {digest}")
        } else {
            format!("blob {digest}")
        };
        let bar = progress.blob(&short(&digest.to_string()), desc.size());
        let mut w = self.content().writer(what.clone())?;
        if diff_id.is_some() {
            w.track_diff_id();
        }
        let digest_str = digest.to_string();
        let mut stream = session
            .client
            .pull_blob_stream(&session.image, digest_str.as_str())
            .await
            .map_err(|e| registry_error(&session.registry, format!("{what}: {}", chain(&e))))?;
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            if crate::interrupt::requested() {
                bar.finish("interrupted");
                return Err(StoreError::Interrupted);
            }
            match chunk {
                Ok(bytes) => {
                    if w.len() + bytes.len() as u64 > desc.size() {
                        bar.finish("failed");
                        return Err(StoreError::SizeMismatch {
                            what,
                            expected: desc.size(),
                            actual: w.len() + bytes.len() as u64,
                        });
                    }
                    w.write_all(&bytes).map_err(|e| {
                        StoreError::io("write blob", w.temp_path().to_path_buf(), e)
                    })?;
                    bar.inc(bytes.len() as u64);
                }
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            }
        }
        // oci-client reports a digest mismatch as a stream error at the end; when all
        // bytes arrived, our own check below names the layer and both digests.
        if let Some(e) = stream_error {
            if w.len() != desc.size() {
                bar.finish("failed");
                return Err(registry_error(
                    &session.registry,
                    format!("{what}: {}", chain(&e)),
                ));
            }
        }
        let committed = w.commit(&Expect {
            digest: Some(&digest),
            size: Some(desc.size()),
            diff_id,
        });
        bar.finish(if committed.is_ok() { "done" } else { "failed" });
        committed
    }
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("127.0.0.1.example.com"));
    }

    #[test]
    fn credentials_file() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        match credentials_from_file(&p, "127.0.0.1:5000").unwrap() {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!(username, "alice");
                assert_eq!(password, "s3cret:x");
            }
            None => panic!("no credentials"),
        }
        assert!(credentials_from_file(&p, "other:1").unwrap().is_none());
        assert!(credentials_from_file(&dir.path().join("missing"), "x")
            .unwrap()
            .is_none());
    }
}
