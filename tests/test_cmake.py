"""The CMake build for libtorch users (CMakeLists.txt) configures, builds and passes its C++ test.

Builds libfastsmall.so and tests/cpp/test_ops.cpp against the installed torch's
libtorch into a temporary directory and runs them with ctest, so the CMake build
cannot rot while the Python build (setup.py) moves on. Takes about 25 s on 2 cores
(mostly compiling against the ATen headers).
"""
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch.utils

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # configure + build + ctest together


def _run(cmd, cwd, deadline):
    """Runs `cmd`, failing the test (with its output) on a non-zero exit or a timeout."""
    remaining = max(1.0, deadline - time.monotonic())
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=remaining)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{' '.join(cmd)} timed out after {remaining:.0f} s\n--- stdout ---\n{out}\n--- stderr ---\n{err}")
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed with exit status {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


def test_cmake_build_and_cpp_tests(tmp_path):
    missing = [tool for tool in ("cmake", "ctest") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found on PATH; the CMake build is not tested")
    deadline = time.monotonic() + TIMEOUT_S
    build = tmp_path / "build"
    build.mkdir()

    _run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], cwd=build, deadline=deadline)
    _run(["cmake", "--build", ".", "-j", "2"], cwd=build, deadline=deadline)
    # -V shows the test program's own output (its pass/fail tally) even when it passes.
    proc = _run(["ctest", "--output-on-failure", "--no-tests=error", "-V"], cwd=build, deadline=deadline)

    tally = re.search(r"fastsmall C\+\+ tests: (\d+) passed, (\d+) failed", proc.stdout)
    assert tally is not None, f"no result line from fastsmall_cpp_test\n--- stdout ---\n{proc.stdout}"
    assert int(tally.group(2)) == 0 and int(tally.group(1)) > 0, (
        f"fastsmall_cpp_test: {tally.group(0)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
