"""Complex schedules of ParameterSchedulers.jl v0.4 (``src/complex.jl``, ``src/utils.jl``):
Constant, Sequence, Loop, Interpolator, Shifted, ComposedSchedule, Shortened, OneCycle and the
``reverse``/``symmetric`` helpers.

Wherever a schedule is expected, any function of ``t`` works too (``Loop(math.log, 10)``), and
in ``Sequence``/``ComposedSchedule`` a plain number stands for a [`Constant`][fluxtrain.schedules.Constant].  Schedules
made of our classes stay serialisable ([`Schedule.to_dict`][fluxtrain.schedules.Schedule.to_dict]); Python functions do not.
"""

from __future__ import annotations

import bisect
import math
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from ._base import (
    Schedule,
    as_schedule,
    check_callable,
    check_count,
    check_real,
    length_of,
    past_end,
    schedule_class,
)

__all__ = [
    "ComposedSchedule",
    "Constant",
    "Interpolator",
    "Loop",
    "OneCycle",
    "Sequence",
    "Shifted",
    "Shortened",
]


@schedule_class
class Constant(Schedule):
    """A schedule that is always ``value`` (ParameterSchedulers.jl ``src/complex.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> ft.Constant(0.1)(1000)
        0.1
    """

    value: Any

    def _value(self, t: float) -> Any:
        return self.value


class _Segments:
    """The ``(schedule, length)`` pairs of a lazy [`Sequence`][fluxtrain.schedules.Sequence], pulled from the two
    iterables only as far as an iteration ``t`` needs (ParameterSchedulers.jl walks its
    iterators the same way).

    What has been pulled is remembered compactly, so that ``s(t)`` works at any ``t`` again,
    backwards too (a one-shot iterator such as a generator or ``itertools.cycle`` cannot be
    replayed): the end of each segment (8 bytes) and the position of its schedule in a table of
    distinct schedules (8 bytes). A cycle over a few schedules therefore costs 16 bytes per
    segment passed, and nothing is pulled past the segment holding ``t``.
    """

    def __init__(self, schedules: Any, step_sizes: Any) -> None:
        self._pairs = zip(iter(schedules), iter(step_sizes))
        self._ends = array("q")  # cumulative end of each segment pulled
        self._which = array("q")  # index into _table of each segment's schedule
        self._table: list[Any] = []
        self._slot: dict[int, int] = {}  # id(item as given) -> index into _table
        self._given: list[Any] = []  # the items as given, kept alive so their ids stay unique
        self._done = False
        self._lock = threading.Lock()
        if not self._pull():
            raise ValueError("Sequence needs at least one schedule and one step size")

    def _pull(self) -> bool:
        """Pull one more pair; False once either iterable is exhausted."""
        try:
            item, n = next(self._pairs)
        except StopIteration:
            self._done = True
            return False
        k = len(self._ends)
        check_count("Sequence", f"step_sizes[{k}]", n)
        slot = self._slot.get(id(item))
        if slot is None:
            sched = as_schedule(item)
            check_callable("Sequence", f"schedules[{k}]", sched)
            slot = self._slot[id(item)] = len(self._table)
            self._table.append(sched)
            self._given.append(item)
        self._ends.append((self._ends[-1] if k else 0) + int(n))
        self._which.append(slot)
        return True

    def locate(self, t: float) -> tuple[Any, float]:
        """The schedule running at ``t`` and ``t`` counted from its start (from 1)."""
        with self._lock:
            while not self._done and self._ends[-1] < t and self._pull():
                pass
            # The first segment ending at or after t; past the last, the last one continues.
            k = min(bisect.bisect_left(self._ends, t), len(self._ends) - 1)
            start = self._ends[k - 1] if k else 0
            return self._table[self._which[k]], t - start


def _is_sized(x: Any) -> bool:
    return isinstance(x, Sized) and not isinstance(x, Iterator)


@schedule_class
class Sequence(Schedule):
    """Schedules one after another: each runs for its number of iterations, with its own ``t``
    counting from 1 again (ParameterSchedulers.jl ``src/complex.jl``).

    Give ``(schedule, length)`` pairs positionally (Julia's ``schedule => length``), or the two
    collections by keyword: ``Sequence(schedules=[...], step_sizes=[...])``.  Numbers stand for
    constants.  Past the total length the last schedule simply continues.

    ``schedules`` and ``step_sizes`` may also be iterators or other iterables without a length,
    infinite ones included (``itertools.cycle``, ``itertools.repeat``, a generator): they are
    then consumed lazily, only as far as the largest ``t`` asked for, as ParameterSchedulers.jl
    does. The pairs pulled are remembered (16 bytes each), so the schedule can be evaluated at
    any ``t`` again. Such a Sequence has no length and cannot be written with
    [`to_dict`][fluxtrain.schedules.Schedule.to_dict]; when either iterable ends, the last schedule continues.

    Example:
        >>> import itertools, fluxtrain as ft
        >>> s = ft.Sequence((1.0, 1), (ft.Step(0.1, 0.5, 10), 50))  # Julia: 1 => 1, Step(...) => 50
        >>> s(1), s(2), s(42), s(52)
        (1.0, 0.1, 0.00625, 0.003125)
        >>> ft.Sequence(schedules=[0.5, 0.1], step_sizes=[2, 2])(3)
        0.1
        >>> warm_restarts = ft.Sequence(  # 1.0 then 0.5 for 2 steps each, again and again
        ...     schedules=itertools.cycle([1.0, 0.5]), step_sizes=itertools.repeat(2)
        ... )
        >>> [warm_restarts(t) for t in range(1, 9)], warm_restarts(10**6)
        ([1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5], 0.5)
    """

    schedules: tuple[Any, ...] | Iterable[Any]
    step_sizes: tuple[int, ...] | Iterable[int]
    # Not a field (no annotation): the lazy pairs, or None when both lists are stored; the
    # class default covers instances rebuilt without __init__ (copies, checkpoints).
    _segments = None

    def __init__(
        self,
        *pairs: tuple[Any, int],
        schedules: Any = None,
        step_sizes: Any = None,
    ) -> None:
        if pairs:
            if schedules is not None or step_sizes is not None:
                raise TypeError(
                    "Sequence takes either (schedule, length) pairs or schedules=/step_sizes=, "
                    "not both"
                )
            for i, p in enumerate(pairs):
                if not (isinstance(p, (tuple, list)) and len(p) == 2):
                    raise TypeError(
                        f"Sequence: argument {i} must be a (schedule, length) pair, got {p!r}"
                    )
            schedules = [p[0] for p in pairs]
            step_sizes = [p[1] for p in pairs]
        if schedules is None or step_sizes is None:
            raise TypeError("Sequence needs (schedule, length) pairs or schedules= and step_sizes=")
        for name, v in (("schedules", schedules), ("step_sizes", step_sizes)):
            if not isinstance(v, Iterable) or isinstance(v, str | bytes):
                raise TypeError(
                    f"Sequence: {name} must be a list, a tuple or another iterable, got {v!r}"
                )
        if not (_is_sized(schedules) and _is_sized(step_sizes)):
            # At least one without a length (an iterator, possibly infinite): consume lazily.
            # The finite one becomes a tuple (hashable: rules holding schedules are dict keys).
            schedules = tuple(schedules) if _is_sized(schedules) else schedules
            step_sizes = tuple(step_sizes) if _is_sized(step_sizes) else step_sizes
            object.__setattr__(self, "_segments", _Segments(schedules, step_sizes))
            object.__setattr__(self, "schedules", schedules)
            object.__setattr__(self, "step_sizes", step_sizes)
            return
        schedules, step_sizes = tuple(schedules), tuple(step_sizes)
        if not schedules:
            raise ValueError("Sequence needs at least one schedule")
        if len(schedules) != len(step_sizes):
            raise ValueError(
                f"Sequence: {len(schedules)} schedules but {len(step_sizes)} step sizes"
            )
        scheds = tuple(as_schedule(s) for s in schedules)
        for i, s in enumerate(scheds):
            check_callable("Sequence", f"schedules[{i}]", s)
        for i, n in enumerate(step_sizes):
            check_count("Sequence", f"step_sizes[{i}]", n)
        object.__setattr__(self, "_segments", None)
        object.__setattr__(self, "schedules", scheds)
        object.__setattr__(self, "step_sizes", tuple(int(n) for n in step_sizes))

    def __deepcopy__(self, memo: dict[int, Any]) -> Sequence:
        # Immutable by value; a lazy one holds iterators that cannot be copied, and sharing
        # its cache of pulled segments is harmless (they never change).
        return self

    def _locate(self, t: float) -> tuple[Any, float]:
        if self._segments is not None:
            return self._segments.locate(t)
        start = 0
        for s, n in zip(self.schedules[:-1], self.step_sizes[:-1]):
            if t <= start + n:
                return s, t - start
            start += n
        return self.schedules[-1], t - start

    def _value(self, t: float) -> Any:
        s, local = self._locate(t)
        return s(local)

    def _length(self) -> int | None:
        if self._segments is not None:
            return None
        last = length_of(self.schedules[-1])
        return None if last is None else sum(self.step_sizes[:-1]) + last


@schedule_class
class Loop(Schedule):
    """Repeat ``f`` every ``period`` iterations: ``f(mod1(t, period))`` where
    ``mod1(t, p) = (t - 1) mod p + 1`` (ParameterSchedulers.jl ``src/complex.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.Loop(ft.Exp(1.0, 0.5), 3)
        >>> [s(t) for t in range(1, 7)]
        [1.0, 0.5, 0.25, 1.0, 0.5, 0.25]
    """

    f: Any
    period: int

    def __post_init__(self) -> None:
        check_callable("Loop", "f", self.f)
        check_count("Loop", "period", self.period)

    def _value(self, t: float) -> Any:
        return self.f((t - 1) % self.period + 1)


_ROUNDINGS: dict[str, Callable[[float], Any]] = {
    "ceil": math.ceil,
    "floor": math.floor,
    "round": round,
    "identity": lambda x: x,
}


@schedule_class
class Interpolator(Schedule):
    """``schedule(ceil_fn(t / rate))``: a schedule written in coarse units (epochs) read at a
    finer rate (``rate`` mini-batches per epoch), or at real-valued ``t``
    (ParameterSchedulers.jl ``src/complex.jl``).

    ``ceil_fn`` is ``"ceil"`` (the default, Julia's ``x -> ceil(Int, x)``), ``"floor"``,
    ``"round"``, ``"identity"`` or any function.

    Example:
        >>> import fluxtrain as ft
        >>> per_epoch = ft.Sequence(schedules=[1, 2, 3], step_sizes=[1, 1, 1])
        >>> s = ft.Interpolator(per_epoch, 2)  # 2 batches per epoch
        >>> [s(t) for t in range(1, 7)]
        [1, 1, 2, 2, 3, 3]
    """

    schedule: Any
    rate: float
    ceil_fn: Any = "ceil"

    def __post_init__(self) -> None:
        check_callable("Interpolator", "schedule", self.schedule)
        check_real("Interpolator", "rate", self.rate)
        if self.rate <= 0:
            raise ValueError(f"Interpolator: rate must be positive, got {self.rate}")
        if isinstance(self.ceil_fn, str):
            if self.ceil_fn not in _ROUNDINGS:
                raise ValueError(
                    f"Interpolator: ceil_fn must be one of {sorted(_ROUNDINGS)} or a function, "
                    f"got {self.ceil_fn!r}"
                )
        else:
            check_callable("Interpolator", "ceil_fn", self.ceil_fn)

    def _value(self, t: float) -> Any:
        fn = _ROUNDINGS[self.ceil_fn] if isinstance(self.ceil_fn, str) else self.ceil_fn
        return self.schedule(fn(t / self.rate))

    def _length(self) -> int | None:
        n = length_of(self.schedule)
        if n is None or self.ceil_fn != "ceil":
            return None
        return math.floor(n * self.rate)


@schedule_class
class Shifted(Schedule):
    """``schedule`` started at iteration ``offset``: ``Shifted(s, k)(t) == s(t - 1 + k)``
    (ParameterSchedulers.jl ``src/complex.jl``).

    Example:
        >>> import fluxtrain as ft
        >>> ft.Shifted(ft.Exp(1.0, 0.5), 3)(1)
        0.25
    """

    schedule: Any
    offset: int

    def __post_init__(self) -> None:
        check_callable("Shifted", "schedule", self.schedule)
        check_real("Shifted", "offset", self.offset)

    def _value(self, t: float) -> Any:
        return self.schedule(t - 1 + self.offset)

    def _length(self) -> int | None:
        n = length_of(self.schedule)
        return None if n is None else max(0, n - self.offset + 1)


@schedule_class
class ComposedSchedule(Schedule):
    """A schedule whose own parameters follow schedules: at iteration ``t`` it rebuilds
    ``schedule`` from ``ps = [p(t) for p in parameters]`` and returns the rebuilt schedule's
    value at ``t`` (ParameterSchedulers.jl ``src/complex.jl``).

    By default the rebuild is ``type(schedule)(*ps)`` (the positional fields, in order); give
    ``compose_fn(schedule, ps)`` to rebuild differently.  Julia's argument order
    ``ComposedSchedule(compose_fn, schedule, parameters)`` is accepted too.  Numbers in
    ``parameters`` are constants.

    Example:
        >>> import fluxtrain as ft
        >>> # a triangle wave whose amplitude decays by 0.5 every 2-iteration period
        >>> amp = ft.Interpolator(ft.Exp(1.0, 0.5), 2)
        >>> s = ft.ComposedSchedule(ft.Triangle(1.0, 0.0, 2), (amp, 0.0, 2))
        >>> [round(s(t), 6) for t in range(1, 7)]
        [0.0, 1.0, 0.0, 0.5, 0.0, 0.25]
    """

    schedule: Any
    parameters: tuple[Any, ...]
    compose_fn: Any = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        if len(args) == 3 and not isinstance(args[0], Schedule) and callable(args[0]):
            args = (args[1], args[2], args[0])  # Julia's order: (compose_fn, schedule, params)
        names = ("schedule", "parameters", "compose_fn")
        if len(args) > 3:
            raise TypeError(f"ComposedSchedule takes at most 3 positional arguments: {names}")
        given = dict(zip(names, args))
        for k, v in kw.items():
            if k not in names:
                raise TypeError(f"ComposedSchedule got an unexpected keyword argument {k!r}")
            if k in given:
                raise TypeError(f"ComposedSchedule got {k} twice")
            given[k] = v
        if "schedule" not in given or "parameters" not in given:
            raise TypeError("ComposedSchedule needs a schedule and its parameters")
        schedule, compose_fn = given["schedule"], given.get("compose_fn")
        params = given["parameters"]
        if not isinstance(params, (tuple, list)):
            raise TypeError(
                f"ComposedSchedule: parameters must be a tuple of schedules or numbers, "
                f"got {params!r}"
            )
        # any non-callable (a number, a bool such as CosAnneal's restart) is a constant
        params = tuple(p if callable(p) else Constant(p) for p in params)
        if compose_fn is None and not isinstance(schedule, Schedule):
            raise TypeError(
                "ComposedSchedule: without compose_fn, schedule must be a schedule object "
                f"(it is rebuilt from its class), got {schedule!r}"
            )
        if compose_fn is not None:
            check_callable("ComposedSchedule", "compose_fn", compose_fn)
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "parameters", params)
        object.__setattr__(self, "compose_fn", compose_fn)

    def _value(self, t: float) -> Any:
        ps = tuple(p(t) for p in self.parameters)
        if self.compose_fn is None:
            s = type(self.schedule)(*ps)
        else:
            s = self.compose_fn(self.schedule, ps)
        return s(t)

    def _length(self) -> int | None:
        return length_of(self.schedule)


@schedule_class
class Shortened(Schedule):
    """``schedule`` cut to its first ``nsteps`` iterations: a finite schedule that raises
    ``IndexError`` past its end (ParameterSchedulers.jl v0.4 ``Shortened``).

    Example:
        >>> import fluxtrain as ft
        >>> list(ft.Shortened(ft.Exp(1.0, 0.5), 3))
        [1.0, 0.5, 0.25]
    """

    schedule: Any
    nsteps: int

    def __post_init__(self) -> None:
        check_callable("Shortened", "schedule", self.schedule)
        check_count("Shortened", "nsteps", self.nsteps)

    def _length(self) -> int:
        return self.nsteps

    def _value(self, t: float) -> Any:
        if t > self.nsteps:
            raise past_end(self, t, self.nsteps)
        return self.schedule(t)


def _halfcos(t: float, period: int) -> float:
    """``(1 + cos(π (t-1) / period)) / 2``: 1 at ``t = 1``, 0 at ``t = period + 1``."""
    return (1 + math.cos(math.pi * (t - 1) / period)) / 2


@schedule_class
class OneCycle(Schedule):
    """One-cycle cosine schedule over ``nsteps`` iterations (Smith & Topin, "Super-Convergence",
    https://arxiv.org/abs/1708.07120), ParameterSchedulers.jl v0.4 ``OneCycle``.

    With ``w = ceil(percent_start * nsteps)`` warm-up iterations and ``d = nsteps - w``:

    - ``t <= w``: half a cosine up from ``startval`` toward ``maxval``:
      ``|startval - maxval| * (1 - cos(π (t-1)/w)) / 2 + min(startval, maxval)``;
    - ``w < t <= nsteps``: half a cosine down from ``maxval`` toward ``endval``:
      ``|maxval - endval| * (1 + cos(π (t-w-1)/d)) / 2 + min(maxval, endval)``;
    - ``t > nsteps`` raises ``IndexError`` (a finite schedule, ``len(s) == nsteps``).

    Defaults ``startval = maxval / 25``, ``endval = maxval / 1e5``, ``percent_start = 0.25``.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.OneCycle(8, 1.0, startval=0.0, endval=0.0, percent_start=0.5)
        >>> [round(v, 4) for v in s]
        [0.0, 0.1464, 0.5, 0.8536, 1.0, 0.8536, 0.5, 0.1464]
    """

    nsteps: int
    maxval: float
    startval: float | None = None
    endval: float | None = None
    percent_start: float = 0.25

    def __post_init__(self) -> None:
        check_count("OneCycle", "nsteps", self.nsteps)
        check_real("OneCycle", "maxval", self.maxval)
        if self.startval is None:
            object.__setattr__(self, "startval", self.maxval / 25)
        if self.endval is None:
            object.__setattr__(self, "endval", self.maxval / 1e5)
        check_real("OneCycle", "startval", self.startval)
        check_real("OneCycle", "endval", self.endval)
        check_real("OneCycle", "percent_start", self.percent_start)
        if not 0 < self.percent_start <= 1:
            raise ValueError(f"OneCycle: percent_start must be in (0, 1], got {self.percent_start}")

    def _length(self) -> int:
        return self.nsteps

    def _value(self, t: float) -> float:
        if t > self.nsteps:
            raise past_end(self, t, self.nsteps)
        w = math.ceil(self.percent_start * self.nsteps)
        lo, hi = self.startval, self.maxval
        if t <= w:
            return abs(lo - hi) * (1 - _halfcos(t, w)) + min(lo, hi)
        end = self.endval
        return abs(hi - end) * _halfcos(t - w, self.nsteps - w) + min(hi, end)


@schedule_class
class Reversed(Schedule):
    """``f(period - t)``: see `reverse`."""

    f: Any
    period: float

    def __post_init__(self) -> None:
        check_callable("reverse", "f", self.f)
        check_real("reverse", "period", self.period)

    def _value(self, t: float) -> Any:
        return self.f(self.period - t)


@schedule_class
class Symmetric(Schedule):
    """``f(t)`` for ``t < period/2``, else ``f(period - t)``: see `symmetric`."""

    f: Any
    period: float

    def __post_init__(self) -> None:
        check_callable("symmetric", "f", self.f)
        check_real("symmetric", "period", self.period)

    def _value(self, t: float) -> Any:
        return self.f(t) if t < self.period / 2 else self.f(self.period - t)


def reverse(f: Callable[[float], Any], period: float) -> Reversed:
    """The schedule ``t -> f(period - t)`` (ParameterSchedulers.jl ``src/utils.jl``).

    Not exported at the top level (it would shadow Python habits); use
    ``ft.schedules.reverse``.

    Example:
        >>> import fluxtrain as ft
        >>> r = ft.schedules.reverse(ft.Exp(1.0, 0.5), 4)
        >>> [r(t) for t in (1, 2, 3)]
        [0.25, 0.5, 1.0]
    """
    return Reversed(f, period)


def symmetric(f: Callable[[float], Any], period: float) -> Symmetric:
    """The schedule that follows ``f(t)`` for ``t < period/2`` and mirrors it afterwards,
    ``f(period - t)`` (ParameterSchedulers.jl ``src/utils.jl``); use ``ft.schedules.symmetric``.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.schedules.symmetric(ft.Exp(1.0, 0.5), 6)
        >>> [s(t) for t in range(1, 6)]
        [1.0, 0.5, 0.25, 0.5, 1.0]
    """
    return Symmetric(f, period)
