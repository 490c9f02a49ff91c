"""PoseAug plots: error curves per evaluation set, and what the augmentor does to poses."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from ..common.plotting import integer_xaxis  # noqa: E402


def plot_curves(records: list[dict], path) -> None:
    """MPJPE and P-MPJPE per epoch for every evaluation set (stage 0 and PoseAug epochs in order)."""
    epochs = [r for r in records if r["type"] == "epoch"]
    if not epochs:
        return
    names = list(epochs[0]["eval"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(1, len(epochs) + 1)
    for ax, metric, label in ((axes[0], "mpjpe", "MPJPE (mm)"), (axes[1], "p_mpjpe", "P-MPJPE (mm)")):
        for name in names:
            ax.plot(x, [r["eval"][name][metric] for r in epochs], marker="o", ms=3, label=name)
        boundary = sum(1 for r in epochs if r["stage"] == "baseline")
        if 0 < boundary < len(epochs):
            ax.axvline(boundary + 0.5, color="grey", ls="--", lw=1)
            ax.text(boundary + 0.6, ax.get_ylim()[1], "PoseAug", va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        integer_xaxis(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_augmentor(records: list[dict], path) -> None:
    """Has the augmentor learned? Per PoseAug epoch (``diagnostics.py``): the kept fraction, the
    augmented root depth against the real one, view changes and bone changes, and the
    discriminators' accuracies on real and fake."""
    epochs = [r for r in records if r["type"] == "epoch" and r.get("aug_depth_q50") is not None]
    if not epochs:
        return
    x = [r["epoch"] + 1 for r in epochs]
    get = lambda key: [r.get(key) for r in epochs]  # noqa: E731
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    ax = axes[0]
    ax.plot(x, get("aug_kept_fraction"), marker="o", ms=3, color="tab:green")
    ax.set_ylim(0, 1.02)
    ax.set_title("kept by the image filter")
    ax.set_ylabel("fraction of augmented poses")
    ax = axes[1]
    ax.fill_between(x, get("real_depth_q10"), get("real_depth_q90"), color="grey", alpha=0.25, label="real q10-q90")
    ax.plot(x, get("real_depth_q50"), color="grey", ls="--", label="real median")
    ax.fill_between(x, get("aug_depth_q10"), get("aug_depth_q90"), color="tab:red", alpha=0.2,
                    label="augmented q10-q90")
    ax.plot(x, get("aug_depth_q50"), color="tab:red", marker="o", ms=3, label="augmented median")
    ax.set_title("root depth t_z")
    ax.set_ylabel("metres")
    ax.legend(fontsize=7)
    ax = axes[2]
    for key, label in (("aug_yaw_change_q50", "yaw change, median"), ("aug_yaw_change_q90", "yaw change, q90"),
                       ("aug_rotation_q50", "RT rotation angle, median"), ("ba_angle_deg", "bone-angle change, mean")):
        if any(v is not None for v in get(key)):  # (the random-view control has no bone changes)
            ax.plot(x, get(key), marker="o", ms=3, label=label)
    ax.set_title("view and bone changes")
    ax.set_ylabel("degrees")
    ax.legend(fontsize=7)
    ax = axes[3]
    for key, label, style in (("d_3d_real_acc", "3D D, real", "-"), ("d_3d_fake_acc", "3D D, fake", "--"),
                              ("d_2d_real_acc", "2D D, real", "-"), ("d_2d_fake_acc", "2D D, fake", "--")):
        if any(v is not None for v in get(key)):
            ax.plot(x, get(key), ls=style, marker="o", ms=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("discriminator accuracy" if ax.lines else "discriminator accuracy (no GAN)")
    if ax.lines:
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("PoseAug epoch")
        integer_xaxis(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw(ax, pose: torch.Tensor, parents, color: str, label: str | None = None, view: str = "camera") -> None:
    """One skeleton: ``view="camera"`` draws x against -y (camera frame: x right, y down, as the
    camera sees it); ``"3d"`` draws (x, z, -y) on a 3D axis (depth into the page)."""
    p = pose.detach().float().cpu()
    for j, parent in enumerate(parents):
        if parent >= 0:
            kw = dict(color=color, lw=1.5, label=label if j == 1 else None)
            if view == "3d":
                ax.plot([p[j, 0], p[parent, 0]], [p[j, 2], p[parent, 2]], [-p[j, 1], -p[parent, 1]], **kw)
            else:
                ax.plot([p[j, 0], p[parent, 0]], [-p[j, 1], -p[parent, 1]], **kw)


def plot_augmentations(out: dict, skeleton, path, count: int = 4) -> None:
    """Each of a few source poses of the last batch beside its BA, BL and RT augmentations: one row
    per pose, for each stage the camera view (root-centred) and a 3D view (root-centred)."""
    stages = [("source", "source", "black"), ("pose_ba", "BA", "tab:blue"), ("pose_bl", "BL", "tab:orange"),
              ("pose_rt", "RT", "tab:red")]
    stages = [s for s in stages if s[0] in out]  # (the random-view control has no BA / BL)
    count = min(count, out["pose_rt"].shape[0])
    cols = 2 * len(stages)
    fig = plt.figure(figsize=(2.1 * cols, 2.3 * count))
    for i in range(count):
        for k, (key, label, color) in enumerate(stages):
            pose = out[key][i]
            pose = pose - pose[skeleton.root]
            ax = fig.add_subplot(count, cols, i * cols + 2 * k + 1)
            _draw(ax, pose, skeleton.parents, color)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax3 = fig.add_subplot(count, cols, i * cols + 2 * k + 2, projection="3d")
            _draw(ax3, pose, skeleton.parents, color, view="3d")
            half = float(pose.detach().abs().max()) or 1.0  # equal axes: shapes are not stretched
            ax3.set(xlim=(-half, half), ylim=(-half, half), zlim=(-half, half))
            ax3.set_box_aspect((1, 1, 1))
            ax3.set_xticks([])
            ax3.set_yticks([])
            ax3.set_zticks([])
            if i == 0:
                ax.set_title(f"{label}: camera", fontsize=8)
                ax3.set_title(f"{label}: 3D", fontsize=8)
    fig.suptitle("source poses and their augmentations (root-centred)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
