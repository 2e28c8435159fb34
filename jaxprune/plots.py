"""Figures (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune.results import cell_fields, summarize  # noqa: E402

__all__ = ["error_curves"]

#: Legend entries per column where the legend goes beside the axes.
LEGEND_ROWS = 24


def error_curves(columns: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Seed-mean test (solid) and train (dashed) error against the pruning fraction, one
    colour per cell, with one-standard-error bands; saved to ``path``."""
    rows = summarize(columns)
    keys = cell_fields(columns)
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in keys), []).append(row)
    # Beyond ten cells the default colours repeat: take them from a colour map instead, and
    # put the legend beside the axes in columns of at most LEGEND_ROWS, widening the figure.
    columns_of_legend = -(-len(cells) // LEGEND_ROWS) if len(cells) > 10 else 0
    fig, ax = plt.subplots(figsize=(6.4 + 2.4 * columns_of_legend, 4.2),
                           constrained_layout=True)
    colors = (plt.cm.viridis(np.linspace(0, 0.95, len(cells))) if columns_of_legend
              else [f"C{i}" for i in range(len(cells))])
    for color, (cell, pts) in zip(colors, cells.items()):
        p = np.array([r["fraction"] for r in pts])
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in zip(keys, cell)) or "test"
        for metric, style in (("test_error", "-"), ("train_error", "--")):
            mean = np.array([r[metric] for r in pts])
            se = np.nan_to_num(np.array([r[metric + "_se"] for r in pts]))
            ax.plot(p, mean, style, color=color, marker="o", ms=3,
                    label=label if metric == "test_error" else None)
            ax.fill_between(p, mean - se, mean + se, color=color, alpha=0.15, lw=0)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("pruning fraction p")
    ax.set_ylabel("error (solid: test, dashed: train)")
    ax.set_ylim(-0.02, 0.6)
    ax.set_title(title)
    if columns_of_legend:
        ax.legend(fontsize=6, ncols=columns_of_legend, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
