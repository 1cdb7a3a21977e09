//! `vessel inspect`: an image as JSON, in the shape `docker image inspect` uses.

use serde_json::{json, Value};

use crate::image::Image;

/// The JSON object `vessel inspect` prints for one image.
pub fn inspect_json(img: &Image) -> Value {
    let cfg = serde_json::to_value(&img.config).unwrap_or(Value::Null);
    let inner = cfg.get("config").cloned().unwrap_or_else(|| json!({}));
    let pick = |k: &str| inner.get(k).cloned().unwrap_or(Value::Null);
    let diff_ids: Vec<&str> = img.layers.iter().map(|l| l.diff_id.as_str()).collect();
    let layers: Vec<Value> = img
        .layers
        .iter()
        .map(|l| {
            json!({
                "Digest": l.blob_digest,
                "MediaType": l.media_type,
                "Size": l.blob_size,
                "DiffID": l.diff_id,
                "UncompressedSize": l.diff_size,
            })
        })
        .collect();
    json!({
        "Id": img.id,
        "RepoTags": img.references,
        "RepoDigests": img.repo_digests,
        "Created": img.created.map(|c| c.to_rfc3339()),
        "Size": img.size,
        "Architecture": cfg.get("architecture"),
        "Os": cfg.get("os"),
        "Variant": cfg.get("variant"),
        "Author": cfg.get("author"),
        "Config": {
            "Env": pick("Env"),
            "Entrypoint": pick("Entrypoint"),
            "Cmd": pick("Cmd"),
            "WorkingDir": pick("WorkingDir"),
            "User": pick("User"),
            "Labels": pick("Labels"),
            "ExposedPorts": pick("ExposedPorts"),
            "Volumes": pick("Volumes"),
            "StopSignal": pick("StopSignal"),
        },
        "RootFS": {"Type": "layers", "Layers": diff_ids},
        "Layers": layers,
        "ManifestDigest": img.manifest_digest,
        "Rootfs": img.rootfs,
    })
}
