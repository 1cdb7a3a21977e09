#!/usr/bin/env bash
# `vessel run --rm IMAGE true` with VM isolation, broken into stages, beside the same run
# in container mode. Usage: scripts/bench-vm.sh [RUNS]   (as root; default 10 runs each)
#
# Stages come from `VESSEL_VM_TIMINGS=1 vessel run` (times since the backend started the run):
#   assets-ready   kernel, initramfs and both disks ready (image disk cached after run 1)
#   vmm-started    the VMM process spawned
#   agent-ready    the guest kernel booted and the agent announced itself on the channel
#   process-done   the container's process exited and its output was drained
#   vm-gone        the guest powered off and the VMM process was reaped
# plus the wall time of the whole `vessel run` process. Medians over RUNS runs, after one
# warm-up run each. Runs alternate VM / container so that load elsewhere hits both alike.
# VMM=qemu|builtin|auto picks the backend (default auto: qemu under TCG on hosts whose KVM
# cannot run Linux). Set KEEP=1 to keep the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-10}"
VMM="${VMM:-auto}"
[ "$(id -u)" -eq 0 ] || { echo "bench-vm: needs root" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "bench-vm: missing /bin/busybox (busybox-static)" >&2; exit 1; }
KERNEL="${VESSEL_KERNEL:-/var/cache/vessel/kernel}"
[ -e "$KERNEL" ] || { echo "bench-vm: no guest kernel at $KERNEL (run scripts/setup.sh)" >&2; exit 1; }

cargo build --release -q -p vessel -p vessel-vmm >&2
cargo build --release -q -p vessel-agent --target x86_64-unknown-linux-musl >&2
VESSEL="$PWD/target/release/vessel"
WORK="$(mktemp -d /tmp/vessel-bench-vm.XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
export VESSEL_KERNEL="$KERNEL"

# A busybox-static image as an OCI layout, written by hand (no vessel code involved).
python3 - "$WORK" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
work = sys.argv[1]
blobs = os.path.join(work, "oci/blobs/sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    for d in ["bin", "etc", "tmp"]:
        i = tarfile.TarInfo(d); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
    t.add("/bin/busybox", "bin/busybox")
    for a in ["sh", "true", "echo"]:
        i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
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
open(os.path.join(work, "oci/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest, "size": msize, "annotations": {"org.opencontainers.image.ref.name": "bench/vm:latest"}}]},
    open(os.path.join(work, "oci/index.json"), "w"))
PY
tar -C "$WORK/oci" -cf "$WORK/bench.tar" .
"$VESSEL" --root "$ROOT" load -i "$WORK/bench.tar" >&2

VESSEL_VM_TIMINGS=1 python3 - "$RUNS" "$VESSEL" "$ROOT" "$VMM" <<'PY'
import re, statistics, subprocess, sys, time
runs, vessel, root, vmm = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
vm_cmd = [vessel, "--root", root, "run", "--rm", "--vmm", vmm, "bench/vm", "true"]
ct_cmd = [vessel, "--root", root, "run", "--rm", "--isolation", "container", "bench/vm", "true"]
stages = ["assets-ready", "vmm-started", "agent-ready", "process-done", "vm-gone"]
backend = "?"
def vm_run():
    global backend
    t = time.perf_counter()
    p = subprocess.run(vm_cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"bench-vm: VM run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    m = re.search(r"vm timings \(ms since start\): (.*)", p.stderr)
    vals = dict(kv.split("=") for kv in m.group(1).split())
    return wall, {k: float(vals[k]) for k in stages}
def ct_run():
    t = time.perf_counter()
    p = subprocess.run(ct_cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return (time.perf_counter() - t) * 1000
backend = subprocess.run([vessel, "--root", root, "kernel", "--vmm", vmm], capture_output=True, text=True).stdout
backend = next((l.split(":", 1)[1].strip() for l in backend.splitlines() if l.startswith("vmm:")), "?")
first_wall, first = vm_run()  # builds the image disk and the initramfs
ct_ok = ct_run() is not None
vm_walls, vm_stages, ct_walls = [], {k: [] for k in stages}, []
for i in range(runs):
    order = [0, 1] if i % 2 == 0 else [1, 0]
    for o in order:
        if o == 0:
            w, s = vm_run(); vm_walls.append(w)
            for k in stages: vm_stages[k].append(s[k])
        elif ct_ok:
            w = ct_run()
            if w is not None: ct_walls.append(w)
med = statistics.median
print(f"VM isolation, backend {backend}, {runs} runs (medians, ms since the backend started):")
prev = 0.0
for k in stages:
    m = med(vm_stages[k])
    print(f"  {k:<13} {m:8.1f}   (+{m - prev:7.1f})")
    prev = m
print(f"  {'wall':<13} {med(vm_walls):8.1f}   whole `vessel run --rm IMAGE true` (min {min(vm_walls):.1f}, max {max(vm_walls):.1f})")
print(f"  first run     {first_wall:8.1f}   (builds the image disk and the initramfs; assets-ready {first['assets-ready']:.1f})")
if ct_walls:
    print(f"container isolation, {len(ct_walls)} runs: wall median {med(ct_walls):.1f} ms (min {min(ct_walls):.1f}, max {max(ct_walls):.1f})")
    print(f"VM / container wall ratio: {med(vm_walls) / med(ct_walls):.1f}x")
else:
    print("container isolation: not runnable here (see `vessel run --isolation container`)")
PY
