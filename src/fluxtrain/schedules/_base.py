"""The schedule protocol shared by every schedule: call, iterate, list fields, (de)serialise.

ParameterSchedulers.jl (``src/interface.jl``) makes a schedule a callable ``s(t)`` over
iterations ``t = 1, 2, ...`` that also iterates as ``s(1), s(2), ...``; finite schedules have a
length.  Here every schedule is a frozen dataclass: immutable, compared and hashed by value (a
rule holding schedules is a dictionary key in the update engine) and listable field by field (so
that checkpoints can store it as JSON via [`Schedule.to_dict`][fluxtrain.schedules.Schedule.to_dict]).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["Schedule"]

_REGISTRY: dict[str, type[Schedule]] = {}

S = TypeVar("S", bound=type)


class Schedule:
    """Base class of all schedules (ParameterSchedulers.jl ``AbstractSchedule``).

    A subclass is a frozen dataclass implementing ``_value(t)``; it is then callable as
    ``s(t)`` (``t`` counts from 1), iterable (``s(1), s(2), ...``: forever, or ``len(s)`` values
    for a finite schedule), hashable, comparable by value and printable with its parameters.
    Subclass it (and decorate with `dataclasses.dataclass` ``(frozen=True)``) to write
    your own schedule; [`to_dict`][fluxtrain.schedules.Schedule.to_dict]/[`from_dict`][fluxtrain.schedules.Schedule.from_dict] then work for it too.

    Example:
        >>> import dataclasses, fluxtrain as ft
        >>> @dataclasses.dataclass(frozen=True)
        ... class Halving(ft.Schedule):
        ...     start: float
        ...     def _value(self, t):
        ...         return self.start / 2 ** (t - 1)
        >>> s = Halving(1.0)
        >>> s(3), [v for v, _ in zip(s, range(3))]
        (0.25, [1.0, 0.5, 0.25])
        >>> ft.Schedule.from_dict(s.to_dict())
        Halving(start=1.0)
    """

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        # every schedule class, ours or a user's, can be rebuilt by name in from_dict
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    def __call__(self, t: float) -> Any:
        """The schedule's value at iteration ``t`` (``t = 1`` is the first iteration)."""
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(
                f"{type(self).__name__} is evaluated at an iteration number t (1, 2, ...), "
                f"got {t!r}"
            )
        return self._value(t)

    def _value(self, t: float) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _value(t)")

    def _length(self) -> int | None:
        """Number of iterations, or ``None`` for an infinite schedule."""
        return None

    def __len__(self) -> int:
        n = self._length()
        if n is None:
            raise TypeError(
                f"{type(self).__name__} is an infinite schedule and has no length; "
                f"take values with zip(schedule, range(n))"
            )
        return n

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Any]:
        n = self._length()
        t = 1
        while n is None or t <= n:
            yield self(t)
            t += 1

    def fields(self) -> dict[str, Any]:
        """The schedule's parameters, by name (its dataclass fields, in order).

        Example:
            >>> import fluxtrain as ft
            >>> ft.Exp(0.1, 0.5).fields()
            {'start': 0.1, 'decay': 0.5}
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description ``{"type": name, field: value, ...}`` (nested schedules too).

        Fields holding arbitrary Python functions cannot be described and raise ``TypeError``.

        Example:
            >>> import fluxtrain as ft
            >>> ft.Sequence((1.0, 2), (ft.Exp(0.1, 0.5), 10)).to_dict()["schedules"][1]
            {'type': 'Exp', 'start': 0.1, 'decay': 0.5}
        """
        out: dict[str, Any] = {"type": type(self).__name__}
        for name, value in self.fields().items():
            out[name] = _encode(value, f"{type(self).__name__}.{name}")
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from [`to_dict`][fluxtrain.schedules.Schedule.to_dict]'s output.

        Example:
            >>> import fluxtrain as ft
            >>> s = ft.CosAnneal(l0=0.0, l1=1.0, period=4)
            >>> ft.Schedule.from_dict(s.to_dict()) == s
            True
        """
        return _decode(d)


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"{where} holds {value!r}, which cannot be written as JSON; use schedule classes "
        f"(ft.Exp, ft.Loop, ...) instead of Python functions to make it serialisable"
    )


def _decode(d: Any) -> Any:
    if isinstance(d, dict) and "type" in d:
        name = d["type"]
        cls = _REGISTRY.get(name)
        if cls is None:
            raise ValueError(f"unknown schedule type {name!r} (known: {sorted(_REGISTRY)})")
        kw = {k: _decode(v) for k, v in d.items() if k != "type"}
        return cls(**kw)
    if isinstance(d, list):
        return tuple(_decode(v) for v in d)
    return d


def schedule_class(cls: S) -> S:
    """Make ``cls`` a frozen dataclass (immutable, hashed and compared by value)."""
    return dataclasses.dataclass(frozen=True)(cls)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the schedule modules


def check_real(owner: str, name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {v!r}")
    if math.isnan(v):
        raise ValueError(f"{owner}: {name} must not be NaN")


def check_count(owner: str, name: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {v}")


def check_callable(owner: str, name: str, f: Any) -> None:
    if not callable(f):
        raise TypeError(f"{owner}: {name} must be a schedule or a function of t, got {f!r}")


def as_schedule(v: Any) -> Callable[[float], Any]:
    """Numbers become [`Constant`][fluxtrain.schedules.Constant] schedules (ParameterSchedulers does the same)."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        from .compose import Constant

        return Constant(v)
    return v


def length_of(f: Any) -> int | None:
    """Length of a finite schedule, ``None`` for infinite ones and plain functions."""
    if isinstance(f, Schedule):
        return f._length()
    return None


def past_end(owner: Schedule, t: float, n: int) -> IndexError:
    return IndexError(
        f"{owner!r} has {n} iterations; it was evaluated at t={t}, past its end "
        f"(wrap it in ft.Loop or a Sequence to continue)"
    )
