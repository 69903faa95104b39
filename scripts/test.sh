#!/usr/bin/env bash
# Sets up, builds and runs every test. Needs ../shared/parity (or ADMIS_PARITY_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
start=$(date +%s)
scripts/build.sh
echo "build: $(( $(date +%s) - start )) s"
ctest --test-dir build --output-on-failure -j"$(nproc)"
