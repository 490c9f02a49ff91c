#!/usr/bin/env bash
# Set up, then run the whole test suite. Triton kernels run under the Triton
# interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FASTSMALL_REQUIRE_EXTENSION=1   # a missing C++ extension is an error, not a fallback
"${PYTHON:-python3}" -m pytest tests -q -ra "$@"
