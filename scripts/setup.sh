#!/usr/bin/env bash
# Installs everything vessel's build and tests need on a Debian machine, idempotently.
# Safe to run again: each step checks before it installs.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo "$@"; else log "need root for: $*"; exit 1; fi
    else
        "$@"
    fi
}

# Debian packages: build deps, the tools the tests drive, and the guest kernel's tooling.
PACKAGES=(
    build-essential pkg-config libssl-dev libseccomp-dev libcap-ng-dev musl-tools
    docker-registry apache2-utils skopeo umoci runc
    qemu-system-x86 acpica-tools busybox-static e2fsprogs cpio zstd xz-utils lz4
    iproute2 procps hyperfine openssl
    # the default network's helpers (passt, pasta), and what its tests and benchmark drive
    passt dnsmasq-base util-linux iperf3 wrk curl
    # vessel's own guest kernel (`vessel kernel build`, which also installs what is missing)
    linux-source-6.1 bc bison flex libelf-dev
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a registry on :5000 through its service; tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    need_root systemctl stop docker-registry || true
fi

# virtio-fs for volumes in VM isolation: virtiofsd (the Rust one, from crates.io; Debian
# 12 does not package it), into /usr/local/bin. Its build needs libseccomp and libcap-ng.
VIRTIOFSD_VERSION=1.14.0
if ! /usr/local/bin/virtiofsd --version 2>/dev/null | grep -qx "virtiofsd $VIRTIOFSD_VERSION"; then
    log "installing virtiofsd $VIRTIOFSD_VERSION (cargo install)"
    vfs=$(mktemp -d)
    cargo install --quiet --locked --root "$vfs" virtiofsd --version "$VIRTIOFSD_VERSION"
    need_root install -m 0755 "$vfs/bin/virtiofsd" /usr/local/bin/virtiofsd
    rm -rf "$vfs"
fi

# The guest agent is a static musl binary.
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    log "adding the x86_64-unknown-linux-musl target"
    rustup target add x86_64-unknown-linux-musl
fi

# The guest kernel: Debian's cloud kernel (bzImage + modules), extracted, not installed on
# the host. VM mode and the VMM boot test use it; `vessel kernel install` can take it from here.
KERNEL_CACHE=${VESSEL_KERNEL_CACHE:-/var/cache/vessel/kernel}
if [ ! -s "$KERNEL_CACHE/vmlinuz" ] || [ ! -d "$KERNEL_CACHE/lib/modules" ]; then
    log "fetching the Debian cloud kernel into $KERNEL_CACHE"
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        need_root apt-get update -qq
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
    mkdir -p "$tmp/x" "$(dirname "$KERNEL_CACHE")"
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    version=$(ls "$tmp/x/lib/modules" | head -n1)
    mkdir -p "$tmp/k/lib"
    mv "$tmp/x/boot/vmlinuz-$version" "$tmp/k/vmlinuz"
    mv "$tmp/x/boot/config-$version" "$tmp/k/config" 2>/dev/null || true
    mv "$tmp/x/lib/modules" "$tmp/k/lib/modules"
    cp "$tmp"/*.deb "$tmp/k/"
    echo "$version" > "$tmp/k/version"
    rm -rf "$KERNEL_CACHE.new" && mv "$tmp/k" "$KERNEL_CACHE.new"
    rm -rf "$KERNEL_CACHE" && mv "$KERNEL_CACHE.new" "$KERNEL_CACHE"
fi

log "ok"
