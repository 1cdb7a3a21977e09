#!/usr/bin/env bash
# Start-to-exit latency of `vessel run --rm --isolation container IMAGE true` against
# `runc run` on an OCI bundle of the same rootfs (made with `umoci unpack`).
# Usage: scripts/bench-container.sh [RUNS]   (as root; default 30 runs each)
# Prints a table of medians and the ratio. Set KEEP=1 to keep the work directory.
# Runs alternate between the two, so load from elsewhere on the machine hits both alike.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-30}"
[ "$(id -u)" -eq 0 ] || { echo "bench-container: needs root" >&2; exit 1; }
for p in runc umoci python3 /bin/busybox; do
    command -v "$p" >/dev/null || [ -x "$p" ] || { echo "bench-container: missing $p" >&2; exit 1; }
done

cargo build --release -p vessel >&2
VESSEL="$PWD/target/release/vessel"
WORK="$(mktemp -d /tmp/vessel-bench.XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"

# A busybox-static image, built with umoci alone (no vessel code involved).
umoci init --layout "$WORK/oci" >&2
umoci new --image "$WORK/oci:bench" >&2
umoci unpack --image "$WORK/oci:bench" "$WORK/build" >&2
mkdir -p "$WORK/build/rootfs/"{bin,etc,tmp,proc,sys,dev}
cp /bin/busybox "$WORK/build/rootfs/bin/busybox"
for a in sh true echo cat ls; do ln -sf busybox "$WORK/build/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$WORK/build/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$WORK/build/rootfs/etc/group"
umoci repack --image "$WORK/oci:bench" "$WORK/build" >&2
umoci config --image "$WORK/oci:bench" --config.cmd sh --config.env PATH=/bin >&2
tar -C "$WORK/oci" -cf "$WORK/bench.tar" .
IMAGE="$("$VESSEL" --root "$ROOT" load -i "$WORK/bench.tar" | awk '/Loaded image ID:/ {print $NF}')"
[ -n "$IMAGE" ] || { echo "bench-container: vessel load printed no image ID" >&2; exit 1; }

# The runc bundle: the same image unpacked by umoci, running `true`.
umoci unpack --image "$WORK/oci:bench" "$WORK/bundle" >&2
python3 - "$WORK/bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["args"] = ["true"]
c["process"]["terminal"] = False
json.dump(c, open(p, "w"))
PY

# Warm up both (page cache, cgroup hierarchy).
"$VESSEL" --root "$ROOT" run --rm --isolation container "$IMAGE" true
runc run --bundle "$WORK/bundle" vessel-bench-warm >/dev/null

# Interleaved rounds (vessel, runc, then runc, vessel, ...) so that load from other work
# on the machine falls on both alike. runc run removes its container when the process
# exits, so one ID serves every run.
python3 - "$RUNS" "$VESSEL" "$ROOT" "$IMAGE" "$WORK/bundle" <<'PY'
import statistics, subprocess, sys, time
runs, vessel, root, image, bundle = int(sys.argv[1]), *sys.argv[2:]
cmds = {
    "vessel": [vessel, "--root", root, "run", "--rm", "--isolation", "container", image, "true"],
    "runc": ["runc", "run", "--bundle", bundle, "vessel-bench"],
}
times = {k: [] for k in cmds}
for i in range(runs):
    order = ["vessel", "runc"] if i % 2 == 0 else ["runc", "vessel"]
    for k in order:
        t0 = time.perf_counter()
        subprocess.run(cmds[k], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times[k].append((time.perf_counter() - t0) * 1000)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"container start-to-exit of `true`, {runs} interleaved runs each")
print(f"{'runtime':<8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
for k in ("vessel", "runc"):
    print(f"{k:<8} {med[k]:>10.1f} {min(times[k]):>8.1f} {max(times[k]):>8.1f}")
print(f"ratio vessel/runc (medians): {med['vessel'] / med['runc']:.2f}")
PY
