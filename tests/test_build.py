"""Build records, the info command, and the fallback without the extension."""
import json
import os
import subprocess
import sys

import pytest

import fastsmall
from fastsmall import _extension as ext
from conftest import ROOT


def _python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "FASTSMALL_REQUIRE_EXTENSION"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=ROOT.parent, timeout=300)


def test_info_command_reports_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastsmall.info", "--json"], capture_output=True, text=True,
                         check=True, timeout=300)
    info = json.loads(out.stdout)
    assert info["torch"] and info["fastsmall"] == fastsmall.__version__
    assert set(info["backends"]) == {"cpp", "triton", "reference"}
    if ext.C is not None:
        assert info["backends"]["cpp"].startswith("usable")
        assert {"kcs_forward", "bone_decompose", "kcs_inverse"} <= set(info["ops"])
        assert info["extension_build"]["openmp"] is True, "the extension must be built with -fopenmp"


@pytest.mark.skipif(ext.C is None, reason="needs the built extension")
def test_info_reports_the_instruction_set_of_the_cpu_kernels():
    """The widest instruction set this CPU has (from /proc/cpuinfo), capped by FASTSMALL_SIMD_BYTES."""
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    widest = (64 if {"avx512f", "avx512dq", "avx512vl", "avx512bw", "avx2", "fma"} <= flags
              else 32 if {"avx2", "fma"} <= flags else 16)
    code = "import json, fastsmall._C as C; print(json.dumps(C.build_info()))"
    names = {64: "AVX-512", 32: "AVX2+FMA", 16: "baseline (SSE2)"}
    for cap, want in ((None, widest), ("32", min(widest, 32)), ("16", 16)):
        env = {"FASTSMALL_SIMD_BYTES": cap} if cap else {}
        proc = _python(code, **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        assert info["cpu_kernel_vector_bytes"] == want and info["cpu_kernel_isa"] == names[want], (cap, info)


@pytest.mark.skipif(ext.C is None, reason="needs the built extension")
def test_build_record_matches_installed_torch():
    import torch
    record = ext.build_info()
    assert record["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert "-fopenmp" in record["cxx_flags"]
    assert ext.C.build_info()["torch_version"] == torch.__version__.split("+")[0]


def test_mismatched_build_gives_readable_message():
    message = ext.mismatch({"torch_version": "2.11.0"}, "2.13.0+cpu")
    assert "built against torch 2.11.0 but torch 2.13.0+cpu is installed" in message
    assert "pip install --no-build-isolation -e ." in message
    assert ext.mismatch({"torch_version": "2.13.0+cpu"}, "2.13.1") is None
    assert ext.mismatch({}, "2.13.0") is None


_WITHOUT_EXTENSION = """
import sys, warnings
sys.modules['fastsmall._C'] = None   # makes `import fastsmall._C` fail
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import fastsmall as fs
    sk = fs.Skeleton.h36m16()
    x = torch.randn(3, 16, 3)
    a = fs.ops.kcs_forward(x, sk)
    b = fs.ops.kcs_forward(x, sk)
    torch.testing.assert_close(a, fs.reference.kcs_forward(x, sk))
ours = [w for w in caught if 'fastsmall' in str(w.message)]
print(len(ours), ours[0].message)
"""


def test_missing_extension_falls_back_with_one_warning():
    out = _python(_WITHOUT_EXTENSION)
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.split(" ", 1)
    assert count == "1", out.stdout
    assert "fastsmall._C is not available" in message and "reference" in message


def test_missing_extension_is_an_error_when_required():
    out = _python(_WITHOUT_EXTENSION, FASTSMALL_REQUIRE_EXTENSION="1")
    assert out.returncode != 0
    assert "FASTSMALL_REQUIRE_EXTENSION=1 but the C++ extension fastsmall._C is not available" in out.stderr
