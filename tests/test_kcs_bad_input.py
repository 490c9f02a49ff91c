"""Bad input gets a clear error naming the argument -- through the wrappers and torch.ops."""
import pytest
import torch

import fastsmall as fs
from conftest import available_backends

SK = fs.Skeleton.h36m16()
BACKENDS = available_backends()


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("call, error, message", [
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 4), SK, backend=b), ValueError, "x must have a last dimension D of 2 or 3, got 4"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 17, 3), SK, backend=b), ValueError, "x has 17 joints .* the skeleton has 16"),
    (lambda b: fs.ops.kcs_forward(torch.randn(16), SK, backend=b), ValueError, r"x must have shape \[\.\.\., 16, D\]"),
    (lambda b: fs.ops.kcs_forward(torch.randint(0, 5, (4, 16, 3)), SK, backend=b), TypeError, "x must be a floating-point tensor"),
    (lambda b: fs.ops.kcs_forward([[0.0] * 3] * 16, SK, backend=b), TypeError, "x must be a torch.Tensor"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), "h36m", backend=b), TypeError, "skeleton must be a fastsmall.Skeleton"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), [-1, 0, 9], backend=b), ValueError, r"parents\[2\] = 9 is out of range"),
    (lambda b: fs.ops.bone_decompose(torch.randn(4, 16, 3), SK, eps=-1.0, backend=b), ValueError, "eps must be a float >= 0"),
    (lambda b: fs.ops.bone_decompose(torch.randn(4, 16, 3, dtype=torch.complex64), SK, backend=b), TypeError, "x must be a floating-point"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 16, 3), SK, backend=b), ValueError, "bones has 16 bones .* the skeleton has 15"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(4, 1, 2), backend=b), ValueError, r"root must have shape \[\.\.\., 1, D\]"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(3, 1, 3), backend=b), ValueError, r"root must have shape \[\.\.\., 1, D\]"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(4, 1, 3).double(), backend=b), TypeError, "root has dtype torch.float64 but bones has dtype torch.float32"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), SK, backend=b + "x"), ValueError, "backend must be one of"),
])
def test_wrapper_errors(backend, device, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_cpp_backend_rejects_other_devices():
    x = torch.randn(2, 16, 3, device="meta")
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors, but x is on meta"):
        fs.ops.kcs_forward(x, SK, backend="cpp")


def test_tensors_on_different_devices():
    bones = torch.randn(4, 15, 3)
    root = torch.randn(4, 1, 3, device="meta")
    with pytest.raises(ValueError, match="root is on meta but bones is on cpu"):
        fs.ops.kcs_inverse(bones, SK, root=root)


@pytest.mark.skipif(fs._extension.C is None, reason="checks of the C++ kernels")
@pytest.mark.parametrize("call, message", [
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 16, 5), list(SK.parents)), "x must have a last dimension D of 2 or 3"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 15, 3), list(SK.parents)), "x has 15 joints"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.ones(4, 16, 3, dtype=torch.int32), list(SK.parents)), "x must be a floating-point tensor"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 3, 3), [-1, -1, 0]), "exactly one root"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 3, 3), [-1, 5, 0]), r"parents\[1\] = 5 is out of range"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 4, 3), [-1, 2, 3, 1]), "cycle"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 0, 3), []), "at least one joint"),
    (lambda: torch.ops.fastsmall.bone_decompose(torch.randn(4, 16, 3), list(SK.parents), -0.5), "eps must be >= 0"),
    (lambda: torch.ops.fastsmall.kcs_inverse(torch.randn(4, 15, 3), list(SK.parents), torch.randn(4, 2, 3)), "root must have shape"),
    (lambda: torch.ops.fastsmall.kcs_inverse(torch.randn(4, 15, 3), list(SK.parents), torch.randn(4, 1, 3).double()), "root has dtype"),
    (lambda: torch.ops.fastsmall.bone_decompose_backward(torch.randn(4, 14, 3), None, torch.randn(4, 16, 3), list(SK.parents), 0.0), "grad_unit must have shape"),
    (lambda: torch.ops.fastsmall.kcs_inverse_backward(torch.randn(4, 16, 1), list(SK.parents)), "grad_x must have a last dimension"),
])
def test_cpp_kernel_errors(call, message):
    """Callers of torch.ops.fastsmall.* that skip the wrappers still get errors, never a crash."""
    with pytest.raises(RuntimeError, match=message):
        call()
