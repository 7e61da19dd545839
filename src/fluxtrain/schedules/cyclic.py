"""Cyclic schedules of ParameterSchedulers.jl v0.4 (``src/cyclic.jl``).

Each is stored as ``range == abs(l0 - l1)`` (the dynamic range) and ``offset == min(l0, l1)``
(the minimum), exactly as v0.4 stores them: positional arguments are ``(range, offset, period,
...)`` and the endpoints are given by keyword, ``Triangle(l0=0.0, l1=1.0, period=10)``.  The
pre-0.4 keywords ``λ0``/``λ1`` are accepted too (seed 000 writes ``Cos(λ0 = 1e-4, λ1 = 1e-2,
period = 10)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._base import Schedule, check_count, check_real, schedule_class

__all__ = [
    "Cos",
    "CosAnneal",
    "Sin",
    "SinDecay2",
    "SinExp",
    "Triangle",
    "TriangleDecay2",
    "TriangleExp",
]


def _tri(t: float, period: int) -> float:
    return (2 / math.pi) * abs(math.asin(math.sin(math.pi * (t - 1) / period)))


def _sin(t: float, period: int) -> float:
    return abs(math.sin(math.pi * (t - 1) / period))


def _range_offset(owner: str, range_: Any, offset: Any, kw: dict[str, Any]) -> tuple[float, float]:
    """``(range, offset)`` from either the positional pair or the endpoints ``l0``/``l1``."""
    ends = {}
    for new, old in (("l0", "λ0"), ("l1", "λ1")):
        if new in kw and old in kw:
            raise TypeError(f"{owner}: give {new} once ({old} is its old name)")
        if new in kw or old in kw:
            ends[new] = kw.pop(new) if new in kw else kw.pop(old)
    if kw:
        raise TypeError(f"{owner} got unexpected keyword argument(s) {sorted(kw)}")
    if ends:
        if range_ is not None or offset is not None:
            raise TypeError(
                f"{owner}: give either the endpoints l0, l1 or (range, offset), not both"
            )
        if set(ends) != {"l0", "l1"}:
            raise TypeError(f"{owner}: both endpoints l0 and l1 are needed, got {sorted(ends)}")
        l0, l1 = ends["l0"], ends["l1"]
        check_real(owner, "l0", l0)
        check_real(owner, "l1", l1)
        return abs(l0 - l1), min(l0, l1)
    if range_ is None or offset is None:
        raise TypeError(
            f"{owner} needs the endpoints (l0=..., l1=...) or the positional (range, offset)"
        )
    check_real(owner, "range", range_)
    check_real(owner, "offset", offset)
    return range_, offset


def _ends(l0: Any, l1: Any, old: dict[str, Any]) -> dict[str, Any]:
    """Endpoint keywords as one dict (``λ0``/``λ1`` stay in it as the old spellings)."""
    kw = dict(old)
    for name, v in (("l0", l0), ("l1", l1)):
        if v is not None:
            kw[name] = v
    return kw


@dataclasses.dataclass(frozen=True, init=False)
class _Cyclic(Schedule):
    """Shared constructor: ``(range, offset, period)`` or ``(l0=, l1=, period=)``."""

    range: float
    offset: float
    period: int

    def _init(self, range_: Any, offset: Any, period: Any, kw: dict[str, Any]) -> None:
        name = type(self).__name__
        r, o = _range_offset(name, range_, offset, kw)
        if period is None:
            raise TypeError(f"{name} needs a period")
        check_count(name, "period", period)
        object.__setattr__(self, "range", r)
        object.__setattr__(self, "offset", o)
        object.__setattr__(self, "period", int(period))

    def __init__(
        self, range: float | None = None, offset: float | None = None,
        period: int | None = None, *, l0: float | None = None, l1: float | None = None,
        **old: float,
    ) -> None:  # fmt: skip
        self._init(range, offset, period, _ends(l0, l1, old))


@dataclasses.dataclass(frozen=True, init=False)
class _DecayingCyclic(_Cyclic):
    """Shared constructor of the waves whose amplitude decays by ``decay^(t-1)``."""

    decay: float

    def __init__(
        self, range: float | None = None, offset: float | None = None,
        period: int | None = None, decay: float | None = None, *, l0: float | None = None,
        l1: float | None = None, **old: float,
    ) -> None:  # fmt: skip
        self._init(range, offset, period, _ends(l0, l1, old))
        name = type(self).__name__
        if decay is None:
            raise TypeError(f"{name} needs a decay")
        check_real(name, "decay", decay)
        object.__setattr__(self, "decay", decay)


def _cyclic(cls: type) -> type:
    """A frozen dataclass keeping the constructor it inherits (the waves add no fields)."""
    return dataclasses.dataclass(frozen=True, init=False)(cls)


@_cyclic
class Triangle(_Cyclic):
    """Triangle wave between ``l0`` and ``l1`` with ``period``:
    ``range * (2/π) * |asin(sin(π (t-1) / period))| + offset``.

    (ParameterSchedulers.jl ``src/cyclic.jl``; ``range = |l0 - l1|``, ``offset = min(l0, l1)``.)

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Triangle(l0=0.0, l1=1.0, period=2)
        >>> s
        Triangle(range=1.0, offset=0.0, period=2)
        >>> [round(s(t), 6) for t in range(1, 6)]
        [0.0, 1.0, 0.0, 1.0, 0.0]
    """

    def _value(self, t: float) -> float:
        return self.range * _tri(t, self.period) + self.offset


@_cyclic
class TriangleDecay2(_Cyclic):
    """Triangle wave whose amplitude halves every period:
    ``range * Triangle(t) / 2^floor((t-1)/period) + offset`` (ParameterSchedulers.jl
    ``src/cyclic.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.TriangleDecay2(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 6) for t in range(1, 7)]
        [0.0, 1.0, 0.0, 0.5, 0.0, 0.25]
    """

    def _value(self, t: float) -> float:
        return self.range * _tri(t, self.period) / 2 ** math.floor((t - 1) / self.period) + (
            self.offset
        )


@_cyclic
class TriangleExp(_DecayingCyclic):
    """Triangle wave with exponentially decaying amplitude:
    ``range * Triangle(t) * decay^(t-1) + offset`` (ParameterSchedulers.jl ``src/cyclic.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.TriangleExp(l0=0.0, l1=1.0, period=2, decay=0.5)
        >>> [round(s(t), 6) for t in range(1, 5)]
        [0.0, 0.5, 0.0, 0.125]
    """

    def _value(self, t: float) -> float:
        return self.range * _tri(t, self.period) * self.decay ** (t - 1) + self.offset


@_cyclic
class Sin(_Cyclic):
    """Sine wave (absolute value) with ``period``:
    ``range * |sin(π (t-1) / period)| + offset`` (ParameterSchedulers.jl ``src/cyclic.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Sin(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 6) for t in range(1, 5)]
        [0.0, 1.0, 0.0, 1.0]
    """

    def _value(self, t: float) -> float:
        return self.range * _sin(t, self.period) + self.offset


@_cyclic
class SinDecay2(_Cyclic):
    """Sine wave whose amplitude halves every period:
    ``range * Sin(t) / 2^floor((t-1)/period) + offset`` (ParameterSchedulers.jl
    ``src/cyclic.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.SinDecay2(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 6) for t in range(1, 7)]
        [0.0, 1.0, 0.0, 0.5, 0.0, 0.25]
    """

    def _value(self, t: float) -> float:
        return self.range * _sin(t, self.period) / 2 ** math.floor((t - 1) / self.period) + (
            self.offset
        )


@_cyclic
class SinExp(_DecayingCyclic):
    """Sine wave with exponentially decaying amplitude:
    ``range * Sin(t) * decay^(t-1) + offset`` (ParameterSchedulers.jl ``src/cyclic.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.SinExp(l0=0.0, l1=1.0, period=2, decay=0.5)
        >>> [round(s(t), 6) for t in range(1, 5)]
        [0.0, 0.5, 0.0, 0.125]
    """

    def _value(self, t: float) -> float:
        return self.range * _sin(t, self.period) * self.decay ** (t - 1) + self.offset


@schedule_class
class CosAnneal(_Cyclic):
    """Cosine annealing from ``max(l0, l1)`` down to ``min(l0, l1)`` over ``period`` iterations,
    with warm restarts by default (SGDR, Loshchilov & Hutter, https://arxiv.org/abs/1608.03983):

    ``t̂ = (t-1) mod period`` if ``restart`` else ``t - 1``;
    ``value = range * (1 + cos(π t̂ / period)) / 2 + offset``.

    Without restarts the cosine continues, climbing back up in the next period.
    (ParameterSchedulers.jl ``src/cyclic.jl``.)

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.CosAnneal(l0=0.0, l1=1.0, period=2)
        >>> [round(s(t), 6) for t in range(1, 5)]
        [1.0, 0.5, 1.0, 0.5]
        >>> [round(v, 6) for v, _ in zip(ft.CosAnneal(1.0, 0.0, 2, restart=False), range(4))]
        [1.0, 0.5, 0.0, 0.5]
    """

    restart: bool

    def __init__(
        self, range: float | None = None, offset: float | None = None,
        period: int | None = None, restart: bool = True, *, l0: float | None = None,
        l1: float | None = None, **old: float,
    ) -> None:  # fmt: skip
        self._init(range, offset, period, _ends(l0, l1, old))
        if not isinstance(restart, bool):
            raise TypeError(f"CosAnneal: restart must be a bool, got {restart!r}")
        object.__setattr__(self, "restart", restart)

    def _value(self, t: float) -> float:
        th = (t - 1) % self.period if self.restart else t - 1
        return self.range * (1 + math.cos(math.pi * th / self.period)) / 2 + self.offset


# Capitalised like a class: it is the seed's (and ParameterSchedulers <= 0.3's) schedule name.
def Cos(
    l0: float | None = None, l1: float | None = None, period: int | None = None, **old: float
) -> CosAnneal:
    """The cosine-annealing schedule of seed 000: ``Cos(l0=1e-4, l1=1e-2, period=10)``.

    ``Cos`` is ParameterSchedulers.jl's older name, deprecated in favour of [`CosAnneal`][fluxtrain.schedules.CosAnneal]
    (``src/cyclic.jl``: ``Cos(range0, range1, period)`` becomes ``CosAnneal(λ0=range0,
    λ1=range1, period=period)``).  It returns the equivalent ``CosAnneal`` with warm restarts:
    the value starts at ``max(l0, l1)``, falls along a half cosine to ``min(l0, l1)`` and restarts
    every ``period`` iterations.  Unlike ``CosAnneal``, the positional arguments are the two
    endpoints.  The seed's ``λ0``/``λ1`` keywords are accepted.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Cos(λ0=1e-4, λ1=1e-2, period=10)
        >>> s == ft.CosAnneal(l0=1e-4, l1=1e-2, period=10)
        True
        >>> s(1), s(11)
        (0.01, 0.01)
    """
    for new, alias in (("l0", "λ0"), ("l1", "λ1")):
        if alias in old:
            if (l0 if new == "l0" else l1) is not None:
                raise TypeError(f"Cos: give {new} once ({alias} is its old name)")
            if new == "l0":
                l0 = old.pop(alias)
            else:
                l1 = old.pop(alias)
    if old:
        raise TypeError(f"Cos got unexpected keyword argument(s) {sorted(old)}")
    if l0 is None or l1 is None:
        raise TypeError("Cos needs both endpoints: Cos(l0=..., l1=..., period=...)")
    return CosAnneal(l0=l0, l1=l1, period=period, restart=True)
