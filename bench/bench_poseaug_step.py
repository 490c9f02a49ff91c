"""One PoseAug G+D iteration at batch 1,024, ``--impl fused`` vs ``--impl official``.

    python -m pytest bench/bench_poseaug_step.py --benchmark-json=bench/results/poseaug_step.json

``official`` is the released code's arithmetic (constant-matrix bones, bone vectors
recomputed from every intermediate pose, five full masked Grams feeding five separate
KCS-path MLPs); ``fused`` is fastsmall's (``bone_decompose`` once, ``kcs_inverse`` with the
root, one compact ``part_kcs_gram`` feeding trimmed first layers). Both train the
same function with the same parameters (tests/test_poseaug_augmentor.py).

Cases:
* the whole iteration (augmentor step with adversarial, regulariser and feedback losses,
  then both discriminator steps from the pools), with the released estimators and with a
  negligible one (``tiny``: PoseAug's own cost);
* its parts: augmentor forward+backward, 3D discriminator forward+backward;
* the ops the fused path replaces, also against the ``torch.compile``d released arithmetic.
"""
import warnings

import pytest
import torch

from conftest import compile_and_time, measure
from fastsmall import ops
from fastsmall.methods.poseaug import official
from fastsmall.methods.poseaug.camera import project_to_2d
from fastsmall.methods.poseaug.config import Config
from fastsmall.methods.poseaug.data import synthetic
from fastsmall.methods.poseaug.discriminators import PartKCSDiscriminator
from fastsmall.methods.poseaug.estimators import build_estimator
from fastsmall.methods.poseaug.gan import AugmentationGAN
from fastsmall.skeleton import Skeleton

B = 1024
SK = Skeleton.h36m16()
ROUNDS = dict(rounds=25, iterations=1, warmup_rounds=3)
IMPL_NAME = {"official": "eager", "fused": "fastsmall"}


@pytest.fixture(scope="module")
def batch():
    poses = synthetic.generate(B, subset="broad", seed=0)
    return poses.poses_3d, poses.poses_2d, poses.cams


def _estimator(name):
    if name == "tiny":
        return build_estimator("simple_baseline", SK, linear_size=8)
    return build_estimator(name, SK)


@pytest.mark.parametrize("impl", ["official", "fused"])
@pytest.mark.parametrize("estimator", ["tiny", "simple_baseline", "videopose"])
def bench_poseaug_iteration(benchmark, batch, impl, estimator):
    torch.manual_seed(0)
    x3d, x2d, cams = batch
    gan = AugmentationGAN(Config(impl=impl), SK, torch.device("cpu"))
    model = _estimator(estimator).train()

    def iteration():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, rt_2d, _ = gan.generator_step(x3d, cams, model, epoch=5)
        gan.discriminator_step(x3d, x2d, out["pose_ba"], rt_2d)

    measure(benchmark, iteration, family="poseaug", op=f"G+D iteration ({estimator} estimator)",
            mode="train step", batch=B, impl=IMPL_NAME[impl], bytes_moved=0, rounds=ROUNDS)


@pytest.mark.parametrize("impl", ["official", "fused"])
def bench_augmentor(benchmark, batch, impl):
    torch.manual_seed(0)
    x3d, _, cams = batch
    gan = AugmentationGAN(Config(impl=impl), SK, torch.device("cpu"))

    def step():
        out = gan.generator(x3d)
        loss = sum(project_to_2d(out[k], cams).square().mean() for k in ("pose_ba", "pose_rt"))
        loss = loss + out["ba_diff"].mean() + out["blr"].square().mean()
        loss.backward()

    measure(benchmark, step, family="poseaug", op="augmentor", mode="forward+backward", batch=B,
            impl=IMPL_NAME[impl], bytes_moved=0, rounds=ROUNDS)


@pytest.mark.parametrize("impl", ["official", "fused"])
def bench_3d_discriminator(benchmark, batch, impl):
    torch.manual_seed(0)
    x3d = batch[0].clone().requires_grad_()
    disc = PartKCSDiscriminator(SK, impl=impl)

    def step():
        disc(x3d).square().mean().backward()

    measure(benchmark, step, family="poseaug", op="3D discriminator", mode="forward+backward", batch=B,
            impl=IMPL_NAME[impl], bytes_moved=0, rounds=ROUNDS)


# ---- the ops the fused path replaces -------------------------------------------------------------
def _released_features(x):
    rel = x - x[:, :1]
    pose = official.poses_from_bones(official.bone_units(rel, SK), SK)
    return torch.stack([official.part_gram(pose, SK, p).flatten(1) for p in range(len(SK.parts))], 1)


def _fused_features(x):
    unit, _ = ops.bone_decompose(x, SK)
    return ops.part_kcs_gram(unit, SK, "compact")


def _released_ba_round_trip(x):
    """BA's bone work: unit vectors and lengths of the input, pose from (modified) bones + root."""
    rel = x - x[:, :1]
    unit, length = official.bone_units(rel, SK), official.bone_lengths(rel, SK)
    return official.poses_from_bones(unit * length, SK) + x[:, :1]


def _fused_ba_round_trip(x):
    unit, length = ops.bone_decompose(x, SK)
    return ops.kcs_inverse(unit * length, SK, x[:, :1])


OPS = {"part features": (_released_features, _fused_features),
       "bones round trip": (_released_ba_round_trip, _fused_ba_round_trip)}


@pytest.mark.parametrize("impl", ["eager", "compiled", "fastsmall"])
@pytest.mark.parametrize("op", list(OPS))
def bench_poseaug_ops(benchmark, batch, op, impl):
    x = batch[0].clone().requires_grad_()
    reference_fn, fused_fn = OPS[op]
    fn = fused_fn if impl == "fastsmall" else reference_fn

    def step():
        return torch.autograd.grad(fn(x).square().sum(), x)

    compile_s = None
    if impl == "compiled":
        step, compile_s = compile_and_time(step)
    measure(benchmark, step, family="poseaug", op=op, mode="forward+backward", batch=B, impl=impl,
            bytes_moved=0, compile_s=compile_s, rounds=dict(rounds=30, iterations=5, warmup_rounds=3))
