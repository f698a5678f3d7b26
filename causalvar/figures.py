"""Figures: annotated heatmaps of layer × position (or head) grids, shared by every analysis's results."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_panel(ax, values: np.ndarray, rows: list, columns: list, cmap: str = "viridis",
               vmin: float | None = None, vmax: float | None = None, below: np.ndarray | None = None,
               xlabel: str | None = None, hatched: np.ndarray | None = None):
    """``values: [len(rows), len(columns)]`` as a heatmap on ``ax`` (rows from the bottom: layers), each
    cell's value written in it and, when ``below`` (same shape) is given, that value in parentheses
    beneath (e.g. the no-effect baseline); cells where ``hatched`` (bool, same shape) is true are hatched
    (e.g. not above their random controls); NaN cells stay empty. Returns the image (for a colorbar)."""
    from matplotlib.patches import Rectangle

    values = np.asarray(values, dtype=float)
    im = ax.imshow(values, cmap=cmap, aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(columns)), [str(c) for c in columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    if xlabel:
        ax.set_xlabel(xlabel)
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            val = values[r, c]
            if np.isnan(val):
                continue
            if hatched is not None and hatched[r, c]:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white",
                                       linewidth=0, alpha=0.6))
            color = "white" if sum(im.cmap(im.norm(val))[:3]) < 1.5 else "black"
            base = float("nan") if below is None else float(below[r, c])
            ax.text(c, r, f"{val:.2f}", ha="center", va="center" if np.isnan(base) else "bottom", fontsize=6,
                    color=color)
            if not np.isnan(base):
                ax.text(c, r, f"({base:.2f})", ha="center", va="top", fontsize=5, color=color, alpha=0.7)
    return im


def saved(fig, path):
    """Write ``fig`` to ``path`` (PNG/PDF, folders made) and close it, when a path is given; returns ``fig``."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130, bbox_inches="tight")
        pyplot().close(fig)
    return fig
