"""PoseAug configuration. Defaults are the released code's (``function_poseaug/config.py``)
except the data size and epoch count, which fit the embedded synthetic data on a CPU."""
from __future__ import annotations

from dataclasses import dataclass

from ..common.config import (ConfigError, device_option, dist_timeout_option, fit_soft_default, impl_option,
                             keep_option, list_option, option, quiet_option, tensorboard_option, resume_option,
                             seeds_option, soft_default)
from ..common.speed import compile_option, precision_option
from .data.h36m import KEYPOINT_NAME
from .losses import FEEDBACKS

ESTIMATOR_NAMES = ["videopose", "simple_baseline", "semgcn", "stgcn"]
DATA_SOURCES = ["synthetic", "h36m", "bvh"]


@dataclass
class Config:
    # ---- data ---------------------------------------------------------------------------
    data: str = option("synthetic", "training data: generated poses, VideoPose3D H36M npz files, BVH motion capture",
                       choices=DATA_SOURCES)
    data_dir: str | None = option(None, "h36m: folder with data_3d_h36m.npz (+ data_2d_h36m_gt.npz, cameras.json); "
                                        "bvh: a .bvh file or a folder of them")
    cameras: str | None = option(None, "h36m: cameras.json (default: data_dir/cameras.json)")
    keypoints: str = option("gt", "h36m: the estimator's real 2D input, data_2d_h36m_<keypoints>.npz: gt, or detections "
                                  "(cpn_ft_h36m_dbb, detectron_ft_h36m, hr, ...); the augmentor projects the 3D poses")
    subset: str = option("broad", "synthetic training poses: 'narrow' (standing/walking, facing the camera) or 'broad'",
                         choices=["narrow", "broad"])
    train_size: int = option(20000, "synthetic: number of training poses", min=16)
    test_size: int = option(4000, "synthetic: number of test poses (the held-out broad set)", min=16)
    skeleton_map: str = option("cmu31-to-h36m16", "bvh: joint map to h36m16", choices=["cmu31-to-h36m16"])
    stride: int = option(1, "h36m / bvh: keep every stride-th frame", min=1)
    eval: list[str] = list_option([], "extra evaluation sets, 'kind:path' with kind in synthetic-broad, synthetic-narrow, "
                                      "h36m, 3dhp, bvh (e.g. 3dhp:/data/test_3dhp.npz bvh:/data/cmu); 3dhp uses flip")
    bl_templates: str | None = option(None, "bone-length templates .npy [S, NB] for the per-epoch bone-length swap "
                                            "(default: bone lengths of random training poses)")
    # ---- estimator ----------------------------------------------------------------------
    estimator: str = option("videopose", "3D pose estimator", choices=ESTIMATOR_NAMES)
    estimator_width: int | None = option(None, "estimator width (SimpleBaseline linear size, VideoPose3D channels, "
                                               "SemGCN hidden dim, ST-GCN widest joint-graph channels); "
                                               "default: the released size", min=8)
    pretrained: str | None = option(None, "estimator weights from `fastsmall poseaug-baseline` (its checkpoints/estimator.pt)")
    baseline_epochs: int = option(4, "without --pretrained: epochs of plain estimator training on real data first "
                                     "(stage 0, part of the run)", min=0)
    lr_p: float = option(1e-3, "estimator Adam learning rate (released: 1e-3 for stage 0, 1e-4 with PoseAug)", min=0.0)
    lr_p_poseaug: float = option(1e-4, "estimator learning rate during PoseAug epochs", min=0.0)
    stage0_schedule: str = option("linear", "stage-0 estimator learning rate: 'linear' decay over the stage-0 epochs, "
                                            "or 'step', the released x0.96 every 100k estimator steps",
                                  choices=["linear", "step"])
    # ---- PoseAug ------------------------------------------------------------------------
    epochs: int = option(10, "PoseAug epochs (released: 50)", min=1)
    warmup: int = option(soft_default(2), "epochs that train only the augmentor and discriminators (estimator and "
                                          "feedback from epoch warmup + 1, as released; when not given and "
                                          "augmenting for 2 epochs or fewer: epochs - 1); see warmup_iters", min=0)
    warmup_iters: int | None = option(None, "G iterations before the feedback loss starts and the estimator trains "
                                            "on augmented poses (released: ~3,000, its 2 epochs of ~1,500); default: "
                                            "warmup epochs' worth of G iterations", min=0)
    gan_iters_per_epoch: int | None = option(None, "G iterations per PoseAug epoch, cycling through fresh permutations "
                                                   "of the training set (released: ~1,500); default: gan_passes passes",
                                             min=1)
    batch_size: int = option(1024, "batch size of every stage", min=2)
    gan_passes: int = option(1, "passes over the training set per epoch for the augmentor and discriminators "
                                "(released: 1 pass over H36M's 1.5M poses, ~1,500 iterations; small sets need more); "
                                "the estimator trains on the last pass's augmented poses", min=1)
    df: int = option(2, "train the discriminators every df-th iteration", min=1)
    lr_g: float = option(1e-4, "augmentor Adam learning rate", min=0.0)
    lr_d: float = option(1e-4, "discriminator Adam learning rate", min=0.0)
    max_norm: float = option(1.0, "gradient-norm clip of every model (0: off)", min=0.0)
    pool_size: int = option(4096, "history pool of fakes for the discriminators", min=0)
    noise: int = option(48, "noise channels per augmentation head", min=0)
    blr_tanhlimit: float = option(0.2, "bone-length ratio limit (tanh scale)", min=0.0)
    blr_limit: float = option(0.1, "BL rectified-L2 threshold", min=0.0)
    ba_range_m: float = option(0.205, "BA band centre of mean(1 - cos)", min=0.0)
    ba_range_w: float = option(0.165, "BA band half-width", min=0.0)
    gloss_d2d: float = option(1.0, "generator weight of the 2D adversarial loss", min=0.0)
    gloss_d3d: float = option(6.0, "generator weight of the 3D adversarial loss", min=0.0)
    gloss_diff: float = option(3.0, "generator weight of the BA/BL regularisers", min=0.0)
    feedback: str = option("released", "feedback loss: released hardness band or the paper's |1 - exp(L' - beta L)|",
                           choices=list(FEEDBACKS))
    beta: float = option(1.5, "paper feedback: beta", min=0.0)
    hardratio_ba_s: float = option(3.0, "BA hardness target at the first epoch", min=0.0)
    hardratio_ba: float = option(5.0, "BA hardness target at the last epoch", min=0.0)
    hardratio_std_ba: float = option(2.0, "BA hardness band half-width", min=0.0)
    hardratio_rt_s: float = option(17.0, "RT hardness target at the first epoch", min=0.0)
    hardratio_rt: float = option(17.0, "RT hardness target at the last epoch", min=0.0)
    hardratio_std_rt: float = option(15.0, "RT hardness band half-width", min=0.0)
    gloss_feedback_ba: float = option(0.1, "weight of the BA feedback loss", min=0.0)
    gloss_feedback_rt: float = option(0.01, "weight of the RT feedback loss", min=0.0)
    augment: bool = option(True, "--no-augment: train the estimator on real data only for the same epochs (the baseline)")
    augmentor: str = option("learned", "what augments: the 'learned' PoseAug augmentor; controls: 'frozen' (its random "
                                       "initialisation, learning rate 0: random augmentation through the same heads), "
                                       "'random-view' (a random turn about the vertical axis and a random root depth "
                                       "in the real range, no GAN)", choices=["learned", "frozen", "random-view"])
    # ---- run ----------------------------------------------------------------------------
    impl: str = impl_option("bones / part features (poseaug/official.py: constant-matrix arithmetic)")
    compile: bool = compile_option()
    precision: str = precision_option()
    seed: int = option(0, "seed (data, initialisation, noise)")
    seeds: list[int] = seeds_option("one after another in this process (stacking PoseAug's wide layers is "
                                    "slower on a CPU: bench/bench_seeds.py)")
    device: str = device_option()
    out: str = option("runs/poseaug", "run directory")
    keep: int = keep_option()
    dist_timeout: float = dist_timeout_option()
    resume: bool = resume_option()
    quiet: bool = quiet_option()
    tensorboard: bool = tensorboard_option()

    def validate(self):
        if self.data != "synthetic" and not self.data_dir:
            raise ConfigError(f"data_dir must be set for data {self.data!r}", fields=("data_dir", "data"))
        if self.augment and self.warmup_iters is None:  # (only where a long warm-up is an error: see warmup)
            fit_soft_default(self, "warmup", self.epochs - 1,
                             f"must be < epochs ({self.epochs}): the estimator trains only after the warm-up")
            if self.warmup >= self.epochs:
                raise ConfigError(f"warmup ({self.warmup}) must be < epochs ({self.epochs}): the estimator trains "
                                  f"only after the warm-up", fields=("warmup", "epochs"))
        if not KEYPOINT_NAME.match(self.keypoints):
            raise ConfigError(f"keypoints must be the NAME of a data_2d_h36m_NAME.npz file (letters, digits, '_'), "
                              f"got {self.keypoints!r}", field="keypoints")
        kinds = ("synthetic-broad", "synthetic-narrow", "h36m", "3dhp", "bvh")
        for spec in self.eval:
            kind = spec.split(":", 1)[0]
            if kind not in kinds:
                raise ConfigError(f"eval entry {spec!r}: kind must be one of {list(kinds)}", field="eval")
            if not kind.startswith("synthetic") and ":" not in spec:
                raise ConfigError(f"eval entry {spec!r}: needs a path, as '{kind}:/path'", field="eval")
