#!/usr/bin/env bash
# All set-up on a fresh machine: torch (CPU build, pinned), the other dependencies,
# and fastsmall itself with its C++ extension. Run again, it skips the build when a
# stamp of everything that affects it (csrc/, setup.py and its flags, torch, Python,
# compiler) matches and the installed extension loads from this checkout; when only
# csrc/ changed it rebuilds incrementally (ninja, persistent build/temp-fastsmall-*);
# otherwise, or with FASTSMALL_REBUILD=1, it runs the full `pip install -e .`.
# The rules and why: scripts/build_stamp.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned: an unpinned torch (or build isolation) pulls a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==${FASTSMALL_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -r requirements.txt
mkdir -p build
PENDING=build/fastsmall-build-stamp.pending.json   # build/ is git-ignored
decision=0
"$PY" scripts/build_stamp.py plan --pending "$PENDING" || decision=$?
case $decision in
  0) ;;  # up to date: nothing to build
  10) # Only csrc/ changed: recompile what changed, in place (the editable install loads ./fastsmall).
      # Compiler output goes to a log, shown only on failure (as pip -q does).
      if ! "$PY" -W ignore setup.py build_ext --inplace \
          --build-temp "$("$PY" scripts/build_stamp.py build-dir "$PENDING")" > build/build_ext.log 2>&1; then
        cat build/build_ext.log; echo "fastsmall extension: incremental build failed (log above)" >&2; exit 1
      fi ;;
  11) # --no-build-isolation: build against the torch installed above.
      "$PY" -m pip install -q --no-build-isolation --no-deps -e . ;;
  *) exit "$decision" ;;
esac
if [ "$decision" != 0 ]; then
  "$PY" scripts/build_stamp.py record "$PENDING"
fi
rm -f "$PENDING"
