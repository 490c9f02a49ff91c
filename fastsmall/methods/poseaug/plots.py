"""PoseAug plots: error curves per evaluation set, and what the augmentor does to poses."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


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
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw(ax, pose: torch.Tensor, parents, color: str, label: str | None = None) -> None:
    # camera frame: x right, y down, z forward -> draw x against -y, seen from the camera
    p = pose.detach().cpu()
    for j, parent in enumerate(parents):
        if parent >= 0:
            ax.plot([p[j, 0], p[parent, 0]], [-p[j, 1], -p[parent, 1]], color=color, lw=1.5,
                    label=label if j == 1 else None)


def plot_augmentations(out: dict, skeleton, path, count: int = 4) -> None:
    """A few poses after BA, BL and RT (root-centred, front view) from the last batch."""
    stages = [("pose_ba", "BA", "tab:blue"), ("pose_bl", "BL", "tab:orange"), ("pose_rt", "RT", "tab:red")]
    count = min(count, out["pose_ba"].shape[0])
    fig, axes = plt.subplots(1, count, figsize=(3 * count, 3.2), squeeze=False)
    for i in range(count):
        ax = axes[0, i]
        for key, label, color in stages:
            pose = out[key][i]
            _draw(ax, pose - pose[skeleton.root], skeleton.parents, color, label)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("augmented poses (root-centred, camera view)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
