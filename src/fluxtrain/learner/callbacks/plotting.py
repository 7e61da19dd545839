"""``PlotMetrics``: draws the loss and metric curves to a PNG file after every epoch.

matplotlib is imported on first use and drawn through its Agg canvas directly, so the user's
pyplot backend and figures are left alone.  Only the main process writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ... import distributed
from ..callback import Callback
from ..events import EpochEnd, Event

__all__ = ["PlotMetrics", "plot_metrics"]


def plot_metrics(cbstate: Any, path: str | os.PathLike[str]) -> Path:
    """Draw ``cbstate.metrics_epoch`` (one panel per metric, one line per phase) and the
    training step loss (``cbstate.metrics_step``) to the PNG file ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epoch = cbstate.get("metrics_epoch") or {}
    step = cbstate.get("metrics_step") or {}
    names: list[str] = []
    for hist in epoch.values():
        names += [n for n in hist.names() if n not in names]
    panels = ["steps"] + names
    fig = Figure(figsize=(4.5 * len(panels), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ax = axes[0]
    for phase, hist in step.items():
        for n in ("Loss", "SmoothLoss"):
            if n in hist:
                ax.plot(hist.steps(n), hist[n], label=f"{phase} {n}", linewidth=1)
    ax.set_xlabel("step")
    ax.set_title("loss per step")
    for ax, name in zip(axes[1:], names):
        for phase, hist in epoch.items():
            if name in hist:
                ax.plot(hist.steps(name), hist[name], marker="o", label=phase)
        ax.set_xlabel("epoch")
        ax.set_title(name)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


class PlotMetrics(Callback):
    """Saves the curves of [`plot_metrics`][fluxtrain.callbacks.plot_metrics] to ``path`` at the end of every epoch (inside
    [`fit_`][fluxtrain.learner.fit_]: once its training and validation phases are both done).

    Example:
        >>> from fluxtrain.callbacks import PlotMetrics
        >>> PlotMetrics("runs/metrics.png")
        PlotMetrics('runs/metrics.png')
    """

    reads = ("cbstate.metrics_epoch", "cbstate.metrics_step", "progress")
    handles = (EpochEnd,)

    def __init__(self, path: str | os.PathLike[str] = "metrics.png") -> None:
        self.path = Path(path)

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        progress = learner.progress
        if progress is not None and progress.phases_done < progress.nphases:
            return
        if distributed.is_main_process():
            plot_metrics(learner.cbstate, self.path)

    def __repr__(self) -> str:
        return f"PlotMetrics({str(self.path)!r})"
