#!/usr/bin/env bash
# Set up, then run the whole test suite. Triton kernels run under the Triton
# interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tensorboard is optional for users (--tensorboard); the tests install it so that the event files
# are checked too (tests/test_metrics_log.py). It does not depend on torch: nothing else changes.
"${PYTHON:-python3}" -m pip install -q tensorboard
export FASTSMALL_REQUIRE_EXTENSION=1   # a missing C++ extension is an error, not a fallback
"${PYTHON:-python3}" -m pytest tests -q -ra "$@"
