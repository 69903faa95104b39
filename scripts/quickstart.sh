#!/usr/bin/env bash
# Sets up, builds and runs the quickstart: ADMIS in miniature on rendered toy faces
# (configs/quickstart.yaml), about 8 minutes on 2 cores; the report is runs/quickstart/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build/bin/admis run configs/quickstart.yaml "$@"
echo "report: runs/quickstart/report/report.md (and report.html)"
