#!/usr/bin/env bash
# All set-up on a fresh machine: torch (CPU build, pinned), the other dependencies,
# and fastsmall itself with its C++ extension (incremental rebuild when run again).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned: an unpinned torch (or build isolation) pulls a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==${FASTSMALL_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -r requirements.txt
# --no-build-isolation: build against the torch installed above.
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
