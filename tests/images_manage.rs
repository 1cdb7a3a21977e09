//! `vessel images`, `tag`, `rmi`, garbage collection, `system df` and `system check`.

mod common;

use common::{Entry, Layer, TestImage, TestRoot};

fn ids(root: &TestRoot, args: &[&str]) -> Vec<String> {
    let mut a = vec!["images", "-q"];
    a.extend_from_slice(args);
    root.ok(&a).lines().map(str::to_string).collect()
}

fn json_rows(root: &TestRoot, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["images", "--format", "json"];
    a.extend_from_slice(args);
    serde_json::from_str::<serde_json::Value>(&root.ok(&a))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn id_of(root: &TestRoot, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&root.ok(&["inspect", name])).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count()
}

/// Three images: old (2020), mid (2022, labelled), new (2024), sharing the base layer.
fn three(root: &TestRoot) -> (String, String, String) {
    root.load(
        &TestImage::new("vessel-test/old:1")
            .created("2020-01-01T00:00:00Z")
            .layer(Layer::new(vec![Entry::file("old", b"o")])),
    );
    root.load(
        &TestImage::new("vessel-test/mid:1")
            .created("2022-01-01T00:00:00Z")
            .label("tier", "web")
            .layer(Layer::new(vec![Entry::file("mid", b"m")])),
    );
    root.load(
        &TestImage::new("other/new:2")
            .created("2024-01-01T00:00:00Z")
            .label("tier", "db")
            .layer(Layer::new(vec![Entry::file("new", b"n")])),
    );
    (
        id_of(root, "vessel-test/old:1"),
        id_of(root, "vessel-test/mid:1"),
        id_of(root, "other/new:2"),
    )
}

fn short(id: &str) -> String {
    id[7..19].to_string()
}

#[test]
fn images_lists_newest_first_and_filters() {
    let root = TestRoot::new();
    let (old, mid, new) = three(&root);
    assert_eq!(ids(&root, &[]), vec![short(&new), short(&mid), short(&old)]);
    assert_eq!(ids(&root, &["--no-trunc"])[0], new);
    assert_eq!(ids(&root, &["--filter", "label=tier"]).len(), 2);
    assert_eq!(
        ids(&root, &["--filter", "label=tier=web"]),
        vec![short(&mid)]
    );
    assert_eq!(
        ids(&root, &["--filter", "reference=vessel-test/*"]),
        vec![short(&mid), short(&old)]
    );
    assert_eq!(
        ids(&root, &["--filter", "reference=*/new:2"]),
        vec![short(&new)]
    );
    assert_eq!(
        ids(&root, &["--filter", "before=vessel-test/mid:1"]),
        vec![short(&old)]
    );
    assert_eq!(
        ids(&root, &["--filter", "since=vessel-test/mid:1"]),
        vec![short(&new)]
    );
    assert!(ids(&root, &["--filter", "dangling=true"]).is_empty());
    let err = root.fails(&["images", "--filter", "colour=red"]);
    assert!(err.contains("unknown filter"), "{err}");

    // A second name: listed once per reference, counted once in the totals.
    root.ok(&["tag", "vessel-test/old:1", "vessel-test/old:latest"]);
    let rows = json_rows(&root, &[]);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r["ID"] == old.as_str()).count(), 2);
    let table = root.ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains("3 images"), "{table}");
    assert_eq!(ids(&root, &[]).len(), 3, "-q lists each image once");

    // Retagging a name onto another image leaves the old one dangling.
    root.ok(&["tag", "other/new:2", "vessel-test/mid:1"]);
    assert_eq!(
        ids(&root, &["--filter", "dangling=true"]),
        vec![short(&mid)]
    );
    let rows = json_rows(&root, &["--filter", "dangling=true"]);
    assert_eq!(rows[0]["Tag"], "<none>");
}

#[test]
fn rmi_untags_deletes_and_collects_garbage() {
    let root = TestRoot::new();
    let (old, mid, new) = three(&root);
    let blobs = root.path().join("blobs/sha256");
    let trees = root.path().join("rootfs");
    // 3 configs + 3 manifests + base + 3 top layers.
    assert_eq!(count(&blobs), 10);
    assert_eq!(count(&trees), 3);

    root.ok(&["tag", "vessel-test/old:1", "vessel-test/old:2"]);
    // An ID with two names needs -f.
    let err = root.fails(&["rmi", &short(&old)]);
    assert!(err.contains("-f"), "{err}");
    let out = root.ok(&["rmi", "vessel-test/old:2"]);
    assert!(out.contains("Untagged: vessel-test/old:2"), "{out}");
    assert!(!out.contains("Deleted"), "{out}");
    let out = root.ok(&["rmi", "vessel-test/old:1"]);
    assert!(out.contains(&format!("Deleted: {old}")), "{out}");
    assert_eq!(count(&blobs), 7);
    assert_eq!(count(&trees), 2);

    let out = root.ok(&["rmi", "-f", &short(&mid), "other/new:2"]);
    assert!(out.contains(&mid) && out.contains(&new), "{out}");
    assert_eq!(count(&blobs), 0);
    assert_eq!(count(&trees), 0);
    assert!(ids(&root, &[]).is_empty());
    let err = root.fails(&["rmi", "vessel-test/old:1"]);
    assert!(err.contains("no such image"), "{err}");
}

#[test]
fn system_check_finds_and_repairs_corruption() {
    let root = TestRoot::new();
    let (old, _, _) = three(&root);
    let out = root.ok(&["system", "check"]);
    assert!(out.starts_with("ok: 10 blobs, 3 images"), "{out}");
    let df = root.ok(&["system", "df"]);
    assert!(df.contains("Images"), "{df}");

    // Corrupt the old image's top layer in place.
    let v: serde_json::Value =
        serde_json::from_str(&root.ok(&["inspect", "vessel-test/old:1"])).unwrap();
    let layer = v[0]["Layers"][1]["Digest"].as_str().unwrap().to_string();
    let path = root.path().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let out = root.run(&["system", "check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&layer) && text.contains(&old), "{text}");
    let out = root.ok(&["system", "check", "--repair"]);
    assert!(out.contains("repaired"), "{out}");
    assert!(root.ok(&["system", "check"]).starts_with("ok"));
    assert_eq!(ids(&root, &[]).len(), 2);
    // The repaired store takes the image again.
    three(&root);
    assert!(root
        .ok(&["system", "check"])
        .starts_with("ok: 10 blobs, 3 images"));
}
