#!/usr/bin/env bash
# VMM start-up benchmark: vessel-vmm vs QEMU microvm (KVM) on the same tiny PVH guest.
# Prints medians of time to the first serial byte, CPU time by then, and RSS minus
# the guest memory touched. Usage: scripts/bench-vmm.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
if [ ! -r /dev/kvm ]; then
    echo "SKIP: /dev/kvm is not usable" >&2
    exit 0
fi
cargo build --quiet --release -p vessel-vmm --bin vessel-vmm --example bench_vmm
exec target/release/examples/bench_vmm --vessel target/release/vessel-vmm --runs "$runs"
