"""``Stateful`` schedules and ``next_`` (ParameterSchedulers.jl ``Stateful``/``next!``).

Schedules are stateless: ``s(t)`` needs the iteration ``t``.  A [`Stateful`][fluxtrain.schedules.Stateful] keeps ``t``
for you, so a training loop can ask for the next value (seed 000)::

    schedule = ft.Stateful(ft.Cos(l0=1e-4, l1=1e-2, period=10))
    for epoch in range(100):
        ft.adjust_(opt_state, ft.next_(schedule))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import check_callable, length_of

__all__ = ["Stateful", "next_"]


def _always(state: int) -> bool:
    return True


class Stateful:
    """A schedule together with its iteration counter ``state`` (starting at 1).

    [`next_`][fluxtrain.schedules.next_] returns ``schedule(state)`` and then advances ``state`` by one if
    ``advance(state)`` is true (default: always).  ``ft.reset_(st)`` sets ``state`` back to 1.
    A ``Stateful`` is also a Python iterator: ``next(st)`` is ``ft.next_(st)``, and iteration
    stops at the end of a finite schedule.  (ParameterSchedulers.jl ``src/complex.jl``.)

    Example:
        >>> import fluxtrain as ft
        >>> st = ft.Stateful(ft.Exp(1.0, 0.5))
        >>> ft.next_(st), ft.next_(st), ft.next_(st)
        (1.0, 0.5, 0.25)
        >>> ft.reset_(st); ft.next_(st)
        1.0
        >>> held = ft.Stateful(ft.Exp(1.0, 0.5), advance=lambda t: t < 2)
        >>> [ft.next_(held) for _ in range(4)]
        [1.0, 0.5, 0.5, 0.5]
    """

    __slots__ = ("advance", "schedule", "state")

    def __init__(
        self, schedule: Callable[[int], Any], advance: Callable[[int], bool] | None = None
    ) -> None:
        check_callable("Stateful", "schedule", schedule)
        if advance is not None and not callable(advance):
            raise TypeError(
                f"Stateful: advance must be a function of the state (an int), got {advance!r}"
            )
        self.schedule = schedule
        self.state = 1
        self.advance = _always if advance is None else advance

    def __repr__(self) -> str:
        return f"Stateful({self.schedule!r}, state={self.state})"

    def _reset_(self) -> None:
        """Back to the first iteration (called by ``ft.reset_``)."""
        self.state = 1

    def __iter__(self) -> Stateful:
        return self

    def __next__(self) -> Any:
        n = length_of(self.schedule)
        if n is not None and self.state > n:
            raise StopIteration
        return next_(self)


def next_(st: Stateful) -> Any:
    """Return ``st``'s current value and advance it (ParameterSchedulers.jl ``next!``).

    Example:
        >>> import fluxtrain as ft
        >>> st = ft.Stateful(ft.Step(1.0, 0.1, 2))
        >>> [ft.next_(st) for _ in range(3)]
        [1.0, 1.0, 0.1]
    """
    if not isinstance(st, Stateful):
        raise TypeError(
            f"next_ advances a ft.Stateful schedule, got {type(st).__name__}; "
            f"wrap the schedule: st = ft.Stateful(schedule)"
        )
    val = st.schedule(st.state)
    if st.advance(st.state):
        st.state += 1
    return val
