"""Linear warm-up in front of any schedule (not part of ParameterSchedulers.jl).

Large learning rates at the first updates can wreck a fresh model (Goyal et al., 2017,
https://arxiv.org/abs/1706.02677, "gradual warmup"); ramping the rate up linearly over the first
iterations is the usual cure, and what ``transformers.get_*_schedule_with_warmup`` do.
"""

from __future__ import annotations

from typing import Any

from ._base import (
    Schedule,
    as_schedule,
    check_callable,
    check_count,
    check_real,
    length_of,
    schedule_class,
)

__all__ = ["Warmup", "warmup"]


@schedule_class
class Warmup(Schedule):
    """``nsteps`` iterations of linear ramp from ``start`` to ``schedule(1)``, then ``schedule``
    (which begins at its own ``t = 1``):

    - ``t <= nsteps``: ``start + (schedule(1) - start) * (t - 1) / nsteps``;
    - ``t > nsteps``: ``schedule(t - nsteps)``.

    So the ramp reaches ``schedule(1)`` exactly at ``t = nsteps + 1``, as in
    ``transformers.get_linear_schedule_with_warmup`` (with ``start = 0``).  Make one with
    `warmup`.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Warmup(ft.Exp(1.0, 0.5), 4)
        >>> [s(t) for t in range(1, 8)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.25]
    """

    schedule: Any
    nsteps: int
    start: float = 0.0

    def __post_init__(self) -> None:
        check_callable("Warmup", "schedule", self.schedule)
        check_count("Warmup", "nsteps", self.nsteps, minimum=0)
        check_real("Warmup", "start", self.start)

    def _value(self, t: float) -> Any:
        if t <= self.nsteps:
            target = self.schedule(1)
            return self.start + (target - self.start) * (t - 1) / self.nsteps
        return self.schedule(t - self.nsteps)

    def _length(self) -> int | None:
        n = length_of(self.schedule)
        return None if n is None else self.nsteps + n


def warmup(schedule: Any, nsteps: int, start: float = 0.0) -> Warmup:
    """Put a linear warm-up of ``nsteps`` iterations from ``start`` in front of ``schedule``.

    Any schedule (or number, for a constant rate) works; see [`Warmup`][fluxtrain.schedules.Warmup] for the formula.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.warmup(ft.CosAnneal(l0=0.0, l1=1e-3, period=100), 10, start=1e-5)
        >>> s(1), s(11)
        (1e-05, 0.001)
        >>> ft.warmup(0.1, 2)(2)
        0.05
    """
    return Warmup(as_schedule(schedule), nsteps, start)
