#!/usr/bin/env bash
# The README's first command: on a fresh Debian machine (as root), install what is
# missing, build vessel, install the guest kernel, and run a container in a microVM.
#
# No registry is needed: the demo image is busybox-static packed here as an OCI
# archive and loaded with `vessel load`. Where Docker Hub is reachable, it also runs
# `vessel run alpine echo hello`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\ndemo: %s\n' "$*" >&2; }

log "installing what is missing (scripts/setup.sh)"
bash scripts/setup.sh

log "building vessel and its guest agent (release)"
cargo build --release --quiet -p vessel -p vessel-vmm
cargo build --release --quiet -p vessel-agent --target x86_64-unknown-linux-musl
VESSEL=$PWD/target/release/vessel

log "installing the guest kernel under the state root"
"$VESSEL" kernel install
"$VESSEL" kernel

log "building the demo image (busybox-static as an OCI archive) and loading it"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/oci/blobs/sha256"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh echo cat ls uname ps hostname id env sleep true false head grep mount df free; do
    ln -s busybox "$work/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$work/rootfs/etc/passwd"
printf 'root:x:0:\n' > "$work/rootfs/etc/group"
chmod 1777 "$work/rootfs/tmp"
blob() { # file -> digest hex; moves the file into the layout's blobs
    local d; d=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$work/oci/blobs/sha256/$d"
    echo "$d"
}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n "$work/layer.tar"
layer_size=$(stat -c %s "$work/layer.tar.gz")
layer=$(blob "$work/layer.tar.gz")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
config_size=$(stat -c %s "$work/config.json")
config=$(blob "$work/config.json")
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$layer_size}]}
JSON
manifest_size=$(stat -c %s "$work/manifest.json")
manifest=$(blob "$work/manifest.json")
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
cat > "$work/oci/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"vessel-demo/busybox:latest"}}]}
JSON
tar -C "$work/oci" -cf "$work/demo.tar" .
"$VESSEL" load -i "$work/demo.tar"

log "running a container in a microVM: vessel run --rm vessel-demo/busybox ..."
time "$VESSEL" run --rm vessel-demo/busybox sh -c \
    'echo "hello from a microVM"; uname -a; echo "PID 1 is $(cat /proc/1/comm); processes: $(ls /proc | grep -c "^[0-9]")"'

if command -v curl >/dev/null && curl -s -o /dev/null -m 5 https://registry-1.docker.io/v2/; then
    log "Docker Hub is reachable: vessel run alpine echo hello"
    "$VESSEL" run --rm alpine echo hello
else
    log "Docker Hub is not reachable from here; skipping \`vessel run alpine echo hello\`"
fi
