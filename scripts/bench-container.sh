#!/usr/bin/env bash
# Start-to-exit latency of `vessel run --rm --isolation container IMAGE true` against
# `runc run` on an OCI bundle of the same rootfs (made with `umoci unpack`).
# Usage: scripts/bench-container.sh [RUNS]   (as root; default 30 runs each)
# Prints a table of medians and the ratio. Set KEEP=1 to keep the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-30}"
[ "$(id -u)" -eq 0 ] || { echo "bench-container: needs root" >&2; exit 1; }
for p in runc umoci hyperfine /bin/busybox; do
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
"$VESSEL" --root "$ROOT" load -i "$WORK/bench.tar" >&2
IMAGE="$("$VESSEL" --root "$ROOT" images | awk 'NR==2 {print $1":"$2}')"

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

# runc run removes its container when the process exits, so one ID serves every run.
hyperfine --runs "$RUNS" --warmup 2 -N --export-json "$WORK/results.json" \
    -n vessel "$VESSEL --root $ROOT run --rm --isolation container $IMAGE true" \
    -n runc "runc run --bundle $WORK/bundle vessel-bench" >&2

python3 - "$WORK/results.json" "$RUNS" <<'PY'
import json, sys, statistics
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
med = {k: statistics.median(v["times"]) * 1000 for k, v in r.items()}
print(f"container start-to-exit, `true`, {sys.argv[2]} runs each (medians)")
print(f"{'runtime':<10} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
for k in ("vessel", "runc"):
    t = [x * 1000 for x in r[k]["times"]]
    print(f"{k:<10} {med[k]:>10.1f} {min(t):>8.1f} {max(t):>8.1f}")
print(f"ratio vessel/runc: {med['vessel'] / med['runc']:.2f}x")
PY
