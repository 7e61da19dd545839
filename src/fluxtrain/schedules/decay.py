"""Decay schedules of ParameterSchedulers.jl v0.4 (``src/decay.jl``): Step, Exp, Poly, Inv.

Argument names are v0.4's (``start``, ``decay``, ``degree``, ``step_sizes``, ``max_iter``); the
pre-0.4 keywords ``λ``, ``γ``, ``p`` are accepted as aliases, as v0.4 does.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._base import Schedule, check_count, check_real, past_end, schedule_class

__all__ = ["Exp", "Inv", "Poly", "Step"]


def _aliases(owner: str, kw: dict[str, Any], remap: dict[str, str]) -> dict[str, Any]:
    out = dict(kw)
    for old, new in remap.items():
        if old in out:
            if new in out:
                raise TypeError(f"{owner}: give {new} once ({old} is its old name)")
            out[new] = out.pop(old)
    return out


@schedule_class
class Step(Schedule):
    """Step decay: ``start * decay^i`` where ``i`` is the number of steps completed before ``t``.

    With an integer ``step_sizes`` every step has that many iterations (``start *
    decay^floor((t-1)/step_sizes)``); with a sequence, step ``i`` lasts ``step_sizes[i]``
    iterations and after the last one the value stays at ``start * decay^len(step_sizes)``.
    (ParameterSchedulers.jl ``src/decay.jl``, v0.4.)

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Step(1.0, 0.5, 2)
        >>> [s(t) for t in range(1, 6)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
        >>> ft.Step(start=1.0, decay=0.1, step_sizes=[1, 2])(4)
        0.010000000000000002
    """

    start: float
    decay: float
    step_sizes: int | tuple[int, ...]

    def __init__(self, start: float, decay: float, step_sizes: Any) -> None:
        check_real("Step", "start", start)
        check_real("Step", "decay", decay)
        if isinstance(step_sizes, numbers.Integral) and not isinstance(step_sizes, bool):
            check_count("Step", "step_sizes", step_sizes)
            sizes: Any = int(step_sizes)
        else:
            try:
                sizes = tuple(step_sizes)
            except TypeError:
                raise TypeError(
                    f"Step: step_sizes must be an integer or a sequence of integers, "
                    f"got {step_sizes!r}"
                ) from None
            if not sizes:
                raise ValueError("Step: step_sizes must not be empty")
            for i, n in enumerate(sizes):
                check_count("Step", f"step_sizes[{i}]", n)
            sizes = tuple(int(n) for n in sizes)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "decay", decay)
        object.__setattr__(self, "step_sizes", sizes)

    def _value(self, t: float) -> float:
        if isinstance(self.step_sizes, int):
            i = max(0, math.ceil(t / self.step_sizes) - 1)
        else:
            i, acc = 0, 0
            for n in self.step_sizes:
                acc += n
                if t > acc:
                    i += 1
                else:
                    break
        return self.start * self.decay**i


@schedule_class
class Exp(Schedule):
    """Exponential decay: ``start * decay^(t - 1)`` (ParameterSchedulers.jl ``src/decay.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Exp(0.1, 0.5)
        >>> s
        Exp(start=0.1, decay=0.5)
        >>> [s(t) for t in (1, 2, 3)]
        [0.1, 0.05, 0.025]
    """

    start: float
    decay: float

    def __post_init__(self) -> None:
        check_real("Exp", "start", self.start)
        check_real("Exp", "decay", self.decay)

    def _value(self, t: float) -> float:
        return self.start * self.decay ** (t - 1)


@schedule_class
class Poly(Schedule):
    """Polynomial decay to zero over ``max_iter`` iterations:
    ``start * (1 - (t - 1) / max_iter)^degree`` for ``t <= max_iter``.

    A finite schedule: ``len(s) == max_iter``; evaluating past it raises ``IndexError`` (as
    v0.4's ``BoundsError``).  (ParameterSchedulers.jl ``src/decay.jl``; its docstring writes a
    division but the code, followed here, multiplies.)  ``degree`` may be any real here (the
    common "poly" schedule uses 0.9); Julia requires an integer.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Poly(1.0, 2, 4)
        >>> list(s)
        [1.0, 0.5625, 0.25, 0.0625]
    """

    start: float
    degree: float
    max_iter: int

    def __post_init__(self) -> None:
        check_real("Poly", "start", self.start)
        check_real("Poly", "degree", self.degree)
        check_count("Poly", "max_iter", self.max_iter)

    def _length(self) -> int:
        return self.max_iter

    def _value(self, t: float) -> float:
        if t > self.max_iter:
            raise past_end(self, t, self.max_iter)
        return self.start * (1 - (t - 1) / self.max_iter) ** self.degree


@schedule_class
class Inv(Schedule):
    """Inverse decay: ``start / (1 + (t - 1) * decay)^degree`` (ParameterSchedulers.jl
    ``src/decay.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Inv(1.0, 0.5, 2)
        >>> [s(t) for t in (1, 2, 3)]
        [1.0, 0.4444444444444444, 0.25]
    """

    start: float
    decay: float
    degree: float

    def __post_init__(self) -> None:
        check_real("Inv", "start", self.start)
        check_real("Inv", "decay", self.decay)
        check_real("Inv", "degree", self.degree)

    def _value(self, t: float) -> float:
        return self.start / (1 + (t - 1) * self.decay) ** self.degree


def _with_aliases(cls: type, remap: dict[str, str]) -> None:
    """Accept v0.3 keyword names (``λ``, ``γ``, ``p``) as v0.4 does (``depkwargs``)."""
    init = cls.__init__

    def __init__(self, *args: Any, **kw: Any) -> None:
        init(self, *args, **_aliases(cls.__name__, kw, remap))

    __init__.__doc__ = init.__doc__
    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


_with_aliases(Step, {"λ": "start", "γ": "decay"})
_with_aliases(Exp, {"λ": "start", "γ": "decay"})
_with_aliases(Poly, {"λ": "start", "p": "degree"})
_with_aliases(Inv, {"λ": "start", "γ": "decay", "p": "degree"})
