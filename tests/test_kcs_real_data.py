"""The KCS ops on real Human3.6M frames from ../shared/data/h36m."""
import numpy as np
import pytest
import torch

import fastsmall as fs
from conftest import SHARED_DATA, available_backends

H36M = SHARED_DATA / "h36m"
pytestmark = pytest.mark.skipif(not (H36M / "test_h36m_body3d.npz").exists(),
                                reason=f"real data folder {H36M} is absent")
BACKENDS = available_backends()


def h36m16_frames():
    data = np.load(H36M / "test_h36m_body3d.npz")
    joints17 = data["S"][..., :3]  # camera frame, metres (4th column is confidence)
    return list(data["imgname"]), torch.tensor(np.delete(joints17, 9, axis=1), dtype=torch.float64)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_inverse_of_forward_on_real_frames(backend, device):
    _, x = h36m16_frames()
    x = x.to(device)
    sk = fs.Skeleton.h36m16()
    bones = fs.ops.kcs_forward(x, sk, backend=backend)
    torch.testing.assert_close(fs.ops.kcs_inverse(bones, sk, backend=backend), x - x[:, :1])
    unit, length = fs.ops.bone_decompose(x, sk, backend=backend)
    torch.testing.assert_close(fs.ops.kcs_inverse(unit * length, sk, root=x[:, :1], backend=backend), x)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_s1_bone_lengths_match_poseaug_templates(backend, device):
    names, x = h36m16_frames()
    s1 = [i for i, n in enumerate(names) if n.startswith("S1/")]
    assert s1, "the fixture holds an S1 frame"
    templates = np.load(H36M / "poseaug_bone_length_templates_S1_S5_S6_S7_S8.npy")  # (5, 15) metres, row 0 = S1
    sk = fs.Skeleton.h36m16()
    _, length = fs.ops.bone_decompose(x[s1].to(device), sk, backend=backend)
    err_mm = (length[0, :, 0].cpu().numpy() - templates[0]) * 1000
    head = sk.bone_names.index("Head")
    others = np.delete(np.abs(err_mm), head)
    assert others.max() < 1.0, f"bone length errors (mm): {err_mm.round(3)}"
    # the head bone differs by about 1 cm between the frame and PoseAug's template
    assert 5.0 < abs(err_mm[head]) < 15.0, f"head bone error {err_mm[head]:.2f} mm"
