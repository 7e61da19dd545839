"""Draw schedules to a PNG file, for documentation and for checking a schedule by eye."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_schedule"]


def plot_schedule(
    schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]],
    n: int,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    logy: bool = False,
    size: tuple[float, float] = (6.0, 3.5),
    dpi: int = 100,
) -> Path:
    """Plot ``schedule(t)`` for ``t = 1..n`` and save it as a PNG at ``path``; return the path.

    ``schedule`` is a schedule (or any function of ``t``), or a mapping ``{label: schedule}``
    to compare several in one figure.  ``logy=True`` uses a log scale for the values.  Needs
    matplotlib (imported only here; drawn off-screen with its Agg renderer, so it works without
    a display and leaves pyplot's global state alone).

    Example:
        >>> import tempfile, os, fluxtrain as ft
        >>> out = os.path.join(tempfile.mkdtemp(), "cos.png")
        >>> ft.plot_schedule(ft.CosAnneal(l0=1e-4, l1=1e-2, period=10), 50, out).name
        'cos.png'
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"plot_schedule: n must be a positive integer, got {n!r}")
    curves = dict(schedule) if isinstance(schedule, Mapping) else {None: schedule}
    for label, s in curves.items():
        if not callable(s):
            what = "schedule" if label is None else f"schedule {label!r}"
            raise TypeError(f"plot_schedule: {what} must be callable as s(t), got {s!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a dev dependency here
        raise ImportError("plot_schedule needs matplotlib: pip install matplotlib") from e

    ts = list(range(1, n + 1))
    values: dict[Any, list[float]] = {}
    for label, s in curves.items():
        values[label] = [float(s(t)) for t in ts]  # errors (e.g. past a Poly's end) come first

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, ys in values.items():
        ax.plot(ts, ys, label=label if label is not None else repr(curves[label]))
    ax.set_xlabel("iteration t")
    ax.set_ylabel("value")
    if logy:
        ax.set_yscale("log")
    if title is not None:
        ax.set_title(title)
    if len(values) > 1:
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
