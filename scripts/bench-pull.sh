#!/usr/bin/env bash
# Pull benchmark: the same multi-layer image, from a registry on 127.0.0.1, pulled
# and unpacked by `vessel pull` and by `skopeo copy` + `umoci unpack`, each into a
# fresh directory every run. Prints both times and the ratio.
#
#   scripts/bench-pull.sh [RUNS]        (default 5; needs root for umoci's unpack)
#
# Not a test: it builds vessel in release mode and takes a minute or two.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"

for tool in /usr/bin/docker-registry skopeo umoci hyperfine python3 gzip; do
    command -v "$tool" >/dev/null || { echo "bench-pull: missing $tool (bash scripts/setup.sh)" >&2; exit 1; }
done

cargo build --release -q -p vessel
VESSEL="$PWD/target/release/vessel"

WORK="$(mktemp -d /tmp/vessel-bench-pull.XXXXXX)"
REG_PID=""
cleanup() {
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# A registry on a free loopback port.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
EOF
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

# The image: busybox, then layers of real files from this machine (binaries,
# Python's library, Perl's, locales, zoneinfo), about 120 MB unpacked in 6 layers.
# Written as an OCI layout with GNU tar and gzip (umoci 0.4.7's `insert` writes
# truncated layer tars here, which vessel rightly refuses).
LAYOUT="$WORK/layout"
mkdir -p "$WORK/base/bin"
cp /bin/busybox "$WORK/base/bin/busybox"
for a in sh ls cat echo; do ln -s busybox "$WORK/base/bin/$a"; done
python3 - "$LAYOUT" "$WORK/base:bin" /:usr/sbin /:usr/lib/python3.11 /:usr/share/perl /:usr/share/i18n /:usr/share/zoneinfo <<'PY'
import hashlib, json, os, subprocess, sys
layout, specs = sys.argv[1], sys.argv[2:]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
layers, diff_ids = [], []
for spec in specs:
    base, path = spec.split(":", 1)
    tar = subprocess.run(["tar", "-C", base, "--numeric-owner", "-cf", "-", path],
                         check=True, stdout=subprocess.PIPE).stdout
    diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    gz = subprocess.run(["gzip", "-1", "-n"], input=tar, check=True, stdout=subprocess.PIPE).stdout
    d, n = put(gz)
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
          "rootfs": {"type": "layers", "diff_ids": diff_ids}}
cd, cn = put(json.dumps(config).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": layers}
md, mn = put(json.dumps(manifest).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
          open(os.path.join(layout, "index.json"), "w"))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://127.0.0.1:$PORT/bench/multi:1"
REF="127.0.0.1:$PORT/bench/multi:1"

LAYERS="$(skopeo inspect --tls-verify=false "docker://$REF" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["Layers"]))')"
echo "bench-pull: image $REF, $LAYERS layers, $RUNS runs each" >&2

PEER="mkdir -p $WORK/s && skopeo copy -q --src-tls-verify=false docker://$REF oci:$WORK/s/layout:x && umoci unpack --image $WORK/s/layout:x $WORK/s/bundle"

# A first pull by each outside the timing (warms caches; a failure shows its message).
rm -rf "$WORK/v" "$WORK/s"
"$VESSEL" --root "$WORK/v" pull -q "$REF" >/dev/null
bash -c "$PEER" >/dev/null

hyperfine --runs "$RUNS" --export-json "$WORK/result.json" --style basic \
    --prepare "rm -rf $WORK/v $WORK/s; sync" \
    -n vessel "$VESSEL --root $WORK/v pull -q $REF" \
    -n "skopeo+umoci" "$PEER"

python3 - "$WORK/result.json" <<'EOF'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
v, p = r["vessel"], r["skopeo+umoci"]
print(f"vessel pull:           {v['mean']:.3f} s ± {v['stddev'] or 0:.3f} (median {v['median']:.3f})")
print(f"skopeo copy + umoci:   {p['mean']:.3f} s ± {p['stddev'] or 0:.3f} (median {p['median']:.3f})")
print(f"ratio (peer / vessel): {p['mean'] / v['mean']:.2f}x")
EOF
