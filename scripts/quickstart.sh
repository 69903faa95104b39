#!/usr/bin/env bash
# Sets up, builds, lists the plugins and runs the example manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build/bin/admis plugins
build/bin/admis run configs/examples/heads-and-schedulers.yaml
