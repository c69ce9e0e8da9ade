"""The report's figures (matplotlib, Agg): every function takes {variant: [per-seed values]} series already gathered by
report.py and draws mean with 95% CI error bars over seeds."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from benchmarks.evidence.stats import mean_ci

COLORS = {"hope": "#d62728", "titans": "#ff7f0e", "titans_nocms": "#bcbd22", "deltanet": "#2ca02c",
          "transformer": "#1f77b4", "swa": "#9467bd", "hope_eta1e-3": "#8c564b"}  # every grid.VARIANTS entry


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(ax, xs: Sequence, per_x: Dict[str, List[List[Optional[float]]]], label_x=None, chance=None):
    """per_x: {variant: [values over seeds, one list per x]}."""
    for v, cols in per_x.items():
        pts = [(x, *mean_ci(c)[:2]) for x, c in zip(xs, cols)]
        pts = [(x, m, h or 0.0) for x, m, h in pts if m is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], label=v, marker="o",
                        ms=3, capsize=2, color=COLORS.get(v))
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    if label_x:
        ax.set_xlabel(label_x)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def mqar(path, pairs, by_pairs, length_for_pairs, lengths, by_length, pairs_for_length, chance) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _series(axes[0], pairs, by_pairs, "key-value pairs per instance", chance)
    axes[0].set_title(f"MQAR accuracy vs pairs (sequence {length_for_pairs})")
    axes[0].set_xscale("log", base=2)
    _series(axes[1], lengths, by_length, "sequence length (tokens)", chance)
    axes[1].set_title(f"MQAR accuracy vs length ({pairs_for_length} pairs)")
    axes[1].set_xscale("log", base=2)
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def passkey(path, lengths, recall, digits, memory, train_length) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    _series(axes[0], lengths, recall, "prompt length (tokens)")
    axes[0].set_title("passkey: exact recall (5 digits)")
    _series(axes[1], lengths, digits, "prompt length (tokens)", chance=0.1)
    axes[1].set_title("passkey: digits right")
    _series(axes[2], lengths, memory, "prompt length (tokens)")
    axes[2].set_title("peak memory while reading (MiB, first seed)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.axvline(train_length, color="grey", ls="--", lw=1)
    for ax in axes[:2]:
        ax.set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=7)
    return _save(fig, path)


def forgetting(path, stages, first_task, seen_mean, ttc_first, ttc_new, chance) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    _series(axes[0], stages, first_task, "after training on task", chance)
    axes[0].set_title("training: accuracy on task 0 (forgetting curve)")
    _series(axes[1], stages, seen_mean, "after training on task", chance)
    axes[1].set_title("training: mean accuracy over tasks seen")
    _series(axes[2], stages, ttc_first, "after streaming task (test-time CMS)", chance)
    for v, cols in ttc_new.items():
        pts = [(x, mean_ci(c)[0]) for x, c in zip(stages, cols)]
        pts = [(x, m) for x, m in pts if m is not None]
        if pts:
            axes[2].plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker="x", ms=3, color=COLORS.get(v))
    axes[2].set_title("test-time CMS: task 0 (—), task streamed (--)")
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.set_xticks(list(stages))
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def clip(path, curves: Dict[str, tuple], finals: Dict[str, Dict[str, list]]) -> str:
    """curves: {variant: (iterations, [per-seed rate lists])}; finals: {task: {variant: per-seed final rates}}."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for v, (its, seeds) in curves.items():
        cols = [[s[i] for s in seeds if i < len(s)] for i in range(len(its))]
        _series(axes[0], its, {v: cols})
    axes[0].set_title("inner-clip hit rate during MQAR training")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    tasks = list(finals)
    order = list(COLORS)
    variants = sorted({v for t in finals.values() for v in t}, key=lambda v: order.index(v) if v in order else len(order))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        ms = [mean_ci(finals[t].get(v, []))[:2] for t in tasks]
        axes[1].bar([j + i * width for j in range(len(tasks))], [m or 0 for m, _ in ms],
                    yerr=[h or 0 for _, h in ms], width=width, label=v, color=COLORS.get(v), capsize=2)
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("hit rate at the end of training, per task")
    axes[1].legend(fontsize=7)
    return _save(fig, path)
