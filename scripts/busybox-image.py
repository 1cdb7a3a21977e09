#!/usr/bin/env python3
"""Writes a busybox-static image as an OCI image layout tarball, by hand (no vessel code
involved), for the demo and the benchmark scripts.

Usage: busybox-image.py OUT.tar REFERENCE [APPLET...]   (no applets: every applet)
$EXTRA_FILES: host files (space-separated) copied in at the same paths, symlinks followed
(a dynamically linked host tool and the libraries `ldd` names for it).
"""
import gzip, hashlib, io, json, os, subprocess, sys, tarfile, tempfile

out, ref, applets = sys.argv[1], sys.argv[2], sys.argv[3:]
if not applets:
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True,
                             text=True, check=True).stdout.split()
work = tempfile.mkdtemp()
blobs = os.path.join(work, "blobs/sha256")
os.makedirs(blobs)

def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)

buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for d in ["bin", "etc", "tmp", "data"]:
        i = tarfile.TarInfo(d); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
    t.add("/bin/busybox", "bin/busybox")
    for a in applets:
        if a != "busybox":
            i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
    for f in os.environ.get("EXTRA_FILES", "").split():
        t.add(os.path.realpath(f), f.lstrip("/"))
    pw = b"root:x:0:0:root:/root:/bin/sh\n"
    i = tarfile.TarInfo("etc/passwd"); i.size = len(pw); t.addfile(i, io.BytesIO(pw))
raw = buf.getvalue()
layer, lsize = put(gzip.compress(raw, mtime=0))
config, csize = put(json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode())
manifest, msize = put(json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": csize},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": lsize}]}).encode())
open(os.path.join(work, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest, "size": msize, "annotations": {"org.opencontainers.image.ref.name": ref}}]},
    open(os.path.join(work, "index.json"), "w"))
subprocess.run(["tar", "-C", work, "-cf", out, "."], check=True)
subprocess.run(["rm", "-rf", work], check=True)
