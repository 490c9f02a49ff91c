"""What a many-seed run (``--seeds S1 S2 ...``) reports over its seeds: ``out/summary.json`` with
mean, standard deviation and a 95 % interval of every scalar metric, and a plot with one line
per seed. Each seed's own results are in ``out/seed-S/`` exactly as a single-seed run writes them.
"""
from __future__ import annotations

import math
import statistics

from scipy import stats

from .plotting import integer_xaxis

__all__ = ["seed_dir_name", "aggregate", "seeds_report", "plot_seeds"]


def seed_dir_name(seed: int) -> str:
    return f"seed-{seed}"


def _interval(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n, "values": values}
    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)  # Student's t: few seeds
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n, "values": values}


def aggregate(method: str, summaries: dict[int, dict], settings=()) -> dict:
    """Mean, std and 95 % interval over seeds of every top-level numeric entry the seeds share;
    the entries named in ``settings`` (the run's configuration, the same for every seed) are
    reported once instead."""
    seeds = list(summaries)
    first = summaries[seeds[0]]
    metrics = {}
    for key, value in first.items():
        if key in settings or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = [summaries[s].get(key) for s in seeds]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            metrics[key] = _interval([float(v) for v in values])
    return {"method": method, "seeds": seeds, "settings": {k: first[k] for k in settings if k in first},
            "metrics": metrics,
            "per_seed": {str(s): summaries[s] for s in seeds}}


def seeds_report(summary: dict, keys=None) -> str:
    """The CLI's table of a many-seed run: per metric, mean +- std [95 % interval] and the values."""
    lines = [f"{len(summary['seeds'])} seeds: {summary['seeds']}"]
    for key, m in summary["metrics"].items():
        if keys is not None and key not in keys:
            continue
        spread = "" if m["std"] is None else f" +- {m['std']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]"
        lines.append(f"{key:<24}{m['mean']:.4f}{spread}   per seed: "
                     + " ".join(f"{v:.4f}" for v in m["values"]))
    return "\n".join(lines)


def plot_seeds(path, curves: dict[int, tuple[list, list]], *, xlabel: str, ylabel: str, title: str) -> None:
    """One line per seed (x, y), and their mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, (x, y) in curves.items():
        ax.plot(x, y, marker="o", alpha=0.6, label=f"seed {seed}")
    xs = next(iter(curves.values()))[0] if curves else []
    if curves and all(c[0] == xs for c in curves.values()):
        ax.plot(xs, [statistics.fmean(c[1][i] for c in curves.values()) for i in range(len(xs))],
                color="black", linewidth=2.5, label="mean")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    integer_xaxis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
