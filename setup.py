"""Build fastsmall's C++ extension (fastsmall._C) with torch.utils.cpp_extension.

Install after torch, without build isolation (isolation would pull a CUDA torch):

    pip install --no-build-isolation -e .

CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built with -O3 -fopenmp.
CUDA sources (csrc/cuda/*.cu, if any) are built only when the installed torch has
CUDA *and* a CUDA toolkit is found, or when FASTSMALL_FORCE_CUDA=1; never decided
by torch.cuda.is_available(), so a GPU-less build machine can build for GPUs.
The GPU kernels of fastsmall are Triton (fastsmall/kernels/) and need no build.
A record of the build (torch version, flags) is written to fastsmall/_build_info.json;
fastsmall checks it against the installed torch before loading the extension.
"""
import glob
import json
import os
import platform
from datetime import datetime, timezone

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-std=c++17", "-fvisibility=hidden",
             "-Werror=return-type"]  # a missing return is undefined behaviour, never a warning
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--use_fast_math"]


def _want_cuda(cuda_sources):
    if os.environ.get("FASTSMALL_FORCE_CUDA", "0") == "1":
        return True
    return bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    flags_text = " ".join(CXX_FLAGS)
    define = [("FASTSMALL_CXX_FLAGS", json.dumps(flags_text))]
    if _want_cuda(cuda_sources):
        return CUDAExtension(
            "fastsmall._C", sources + cuda_sources, define_macros=define + [("FASTSMALL_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, extra_link_args=LINK_FLAGS,
        ), True
    return CppExtension(
        "fastsmall._C", sources, define_macros=define, extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
    ), False


class BuildWithInfo(BuildExtension):
    """Builds the extension, then records what it was built against."""

    def run(self):
        super().run()
        info = {
            "torch_version": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "with_cuda_sources": WITH_CUDA,
            "cxx_flags": CXX_FLAGS,
            "link_flags": LINK_FLAGS,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        targets = {os.path.join(ROOT, "fastsmall")}
        if not self.inplace:
            targets.add(os.path.join(os.path.abspath(self.build_lib), "fastsmall"))
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2)


EXTENSION, WITH_CUDA = _extension()

setup(
    name="fastsmall",
    version="0.1.0",
    description="Fused PyTorch ops and training pipelines for learning from small data (PoseAug, CReST, KE)",
    packages=find_packages(include=["fastsmall", "fastsmall.*"]),
    package_data={"fastsmall": ["_build_info.json"]},
    ext_modules=[EXTENSION],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy"],
    extras_require={"gpu": ["triton>=3.2"], "test": ["pytest", "pytest-benchmark", "scipy"]},
    entry_points={"console_scripts": ["fastsmall=fastsmall.cli:main"]},
)
