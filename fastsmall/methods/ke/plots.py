"""Plots of Knowledge Evolution runs (PNG): one run's plots/, and the experiment's comparison."""
from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ..common.plotting import integer_xaxis  # noqa: E402


def plot_run(records: list[dict], metrics: list[dict], method: str, run, xlabel: str | None = None,
             phases: list[str] | None = None) -> None:
    """Test accuracy per generation and the training loss per epoch. ``phases``: names for the
    generations (DSD: dense, sparse, re-dense), used as tick labels, line label and file names."""
    gens = [r["generation"] for r in records]
    unit = "phase" if phases else "generation"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(gens, [r["test_accuracy"] for r in records], marker="o",
            label=f"{method}: test accuracy" if phases else f"{method}: dense")
    if any(r.get("slim_test_accuracy") is not None for r in records):
        ax.plot(gens, [r["slim_test_accuracy"] for r in records], marker="s", ls="--", label=f"{method}: slim")
    ax.set_xlabel(xlabel or ("generation" if method != "long" else "epochs / E (one schedule)"))
    integer_xaxis(ax)
    ax.set_xticks(gens)
    if phases:
        ax.set_xticklabels([phases[g - 1] if 0 < g <= len(phases) else str(g) for g in gens])
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.plot_path(f"accuracy_by_{unit}.png"), dpi=110)
    plt.close(fig)

    epochs = [m for m in metrics if m["type"] == "epoch"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot(range(1, len(epochs) + 1), [m["loss"] for m in epochs], lw=1)
    per_gen = max((m["epoch"] for m in epochs), default=0) + 1
    for g in gens[:-1]:
        ax.axvline(g * per_gen + 0.5, color="gray", lw=0.5, ls=":")
    ax.set_xlabel(f"epoch (dotted: {unit} boundaries)")
    integer_xaxis(ax)
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run.plot_path("training_loss.png"), dpi=110)
    plt.close(fig)


def plot_comparison(panels: dict[str, dict[str, list[list[float]]]], path, title: str) -> None:
    """One axis per panel; ``panels[panel][label]`` = per-generation values, one list per seed;
    mean +- std bands."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for label, runs in curves.items():
            n = min(len(r) for r in runs)
            gens = list(range(1, n + 1))
            mean = [statistics.mean(r[i] for r in runs) for i in range(n)]
            std = [statistics.stdev([r[i] for r in runs]) if len(runs) > 1 else 0.0 for i in range(n)]
            line, = ax.plot(gens, mean, marker="o", ms=3, label=label)
            ax.fill_between(gens, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.12)
        ax.set_xlabel("generation g (compute: g x E epochs)")
        integer_xaxis(ax)
        ax.set_ylabel("test accuracy")
        ax.set_title(panel, fontsize=10)
        ax.set_xticks(gens)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
