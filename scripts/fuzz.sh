#!/usr/bin/env bash
# Runs the VMM's cargo-fuzz targets (virtio-blk, virtio-console, virtio-net, the virtio-mmio
# transport) briefly. The stable toolchain is the only one here, so sanitizers are off
# (-s none) and RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags; libFuzzer's coverage
# guidance and crash detection (panics, aborts) still work.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/../vmm"
secs=${1:-15}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
for t in virtio_block virtio_console virtio_net virtio_mmio; do
    echo "fuzz: $t for ${secs}s" >&2
    RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -n 4
    test "${PIPESTATUS[0]}" -eq 0
done
