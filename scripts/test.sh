#!/usr/bin/env bash
# Runs every test vessel has: installs what the tests need, then the whole workspace's tests.
# Tests that need root, KVM or a package skip with a message naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads="${VESSEL_TEST_THREADS:-2}"
