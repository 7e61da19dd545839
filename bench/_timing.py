"""Timing helpers shared by the benchmarks: best-of-N wall-clock times and a plain table."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import torch


def best_time(f: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """The shortest of ``repeat`` wall-clock times of ``f()`` in seconds, after ``warmup`` calls.

    The minimum is the run least disturbed by other processes, the usual choice for comparing
    implementations on a shared machine.
    """
    if repeat < 1:
        raise ValueError(f"best_time: repeat must be at least 1, got {repeat}")
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table (floats to 4 significant digits)."""

    def show(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [list(headers)] + [[show(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
