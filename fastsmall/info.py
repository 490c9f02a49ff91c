"""``python -m fastsmall.info``: versions, how the extension was built, usable backends."""
from __future__ import annotations

import json
import platform
import sys

import torch

from . import __version__
from . import _extension as ext


def _matrix_units() -> dict:
    """bf16 matrix units found at run time (what ``--precision bf16`` uses)."""
    from .methods.common.speed import matrix_units
    return matrix_units()


def collect() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    cuda = torch.cuda.is_available()
    triton_usable = ext.TRITON_ERROR is None and (cuda or ext.triton_interpreted())
    return {
        "fastsmall": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "numpy": __import__("numpy").__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "torch_threads": torch.get_num_threads(),
        "matrix_units": _matrix_units(),
        "build": ext.build_info(),
        "extension_build": ext.C.build_info() if ext.C is not None else None,
        "backends": {
            "cpp": "usable (CPU tensors)" if ext.C is not None else f"unusable: {ext.CPP_ERROR}",
            "triton": ("usable on " + ("CUDA" if cuda else "CPU through the interpreter (TRITON_INTERPRET=1)"))
            if triton_usable else f"unusable: {ext.TRITON_ERROR or 'no CUDA device and TRITON_INTERPRET unset'}",
            "reference": "usable (any device)",
        },
        "ops": sorted(name for name in dir(torch.ops.fastsmall)
                      if isinstance(getattr(torch.ops.fastsmall, name), torch._ops.OpOverloadPacket))
        if ext.C is not None else [],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = collect()
    if "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<{width}} {v}")
        else:
            print(f"{key:<{width}} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
