#!/usr/bin/env bash
# Runs every test vessel has: installs what the tests need, then the whole workspace's tests.
# Tests that need root, KVM or a package skip with a `SKIP: <what is missing>` line; the
# tests' output is shown (--show-output) and the skips are summed up at the end, so no
# test passes silently without running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --show-output \
    --test-threads="${VESSEL_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
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
