"""Plots of a CReST run (PNG in the run directory's plots/)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ..common.plotting import integer_xaxis  # noqa: E402


def _by_rank_panel(ax, curves, order, ylabel: str, bounded: bool = True) -> None:
    """One line per (label, per-class values) of ``curves``, classes in ``order`` (rank 1 first)."""
    for label, values in curves:
        ax.plot(range(1, len(order) + 1), [values[c] if values[c] is not None else float("nan") for c in order],
                marker="o", label=label)
    ax.set_xlabel("class rank (1 = most labelled)")
    integer_xaxis(ax)
    ax.set_ylabel(ylabel)
    if bounded:
        ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)


def plot_generations(records: list[dict], class_rank, run) -> None:
    ranks = [int(r) for r in class_rank]
    order = sorted(range(len(ranks)), key=lambda c: ranks[c])  # most frequent class first
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in zip(("recall", "precision"), axes):
        _by_rank_panel(ax, [(f"gen {r['generation']}", r["test"][key]) for r in records], order, f"test {key}")
    axes[0].legend(fontsize=8)
    fig.suptitle("Per-class test recall and precision by generation")
    fig.tight_layout()
    fig.savefig(run.plot_path("per_class_by_generation.png"), dpi=110)
    plt.close(fig)

    tail = order[-3:]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    gens = [r["generation"] for r in records]
    for c in tail:
        ax.plot(gens, [r["test"]["recall"][c] for r in records], marker="o", label=f"class {c} (rank {ranks[c]})")
    ax.set_xlabel("generation")
    integer_xaxis(ax)
    ax.set_ylabel("test recall")
    ax.set_title("Recall of the 3 rarest classes")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.plot_path("tail_recall.png"), dpi=110)
    plt.close(fig)

    plot_pseudo_labels([r for r in records if "pseudo_labels" in r], order, run)


def plot_pseudo_labels(records: list[dict], order: list[int], run) -> None:
    """The pseudo-labels each generation added, by class rank: their precision, the share of each
    class's unlabelled images they cover (recall), and how many there are (the rebalancing)."""
    if not records:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, ax in zip(("precision", "recall", "count"), axes):
        _by_rank_panel(ax, [(f"after gen {r['generation']}", r["pseudo_labels"][key]) for r in records], order,
                       "pseudo-labels added" if key == "count" else f"pseudo-label {key}", bounded=key != "count")
    axes[0].legend(fontsize=8)
    fig.suptitle("Pseudo-labels added per generation, by class rank")
    fig.tight_layout()
    fig.savefig(run.plot_path("pseudo_labels.png"), dpi=110)
    plt.close(fig)
