"""PNG figures of the projector diagnostics (``hf_projkd.callbacks``), several runs side by side.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it works headless
and does not disturb an interactive session. Each function takes ``{run name: history}`` where a history is the
list of ``ProjectorSnapshot`` (or their dicts, as saved in JSON) of one run, and returns the written path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hf_projkd.callbacks import ProjectorSnapshot

History = Sequence[ProjectorSnapshot | Mapping[str, Any]]
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _snapshots(history: History) -> list[ProjectorSnapshot]:
    return [s if isinstance(s, ProjectorSnapshot) else ProjectorSnapshot.from_dict(dict(s)) for s in history]


def _check_runs(runs: Mapping[str, History]) -> dict[str, list[ProjectorSnapshot]]:
    if not runs:
        raise ValueError("Nothing to plot: pass {run name: history} with at least one run.")
    histories = {name: _snapshots(history) for name, history in runs.items()}
    empty = [name for name, history in histories.items() if not history]
    if empty:
        raise ValueError(f"Runs {empty} have an empty history: was the callback attached and did training run?")
    return histories


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_singular_values(runs: Mapping[str, History], path: str | Path, max_curves: int = 64) -> Path:
    """Singular values of the projector over training, one panel per run (log scale, shared axis).

    Up to ``max_curves`` singular values: one curve each (largest dark, smallest light); more: the quantiles
    ``QUANTILES`` of the spectrum at each step. Collapse shows as curves falling towards zero.
    """
    histories = _check_runs(runs)
    figure = Figure(figsize=(3.6 * len(histories), 3.4), layout="constrained")
    axes = figure.subplots(1, len(histories), sharey=True, squeeze=False)[0]
    for ax, (name, history) in zip(axes, histories.items(), strict=True):
        steps = np.array([s.step for s in history])
        values = np.array([sorted(s.singular_values, reverse=True) for s in history])  # (T, k)
        values = np.clip(values, 1e-8, None)
        if values.shape[1] <= max_curves:
            colors = _shades(values.shape[1])
            for i in range(values.shape[1]):
                ax.plot(steps, values[:, i], color=colors[i], linewidth=0.8)
        else:
            for q in QUANTILES:
                ax.plot(steps, np.quantile(values, 1 - q, axis=1), label=f"q{q:g}", linewidth=1.0)
            ax.legend(fontsize=6, loc="lower left")
        final = history[-1].summary
        ax.set_title(f"{name}\neff. rank {final.get('effective_rank', float('nan')):.1f}, "
                     f"near-zero {100 * final.get('sv_near_zero_share', float('nan')):.0f} %", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("singular value of W")
    return _save(figure, path)


def _shades(count: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(count - 1, 1)) for i in range(count)]


def plot_correlation(runs: Mapping[str, History], path: str | Path) -> Path:
    """Projector input/output relation over training, all runs: mean |corr| on and off the diagonal, linear R^2."""
    histories = _check_runs(runs)
    figure = Figure(figsize=(11.0, 3.2), layout="constrained")
    diag_ax, off_ax, r2_ax = figure.subplots(1, 3, sharex=True)
    for name, history in histories.items():
        points = [(s.step, s.corr_diag, s.corr_offdiag) for s in history if s.corr_diag is not None]
        r2 = [(s.step, s.linear_r2) for s in history if s.linear_r2 is not None]
        color = None
        if points:
            steps, diag, off = (np.array(column) for column in zip(*points, strict=True))
            (line,) = diag_ax.plot(steps, diag, marker=".", label=name)
            color = line.get_color()
            off_ax.plot(steps, off, marker=".", color=color, label=name)
        if r2:
            r2_ax.plot(*zip(*r2, strict=True), marker=".", color=color, label=name)
    r2_values = [s.linear_r2 for h in histories.values() for s in h if s.linear_r2 is not None]
    if r2_values:  # a fixed scale: linear projectors sit at 1 up to float noise, which autoscaling would magnify
        r2_ax.set_ylim(min(0.9, min(r2_values) - 0.05), 1.01)
    for ax, title in (
        (diag_ax, "mean |corr|, diagonal (in i vs out i)"),
        (off_ax, "mean |corr|, off-diagonal"),
        (r2_ax, "linear R$^2$ of output from input"),
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    diag_ax.legend(fontsize=7)
    return _save(figure, path)


def plot_correlation_matrices(matrices: Mapping[str, Any], path: str | Path, max_columns: int = 3) -> Path:
    """Heatmaps of |correlation| between projector input dims (rows) and output dims (columns), one per run."""
    if not matrices:
        raise ValueError("Nothing to plot: pass {run name: (d_in, d_out) correlation matrix}.")
    columns = min(len(matrices), max_columns)
    rows = -(-len(matrices) // columns)
    figure = Figure(figsize=(3.0 * columns, 3.0 * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[len(matrices) :]:
        ax.set_visible(False)
    axes = axes[: len(matrices)]
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        values = np.abs(np.asarray(matrix, dtype=float))
        if values.ndim != 2:
            raise ValueError(f"Correlation of run {name!r} must be 2-d (d_in, d_out), got shape {values.shape}.")
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("output dim")
        ax.set_ylabel("input dim")
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="|corr|")
    return _save(figure, path)
