#!/usr/bin/env bash
# Set up, then run the main job on embedded data (generated poses).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${PYTHON:-python3}" -m fastsmall.demo "$@"
