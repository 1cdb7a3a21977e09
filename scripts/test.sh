#!/usr/bin/env bash
# Runs every test vessel has: installs what the tests need, then the whole workspace's tests.
# Tests that need root, KVM or a package skip with a `SKIP: <what is missing>` line; the
# tests' output is shown (--show-output) and the skips are summed up at the end, so no
# test passes silently without running.
#
# Where this host's /dev/kvm cannot boot Linux (this project's machines: kvm_pvm), the
# tests that need a real KVM run in a nested-KVM guest instead (scripts/nested-kvm.sh):
# the built-in VMM's end-to-end tests (tests/vm_run.rs and tests/volumes.rs, mod
# builtin_vmm), the VMM's Linux
# boot and console round trip (vmm/tests/boot_linux.rs), and the container-mode tests
# that go through cgroups (cpu quota, pids and memory limits, the cgroup's removal with
# --rm and after a killed vessel) a second time, there on a pure cgroup v2 hierarchy (all
# of container_run takes over 15 minutes under TCG: too slow for CI); scripts/nested-tests.sh
# is that part. VESSEL_NESTED=0 turns that off (the
# tests then run here and skip, saying why); VESSEL_NESTED=1 uses the guest even where the
# host's KVM boots Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
# took WHAT: says how long WHAT (the step since the last one) took.
mark=$SECONDS
took() { echo "== test.sh: $1 took $((SECONDS - mark)) s"; mark=$SECONDS; }
bash scripts/setup.sh
cargo build --workspace --all-targets
took "the build"
# The static guest agent, built once here (the tests in L1 must not run cargo).
cargo build --quiet --release -p vessel-agent --target x86_64-unknown-linux-musl
export VESSEL_AGENT=$PWD/target/x86_64-unknown-linux-musl/release/vessel-agent
# vessel's own guest kernel, which the VM tests boot (cached after the first build, which
# takes a few minutes on 2 cores); Debian's cloud kernel gets a pass of its own below.
target/debug/vessel kernel build --no-install
took "the agent and the guest kernel"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
threads=${VESSEL_TEST_THREADS:-2}

# The tests that want a KVM that boots Linux.
KVM_TESTS=(builtin_vmm:: debian_kernel_prints_its_banner_on_our_serial)
native=$(VESSEL_KERNEL=/var/cache/vessel/kernel target/debug/vessel kernel --json 2>/dev/null |
    grep -c '"kvm_boots_linux": true' || true)
nested=${VESSEL_NESTED:-auto}
if [ "$nested" = auto ]; then
    if [ "$native" = 1 ] || [ "$(id -u)" -ne 0 ]; then nested=0; else nested=1; fi
fi

# Test executables by target name, from cargo itself (the same build as above).
declare -A bin
while read -r name path; do
    bin[$name]=$path
done < <(cargo test --workspace --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)"[^}]*"test":true}.*"executable":"\([^"]*\)".*/\1 \2/p')

status=0
skip_args=()
if [ "$nested" = 1 ]; then
    for t in "${KVM_TESTS[@]}"; do skip_args+=(--skip "$t"); done
fi
cargo test --workspace --no-fail-fast -- --show-output --test-threads="$threads" \
    "${skip_args[@]}" 2>&1 | tee "$log" || status=$?
took "the workspace's tests"

# VM tests once more on Debian's cloud kernel (modules loaded from the initramfs),
# which `vessel kernel install` and --kernel keep supporting.
for t in vm_run volumes; do
    [ -n "${bin[$t]:-}" ] || { echo "test.sh: no test executable for $t" >&2; exit 1; }
done
echo
echo "== VM isolation on Debian's cloud kernel (VESSEL_TEST_KERNEL=debian)"
# Every boot loads the same modules (console, block, ext4, overlay, fuse/virtio-fs), so a
# few runs cover that kernel: the basics, a terminal, the large start and loopback, and
# the shared directories.
VESSEL_TEST_KERNEL=debian "${bin[vm_run]}" --exact qemu::output_status_and_own_kernel \
    qemu::signals_reach_the_process_and_tty_input_ends qemu::large_starts_and_loopback \
    --show-output --color=never --test-threads="$threads" 2>&1 | tee -a "$log" || status=1
VESSEL_TEST_KERNEL=debian "${bin[volumes]}" qemu:: --show-output --color=never \
    --test-threads="$threads" 2>&1 | tee -a "$log" || status=1
took "the VM suites on Debian's kernel"

if [ "$nested" = 1 ]; then
    for t in vm_run volumes boot_linux container_run container_lifecycle network; do
        [ -n "${bin[$t]:-}" ] || { echo "test.sh: no test executable for $t" >&2; exit 1; }
    done
    echo
    echo "== In a nested-KVM guest (scripts/nested-kvm.sh): the built-in VMM's tests, and"
    echo "== container mode on a pure cgroup v2 hierarchy"
    # Each job that ends is marked in $done. If L1 itself crashes (QEMU 7.2's emulation of
    # nested SVM has panicked L1's kernel here, in its own exception entry, after minutes of
    # tests that all passed), one new L1 runs the jobs that had not ended.
    done=$(mktemp -d /tmp/vessel-nested-done.XXXXXX)
    nested_run() {
        VESSEL_NESTED_DONE=$done bash scripts/nested-kvm.sh --cpus 2 --memory 4G --timeout 1000 -- \
            bash scripts/nested-tests.sh "${bin[vm_run]}" "${bin[boot_linux]}" \
            "${bin[container_run]}" "${bin[container_lifecycle]}" "${bin[volumes]}" \
            "${bin[network]}" \
            2>&1 | tee -a "$log"
        return "${PIPESTATUS[0]}"
    }
    rc=0
    nested_run || rc=$?
    if [ "$rc" = 125 ]; then
        echo "== test.sh: L1 crashed; a new L1 runs the tests that had not ended"
        rc=0
        nested_run || rc=$?
    fi
    [ "$rc" = 0 ] || status=1
    rm -rf "$done"
    took "the nested-KVM part"
fi

echo
skipped=$(grep -c '^SKIP' "$log" || true)
if [ "$skipped" -gt 0 ]; then
    echo "Skipped (what is missing on this machine):"
    grep -h '^SKIP' "$log" | sort | uniq -c
fi
# libtest counts a skipped test as passed; the closing line counts it as skipped.
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) }
} END { print p + 0, f + 0 }' "$log")
echo "tests: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
