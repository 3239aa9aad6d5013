"""PNG plots of a benchmark run: latency bars, loss against wall time and against bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from paragrad.bench.common import Row


def _plot_smoothed(ax: Any, curves: dict[str, dict[str, list[float]]], axis: str) -> None:
    """Each run's round loss against ``axis``; a moving average, since stochastic rounds see one batch."""
    for name, curve in curves.items():
        loss = np.asarray(curve["loss"])
        window = max(1, len(loss) // 25)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.asarray(curve[axis])[window - 1 :], smooth, label=name)


def _save(fig: Any, path: Path) -> Path:
    """Write a finished figure as PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency(plt: Any, latency: list[Row], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(latency), figsize=(4 * len(latency), 3.2))
    for ax, row in zip(np.atleast_1d(axes), latency, strict=True):
        names = ["paragrad local", "pipes", "gloo all_reduce"]
        values = [row["local_median_s"], row["pipe_median_s"], row["gloo_median_s"]]
        shown = [(n, v * 1e3) for n, v in zip(names, values, strict=True) if v is not None]
        ax.bar([n for n, _ in shown], [v for _, v in shown], color=["C0", "C7", "C3"][: len(shown)])
        ax.set_title(f"round, d = {row['d']:,}, 2 workers")
        ax.set_ylabel("median ms")
    return _save(fig, out / "latency.png")


def _compression(plt: Any, compression: Row, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_smoothed(ax, compression["curves"], "bytes")
    ax.set_xscale("log")
    ax.set_xlabel("bytes communicated")
    ax.set_ylabel("round loss (moving average)")
    ax.set_ylim(compression["optimum"] - 0.01, compression["optimum"] + 0.15)
    ax.set_title("compression: logistic regression, 2 local workers")
    ax.legend()
    return _save(fig, out / "compression_loss_vs_bytes.png")


def _solver_curves(plt: Any, curves: Row, sklearn_s: float, out: Path) -> list[Path]:
    written = []
    for axis, label, name in (
        ("wall_s", "wall time (s)", "loss_vs_time.png"),
        ("bytes", "bytes communicated", "loss_vs_bytes.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        _plot_smoothed(ax, curves["curves"], axis)
        ax.axhline(curves["optimum"], color="k", linewidth=0.8, label="optimum")
        if axis == "wall_s":
            ax.axvline(sklearn_s, color="k", linestyle="--", label="scikit-learn lbfgs (total)")
        ax.set_xscale("log")
        ax.set_ylim(curves["optimum"] - 0.005, curves["optimum"] + 0.1)
        ax.set_xlabel(label)
        ax.set_ylabel("round loss (moving average)")
        ax.set_title("logistic regression, 2 local workers")
        ax.legend()
        written.append(_save(fig, out / name))
    return written


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots of a run: latency bars, loss against wall time and against bytes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    rows = results["results"]
    latency = [row for row in rows if row["benchmark"] == "round_latency"]
    if latency:
        written.append(_latency(plt, latency, out))
    compression = next((row for row in rows if row["benchmark"] == "communication_curves"), None)
    if compression is not None:
        written.append(_compression(plt, compression, out))
    curves = next((row for row in rows if row["benchmark"] == "curves"), None)
    if curves is not None:
        sklearn_s = next(row["sklearn_lbfgs_s"] for row in rows if row["benchmark"] == "time_to_target")
        written.extend(_solver_curves(plt, curves, sklearn_s, out))
    return written
