# Sourced by the VM benchmarks (bench-vm.sh, bench-volumes.sh, bench-network.sh), from the
# repository root: `vm_bench_env NAME` needs root, builds the release binaries (unless
# NO_BUILD=1: inside the nested-KVM guest, which should not run cargo), and sets VESSEL,
# VESSEL_AGENT, VESSEL_KERNEL (default: Debian's cloud kernel from scripts/setup.sh) and
# WORK, a fresh directory under $TMPDIR (TMPDIR=/run in the nested guest: its /tmp is the
# host's over virtio-fs, where overlayfs cannot live).
vm_bench_env() {
    local name=$1
    [ "$(id -u)" -eq 0 ] || { echo "$name: needs root" >&2; exit 1; }
    KERNEL="${VESSEL_KERNEL:-/var/cache/vessel/kernel}"
    [ -e "$KERNEL" ] || { echo "$name: no guest kernel at $KERNEL (run scripts/setup.sh)" >&2; exit 1; }
    if [ "${NO_BUILD:-0}" != 1 ]; then
        cargo build --release -q -p vessel -p vessel-vmm >&2
        cargo build --release -q -p vessel-agent --target x86_64-unknown-linux-musl >&2
    fi
    VESSEL="$PWD/target/release/vessel"
    export VESSEL_AGENT="${VESSEL_AGENT:-$PWD/target/x86_64-unknown-linux-musl/release/vessel-agent}"
    export VESSEL_KERNEL="$KERNEL"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/vessel-$name.XXXXXX")"
}
