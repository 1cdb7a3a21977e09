//! End-to-end tests of `vessel run --isolation container` on busybox-static test images.

mod common;

use common::{TestImage, TestRoot};

fn skip() -> bool {
    if !common::is_root() {
        eprintln!("SKIP: container isolation needs root");
        return true;
    }
    common::skip_without(&[common::BUSYBOX])
}

#[test]
fn smoke() {
    if skip() {
        return;
    }
    let root = TestRoot::new();
    let img = root.load(&TestImage::new("vessel-test/ctr:smoke"));
    let out = root.run(&[
        "run",
        "--rm",
        "--isolation",
        "container",
        &img,
        "sh",
        "-c",
        "echo hi; hostname; id; ls /; cat /proc/1/cmdline; exit 3",
    ]);
    eprintln!(
        "stdout: {}\nstderr: {}\nstatus: {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    );
    assert_eq!(out.status.code(), Some(3));
}
