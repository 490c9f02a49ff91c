"""PoseAug's augmentor, discriminators, losses and history pool (no data or camera needed)."""
import math

import pytest
import torch

import fastsmall as fs
from fastsmall.methods.poseaug import losses
from fastsmall.methods.poseaug.augmentor import PoseAugmentor, rodrigues
from fastsmall.methods.poseaug.discriminators import PartKCSDiscriminator, Pose2DDiscriminator
from fastsmall.methods.poseaug.pool import HistoryPool
from fastsmall.methods.poseaug.spec import PoseAugSpec, symmetric_groups
from fastsmall.methods.poseaug.data import synthetic

H36M16 = fs.Skeleton.h36m16()


def camera_frame_poses(n, seed, dtype=torch.float64):
    return synthetic.generate(n, seed=seed).poses_3d.to(dtype)


def lengths(poses, sk=H36M16):
    return fs.ops.bone_decompose(poses, sk)[1].squeeze(-1)


@pytest.fixture
def augmented():
    torch.manual_seed(11)
    x = camera_frame_poses(64, 1)
    g = PoseAugmentor().double()
    return x, g(x), g


# ---- the released spec -----------------------------------------------------------------
def test_symmetric_groups_reproduce_released_blr9to15():
    released = [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8]  # column of the 1 in each row of blr9to15
    assert list(symmetric_groups(H36M16)) == released == list(PoseAugSpec.h36m16().length_groups)
    assert PoseAugSpec.for_skeleton(H36M16) == PoseAugSpec.h36m16()


def test_spec_for_other_skeletons_and_bad_specs():
    sk = fs.Skeleton.h36m17()
    spec = PoseAugSpec.for_skeleton(sk)
    spec.validate(sk)
    assert spec.frozen_angle_bones == () and len(spec.feedback_weights) == 17
    with pytest.raises(ValueError, match="length_groups must have one entry per bone"):
        PoseAugSpec.h36m16().validate(sk)


# ---- BA / BL / RT ------------------------------------------------------------------------
def test_ba_keeps_bone_lengths_and_root(augmented):
    x, out, _ = augmented
    torch.testing.assert_close(lengths(out["pose_ba"]), lengths(x))
    torch.testing.assert_close(out["pose_ba"][:, 0], x[:, 0])
    unit_x, _ = fs.ops.bone_decompose(x, H36M16)
    unit_ba, _ = fs.ops.bone_decompose(out["pose_ba"], H36M16)
    cos = (unit_x * unit_ba).sum(-1)
    torch.testing.assert_close(out["ba_diff"], 1 - cos)
    # pelvis->spine and spine->thorax keep their direction; the others move
    assert torch.allclose(out["ba_diff"][:, [6, 7]], torch.zeros(64, 2, dtype=torch.float64), atol=1e-12)
    assert (out["ba_diff"][:, [0, 1, 9, 13]] > 1e-6).all()


def test_bl_scales_lengths_within_limit_keeps_root_and_directions(augmented):
    x, out, g = augmented
    ratio = lengths(out["pose_bl"]) / lengths(x)
    assert (ratio > 0.8).all() and (ratio < 1.2).all() and (ratio - 1).abs().max() > 1e-4
    # symmetric bones share a ratio; the spine->thorax group is frozen
    torch.testing.assert_close(ratio[:, 0], ratio[:, 3])
    torch.testing.assert_close(ratio[:, 10], ratio[:, 13])
    torch.testing.assert_close(ratio[:, 7], torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(ratio, 1 + out["blr"][:, list(g.spec.length_groups)])
    torch.testing.assert_close(out["pose_bl"][:, 0], x[:, 0])
    torch.testing.assert_close(fs.ops.bone_decompose(out["pose_bl"], H36M16)[0],
                               fs.ops.bone_decompose(out["pose_ba"], H36M16)[0])


def test_rt_is_a_proper_rotation_about_the_root_then_a_translation(augmented):
    _, out, _ = augmented
    r, t = out["rt"]
    R = rodrigues(r)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=torch.float64))
    assert (r.norm(dim=-1) <= math.pi * math.sqrt(3)).all() and (t[..., 2] >= 0).all()
    rel_bl = out["pose_bl"] - out["pose_bl"][:, :1]
    torch.testing.assert_close(out["pose_rt"], rel_bl @ R.transpose(1, 2) + t)
    torch.testing.assert_close(lengths(out["pose_rt"]), lengths(out["pose_bl"]))


def test_rodrigues_matches_matrix_exponential_and_is_smooth_at_zero():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(32, 3, generator=g, dtype=torch.float64) * 2
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(32, 3, 3)
    torch.testing.assert_close(rodrigues(r), torch.linalg.matrix_exp(K))
    tiny = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 1e-6).requires_grad_()
    assert torch.autograd.gradcheck(rodrigues, (tiny,))
    assert torch.autograd.gradcheck(rodrigues, (r[:4].clone().requires_grad_(),))
    with pytest.raises(ValueError, match="axis_angle must have shape"):
        rodrigues(torch.randn(3, 4))


def test_fused_and_released_arithmetic_agree_with_gradients():
    x = camera_frame_poses(32, 2).requires_grad_()
    g = PoseAugmentor().double()
    results = []
    for impl in ("fused", "official"):
        g.impl = impl
        torch.manual_seed(5)  # same noise
        out = g(x)
        loss = sum((out[k] * w).sum() for k, w in (("pose_ba", 1.0), ("pose_bl", 0.3), ("pose_rt", 0.7)))
        loss = loss + out["ba_diff"].sum() + out["blr"].square().sum()
        grads = torch.autograd.grad(loss, [x] + list(g.parameters()))
        results.append((out, grads))
    (a, ga), (b, gb) = results
    for key in ("pose_ba", "pose_bl", "pose_rt", "ba_diff", "blr"):
        torch.testing.assert_close(a[key], b[key])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


def test_augmentor_on_another_skeleton_and_bad_input():
    sk = fs.Skeleton.h36m17()
    g = PoseAugmentor(sk).double()
    x = camera_frame_poses(8, 3)
    x17 = torch.cat([x[:, :9], (x[:, 8:9] + x[:, 9:10]) / 2, x[:, 9:]], 1)
    out = g(x17)
    assert out["pose_rt"].shape == (8, 17, 3) and out["blr"].shape == (8, max(g.spec.length_groups) + 1)
    torch.testing.assert_close(lengths(out["pose_ba"], sk), lengths(x17, sk))
    with pytest.raises(ValueError, match=r"poses must have shape \[B, 16, 3\]"):
        PoseAugmentor()(torch.randn(4, 17, 3))
    with pytest.raises(ValueError, match="impl must be one of"):
        PoseAugmentor(impl="fast")


# ---- discriminators ------------------------------------------------------------------------
def test_part_features_are_the_masked_gram_of_unit_bones():
    """The released kcs_layer_* (bones of the unit-bone pose, masked, full Gram) equal the op."""
    from fastsmall.methods.poseaug import official as released

    x = camera_frame_poses(16, 4)
    unit, _ = fs.ops.bone_decompose(x, H36M16)
    gram = fs.ops.part_kcs_gram(unit, H36M16, "masked")
    pose = released.poses_from_bones(released.bone_units(x - x[:, :1], H36M16), H36M16)
    for p, bones in enumerate(H36M16.part_bones):
        manual = torch.zeros(16, 15, 3, dtype=torch.float64)
        manual[:, list(bones)] = unit[:, list(bones)]
        expected = manual @ manual.transpose(1, 2)
        torch.testing.assert_close(gram[:, p].view(16, 15, 15), expected)
        torch.testing.assert_close(released.part_gram(pose, H36M16, p), expected)


def test_3d_discriminator_fused_equals_released_arithmetic_and_loads_released_weights():
    x = camera_frame_poses(24, 5).requires_grad_()
    d = PartKCSDiscriminator().double()
    assert sum(p.numel() for p in d.parameters()) == 1_076_205  # the released Pos3dDiscriminator's size
    outs = []
    for impl in ("fused", "official"):
        d.impl = impl
        s = d(x)
        outs.append((s, torch.autograd.grad((s * s).sum(), [x] + list(d.parameters()))))
    (a, ga), (b, gb) = outs
    assert a.shape == (24, 5)
    torch.testing.assert_close(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)
    released_state = d.released_state_dict()
    assert set(released_state) >= {"kcs_path_1.kcs_layer_1.weight", "kcs_path_5.layer_pred.bias"}
    assert released_state["kcs_path_1.kcs_layer_1.weight"].shape == (256, 225)
    fresh = PartKCSDiscriminator().double()
    fresh.load_released_state_dict(released_state)
    torch.testing.assert_close(fresh(x), a)
    with pytest.raises(KeyError, match="kcs_path_1.kcs_layer_1.weight"):
        fresh.load_released_state_dict({})


def test_discriminators_are_invariant_to_root_and_bone_scale_and_check_shapes():
    x = camera_frame_poses(8, 6)
    d = PartKCSDiscriminator().double()
    # unit bones only: moving the root or scaling the pose does not change the scores
    torch.testing.assert_close(d(x), d((x - x[:, :1]) * 1.7 + 3.0))
    with pytest.raises(ValueError, match=r"poses must have shape \[B, 16, 3\]"):
        d(torch.randn(2, 16, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a skeleton with parts"):
        PartKCSDiscriminator(fs.Skeleton([-1, 0, 1]))
    d2 = Pose2DDiscriminator(16)
    assert d2(torch.randn(5, 16, 2)).shape == (5, 1)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 16, 2\]"):
        d2(torch.randn(5, 32))


# ---- losses -------------------------------------------------------------------------------------
def test_band_and_rectified_losses_by_hand():
    a = torch.tensor([0.0, 0.3, 0.5, 0.1])
    # (a - 0.2)^2 = 0.04, 0.01, 0.09, 0.01; counted only where > 0.15^2 = 0.0225
    assert losses.diff_range_loss(a, 0.2, 0.15).item() == pytest.approx((0.04 + 0.09) / 4)
    blr = torch.tensor([[0.05, -0.15], [0.2, 0.0]])
    assert losses.rectified_l2(blr, 0.1).item() == pytest.approx((0.0225 + 0.04) / 4)
    ba_diff = torch.tensor([[0.1, 0.3], [0.6, 0.8]])  # per-pose means 0.2, 0.7
    reg = losses.augmentation_regularizer(ba_diff, blr, ba_range_m=0.205, ba_range_w=0.165, blr_limit=0.1)
    assert reg.item() == pytest.approx((0.495 ** 2) / 2 + (0.0225 + 0.04) / 4)


def test_lsgan_adversarial_and_feedback_by_hand():
    real, fake = torch.tensor([[0.9], [0.2]]), torch.tensor([[0.4], [0.1]])
    assert losses.generator_adversarial(real, fake).item() == pytest.approx(
        0.5 * ((0.81 + 0.04) / 2 + (0.36 + 0.81) / 2))
    assert losses.discriminator_loss(real, fake).item() == pytest.approx(
        0.5 * ((0.01 + 0.64) / 2 + (0.16 + 0.01) / 2))
    harder, easier = torch.tensor([[0.3, 0.9]]), torch.tensor([[0.1, 0.1]])  # ratios 3, 9
    assert losses.hardness_band(harder, easier, target_mean=4.0, target_std=2.0).item() == pytest.approx(25 / 2)
    assert losses.paper_feedback(harder, easier, 2.0).item() == pytest.approx(
        (abs(1 - math.exp(0.1)) + abs(1 - math.exp(0.7))) / 2)
    assert losses.scheduled(3, 5, 10, 50) == pytest.approx(3.4)


def test_group_errors_follow_the_released_weights_and_groups():
    g = torch.Generator().manual_seed(8)
    target = torch.randn(4, 16, 3, generator=g, dtype=torch.float64)
    pred = torch.randn(4, 16, 3, generator=g, dtype=torch.float64)
    err = losses.group_errors(pred, target, PoseAugSpec.h36m16())
    w = torch.tensor([1, 5, 2, 1, 5, 2, 1, 1, 1, 1, 5, 2, 1, 5, 2, 1], dtype=torch.float64)
    e = (pred - (target - target[:, :1])).norm(dim=-1) * w
    expected = torch.stack([e[:, [1, 4, 10, 13]].mean(1), e[:, [2, 5, 9, 11, 14]].mean(1),
                            e[:, [3, 6, 12, 15]].mean(1)], 1)
    torch.testing.assert_close(err, expected)


# ---- history pool ------------------------------------------------------------------------------
def _sequential_pool(items, count, capacity, fakes, swap, slots):
    """The released Sample_from_Pool loop, fed the same random draws."""
    items, out, k = items.clone(), [], 0
    for f in fakes:
        if count < capacity:
            items[count] = f
            count += 1
            out.append(f)
            continue
        if swap[k]:
            out.append(items[slots[k]].clone())
            items[slots[k]] = f
        else:
            out.append(f)
        k += 1
    return torch.stack(out), items


@pytest.mark.parametrize("capacity,batch", [(8, 5), (16, 40), (3, 3)])
def test_pool_matches_the_released_sequential_semantics(capacity, batch):
    pool = HistoryPool(capacity)
    for step in range(6):
        fakes = torch.randn(batch, 4, 2)
        before = pool.items.clone() if pool.items is not None else torch.zeros(capacity, 4, 2)
        count = pool.count
        out = pool(fakes, torch.Generator().manual_seed(step))
        rest = batch - min(capacity - count, batch)
        g = torch.Generator().manual_seed(step)
        swap = (torch.rand(rest, generator=g) > 0.5).tolist() if rest else []
        slots = torch.randint(0, capacity, (rest,), generator=g).tolist() if rest else []
        expected_out, expected_items = _sequential_pool(before, count, capacity, fakes, swap, slots)
        torch.testing.assert_close(out, expected_out)
        torch.testing.assert_close(pool.items, expected_items)


def test_pool_state_round_trip_and_edge_cases():
    pool = HistoryPool(6)
    pool(torch.randn(9, 3), torch.Generator().manual_seed(0))
    clone = HistoryPool(1)
    clone.load_state_dict(pool.state_dict())
    fakes = torch.randn(5, 3)
    torch.testing.assert_close(pool(fakes, torch.Generator().manual_seed(1)),
                               clone(fakes, torch.Generator().manual_seed(1)))
    assert torch.equal(HistoryPool(0)(fakes), fakes)
    with pytest.raises(ValueError, match=r"fakes must have shape \[B, 3\]"):
        pool(torch.randn(2, 4))
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        HistoryPool(-1)
