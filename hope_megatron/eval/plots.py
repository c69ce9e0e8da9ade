"""Matplotlib figures of the evaluation results (NIAH heatmap, continual-learning matrix and curves). Reads result
dicts only: no model code, so tools/make_report.py can import it."""

from __future__ import annotations

import os
from typing import List

import numpy as np


def plot_heatmap(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = result["lengths"], result["depths"]
    grid = np.array([[np.nan if v is None else v for v in row] for row in result["grid"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, "beyond" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}", ha="center", va="center",
                    fontsize=7)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"NIAH recall: {result['run']['variant']}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_continual(result: dict, out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["segments"]
    m = np.asarray(result["matrix"])
    paths = []
    fig, ax = plt.subplots(figsize=(1.5 + len(names), 1.2 + 0.6 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(m.shape[0]), result["row_labels"])
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("evaluated segment")
    ax.set_title(f"loss matrix, mode {result['mode']}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"continual_{result['mode']}_matrix.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for j, n in enumerate(names):
        ax.plot(range(m.shape[0]), m[:, j], marker="o", label=n)
    ax.set_xticks(range(m.shape[0]), result["row_labels"], rotation=20)
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.set_title("loss of each segment across stages")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"continual_{result['mode']}_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
