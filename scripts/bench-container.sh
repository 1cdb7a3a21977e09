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
for a in sh true echo cat ls sleep; do ln -sf busybox "$WORK/build/rootfs/bin/$a"; done
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

# A second runc bundle with the seccomp profile vessel applies (docker's), so the
# comparison is like for like: umoci's generated config.json has no seccomp at all.
"$VESSEL" --root "$ROOT" run -d --name bench-profile --isolation container "$IMAGE" sleep 60 >/dev/null
CID="$(ls "$ROOT/containers" | head -1)"
python3 - "$ROOT/containers/$CID/bundle/config.json" "$WORK/bundle/config.json" "$WORK/bundle-seccomp" <<'PY'
import json, os, sys
vessel_cfg, runc_cfg, out = sys.argv[1:]
seccomp = json.load(open(vessel_cfg))["linux"]["seccomp"]
# libcontainer reads SCMP_CMP_MASKED_EQ's value/valueTwo the other way round from runc.
for rule in seccomp["syscalls"]:
    for arg in rule.get("args", []):
        if arg["op"] == "SCMP_CMP_MASKED_EQ":
            arg["value"], arg["valueTwo"] = arg.get("valueTwo", 0), arg["value"]
c = json.load(open(runc_cfg))
c["linux"]["seccomp"] = seccomp
c["root"]["path"] = os.path.join(os.path.dirname(runc_cfg), "rootfs")
os.makedirs(out, exist_ok=True)
json.dump(c, open(os.path.join(out, "config.json"), "w"))
PY
"$VESSEL" --root "$ROOT" rm -f bench-profile >/dev/null

# Warm up (page cache, cgroup hierarchy).
"$VESSEL" --root "$ROOT" run --rm --isolation container "$IMAGE" true
runc run --bundle "$WORK/bundle" vessel-bench-warm >/dev/null
runc run --bundle "$WORK/bundle-seccomp" vessel-bench-warm >/dev/null

# Interleaved rounds (vessel, runc, runc+seccomp, then the reverse, ...) so that load from other work
# on the machine falls on both alike. runc run removes its container when the process
# exits, so one ID serves every run.
python3 - "$RUNS" "$VESSEL" "$ROOT" "$IMAGE" "$WORK/bundle" "$WORK/bundle-seccomp" <<'PY'
import statistics, subprocess, sys, time
runs, vessel, root, image, bundle, bundle_seccomp = int(sys.argv[1]), *sys.argv[2:]
cmds = {
    "vessel": [vessel, "--root", root, "run", "--rm", "--isolation", "container", image, "true"],
    "runc": ["runc", "run", "--bundle", bundle, "vessel-bench"],
    "runc+seccomp": ["runc", "run", "--bundle", bundle_seccomp, "vessel-bench"],
}
times = {k: [] for k in cmds}
for i in range(runs):
    order = list(cmds) if i % 2 == 0 else list(reversed(cmds))
    for k in order:
        t0 = time.perf_counter()
        subprocess.run(cmds[k], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times[k].append((time.perf_counter() - t0) * 1000)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"container start-to-exit of `true`, {runs} interleaved runs each")
print(f"{'runtime':<14} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
for k in cmds:
    print(f"{k:<14} {med[k]:>10.1f} {min(times[k]):>8.1f} {max(times[k]):>8.1f}")
print(f"ratio vessel/runc (medians): {med['vessel'] / med['runc']:.2f}")
print(f"ratio vessel/runc+seccomp (medians): {med['vessel'] / med['runc+seccomp']:.2f}")
PY
