"""``CustomCallback`` (a function as a callback) and ``Throttle`` (run a callback less often).

FluxTraining.jl ``CustomCallback`` (``src/callbacks/custom.jl``) and ``throttle``/
``ConditionalCallback`` (``src/callbacks/conditional.jl``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..callback import Callback
from ..events import Event, StepEnd
from ..phases import Phase

__all__ = ["CustomCallback", "Throttle"]


def _types(x: Any, what: str) -> tuple[type, ...]:
    t = x if isinstance(x, tuple) else (x,)
    for c in t:
        if not isinstance(c, type):
            raise TypeError(f"{what} must be classes (e.g. ft.StepEnd), got {c!r}")
    return t


class CustomCallback(Callback):
    """Calls ``fn(learner)`` on ``event`` during phases of type ``phase``.

    ``reads``/``writes`` declare the state ``fn`` touches, as for any callback.

    Example:
        >>> import torch, fluxtrain as ft
        >>> losses = []
        >>> cb = ft.callbacks.CustomCallback(lambda lr: losses.append(float(lr.step.loss)),
        ...                                  ft.StepEnd, ft.TrainingPhase, reads=("step.loss",))
        >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[cb], usedefaultcallbacks=False)
        >>> ft.epoch_(learner, ft.TrainingPhase(), [(torch.ones(2, 1), torch.ones(2, 1))] * 3)
        >>> len(losses)
        3
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        event: type[Event] | tuple[type[Event], ...] = StepEnd,
        phase: type | tuple[type, ...] = Phase,
        reads: tuple[str, ...] = (),
        writes: tuple[str, ...] = (),
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CustomCallback needs a function fn(learner), got {fn!r}")
        self.fn = fn
        self.handles = _types(event, "event")  # type: ignore[misc]
        self.phase = _types(phase, "phase")
        self.reads = tuple(reads)  # type: ignore[misc]
        self.writes = tuple(writes)  # type: ignore[misc]

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if isinstance(phase, self.phase):
            self.fn(learner)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        events = ", ".join(e.__name__ for e in self.handles or ())
        return f"CustomCallback({name}, {events})"


class Throttle(Callback):
    """Passes ``event`` to the wrapped ``callback`` only every ``every``-th time (the 1st, the
    ``every+1``-th, ...) or at most once per ``seconds``; other events pass unchanged.

    The wrapper declares what the wrapped callback declares and stands in for it in ordering
    (``runafter``) and ``learner.get_callback``.

    Example:
        >>> import fluxtrain as ft
        >>> ft.callbacks.Throttle(ft.callbacks.Recorder(), every=2, event=ft.StepEnd)
        Throttle(Recorder(), every=2, event=StepEnd)
    """

    def __init__(
        self,
        callback: Callback,
        every: int | None = None,
        seconds: float | None = None,
        event: type[Event] | tuple[type[Event], ...] = StepEnd,
    ) -> None:
        if not isinstance(callback, Callback):
            raise TypeError(f"Throttle wraps a callback instance, got {callback!r}")
        if (every is None) == (seconds is None):
            raise ValueError("Throttle: give exactly one of every=... or seconds=...")
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise ValueError(f"Throttle: every must be an int >= 1, got {every!r}")
        if seconds is not None and seconds < 0:
            raise ValueError(f"Throttle: seconds must be >= 0, got {seconds}")
        self.callback = callback
        self.every = every
        self.seconds = seconds
        self.events = _types(event, "event")
        self.reads = callback.reads  # type: ignore[misc]
        self.writes = callback.writes  # type: ignore[misc]
        self.runafter = callback.runafter  # type: ignore[misc]
        self.runbefore = callback.runbefore  # type: ignore[misc]
        self.handles = callback.handles  # type: ignore[misc]
        self._count: dict[type, int] = {}
        self._last: dict[type, float] = {}

    def _due(self, evtype: type) -> bool:
        if self.every is not None:
            n = self._count.get(evtype, 0)
            self._count[evtype] = n + 1
            return n % self.every == 0
        now = time.monotonic()
        last = self._last.get(evtype)
        if last is None or now - last >= self.seconds:  # type: ignore[operator]
            self._last[evtype] = now
            return True
        return False

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not isinstance(event, self.events) or self._due(type(event)):
            self.callback.on(event, phase, learner)

    def init(self, learner: Any) -> None:
        self.callback.init(learner)

    def is_a(self, cls: type) -> bool:
        return isinstance(self, cls) or self.callback.is_a(cls)

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": {t.__name__: n for t, n in self._count.items()},
            "callback": self.callback.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        by_name = {t.__name__: t for t in self.events}
        self._count = {by_name[k]: int(n) for k, n in state["counts"].items() if k in by_name}
        self.callback.load_state_dict(state["callback"])

    def __repr__(self) -> str:
        limit = f"every={self.every}" if self.every is not None else f"seconds={self.seconds}"
        events = ", ".join(e.__name__ for e in self.events)
        return f"Throttle({self.callback!r}, {limit}, event={events})"
