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

# Debian's cloud kernel, ready in seconds. vessel's own kernel boots VMs faster but takes
# minutes to compile on a small machine: `vessel kernel build` (README, "The guest kernel").
log "installing the guest kernel under the state root (Debian's cloud kernel)"
"$VESSEL" kernel install
"$VESSEL" kernel

log "building the demo image (busybox-static as an OCI archive) and loading it"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 scripts/busybox-image.py "$work/demo.tar" vessel-demo/busybox:latest \
    sh echo cat ls uname ps hostname id env sleep true false head grep mount df free httpd
"$VESSEL" load -i "$work/demo.tar"

log "running a container in a microVM: vessel run --rm vessel-demo/busybox ..."
time "$VESSEL" run --rm vessel-demo/busybox sh -c \
    'echo "hello from a microVM"; uname -a; echo "PID 1 is $(cat /proc/1/comm); processes: $(ls /proc | grep -c "^[0-9]")"'

log "publishing a port from a microVM: vessel run -d -p 127.0.0.1:18080:80 ... httpd"
id=$("$VESSEL" run -d -p 127.0.0.1:18080:80 vessel-demo/busybox sh -c \
    'mkdir -p /www && echo "served from a microVM" > /www/index.html && exec httpd -f -p 80 -h /www')
"$VESSEL" ps
for _ in $(seq 50); do
    curl -s -m 2 http://127.0.0.1:18080/ && break
    sleep 0.2
done
"$VESSEL" rm -f "$id" >/dev/null

if command -v curl >/dev/null && curl -s -o /dev/null -m 5 https://registry-1.docker.io/v2/; then
    log "Docker Hub is reachable: vessel run alpine echo hello"
    "$VESSEL" run --rm alpine echo hello
else
    log "Docker Hub is not reachable from here; skipping \`vessel run alpine echo hello\`"
fi

log "done. For faster VM boots, build vessel's own guest kernel (a few minutes, once): $VESSEL kernel build"
