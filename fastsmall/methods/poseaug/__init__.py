"""PoseAug (Gong et al., CVPR 2021): a differentiable, learnable pose augmentor trained
jointly with a 3D pose estimator, as the released code trains it.

>>> from fastsmall.methods import poseaug
>>> summary = poseaug.train(poseaug.Config(data="synthetic", estimator="videopose", out="runs/poseaug"))

Building blocks, usable on their own:

* ``PoseAugmentor`` (BA / BL / RT heads), ``rodrigues``, ``PoseAugSpec`` (skeleton-specific choices);
* ``PartKCSDiscriminator`` (3D, part-aware KCS) and ``Pose2DDiscriminator``; ``HistoryPool``;
* ``losses`` (LS-GAN, BA band, BL rectified L2, released and paper feedback losses);
* ``build_estimator`` (SimpleBaseline, VideoPose3D single-frame, SemGCN, ST-GCN single-frame);
* ``metrics`` (MPJPE, P-MPJPE, PCK, AUC, test-time flip, ``evaluate``);
* ``camera`` (VideoPose3D projection with distortion) and ``data`` (synthetic body, H36M,
  3DHP, BVH loaders, all returning a ``PoseSet``).
"""
from . import camera, data, losses, metrics
from .augmentor import PoseAugmentor, rodrigues
from .config import Config
from .discriminators import PartKCSDiscriminator, Pose2DDiscriminator
from .estimators import ESTIMATORS, STGCN, SemGCN, SimpleBaseline, VideoPose3D, build_estimator
from .gan import AugmentationGAN
from .metrics import auc, evaluate, mpjpe, p_mpjpe, pck
from .pool import HistoryPool
from .spec import PoseAugSpec
from .train import train

__all__ = ["PoseAugmentor", "rodrigues", "Config", "PartKCSDiscriminator", "Pose2DDiscriminator", "ESTIMATORS",
           "SemGCN", "SimpleBaseline", "STGCN", "VideoPose3D", "build_estimator", "AugmentationGAN", "auc", "evaluate",
           "mpjpe", "p_mpjpe", "pck", "HistoryPool", "PoseAugSpec", "train", "camera", "data", "losses", "metrics"]
