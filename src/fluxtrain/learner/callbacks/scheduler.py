"""``Scheduler``: hyperparameters that follow schedules, set on the optimiser state each step.

FluxTraining.jl's ``Scheduler`` (``src/callbacks/scheduler.jl``) sets hyperparameters on its own
optimiser wrapper; here the values go through ``ft.adjust_`` into ``learner.opt_state``, the very
state ``ft.update_`` reads, so the parameters move with the scheduled rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...optimisers import adjust_
from ..callback import Callback
from ..events import EpochBegin, Event, StepBegin
from ..phases import AbstractTrainingPhase
from .metrics import MetricHistory

__all__ = ["Scheduler"]


class Scheduler(Callback):
    """Sets hyperparameters from schedules before each training step (or epoch).

    ``Scheduler(eta=schedule)`` (also ``Scheduler({"eta": schedule})``): before the ``t``-th
    training step (``t`` from 1) it calls ``ft.adjust_(learner.opt_state, eta=schedule(t))``.
    Any hyperparameter of the rules works (``eta``/``lr``, ``rho``, ``beta``, ``lambd`` ...); a
    schedule is any callable ``s(t)`` (``ft.Exp``, ``ft.CosAnneal``..., or a function).
    ``per="epoch"`` steps the schedules once per training epoch instead.  ``select`` picks the
    part of the state to adjust, e.g. ``select=lambda st: st["generator"]``.  The values used
    are recorded in ``cbstate.hyperparams`` (a ``MetricHistory`` against the step number).
    Only training phases (``AbstractTrainingPhase``) advance the schedules.

    Example:
        >>> import torch, fluxtrain as ft
        >>> x = torch.ones(1, 1)
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> sched = ft.callbacks.Scheduler(eta=lambda t: 0.1 * t)
        >>> learner = ft.Learner(model, lambda yp, y: yp.sum(), ft.Descent(), callbacks=[sched],
        ...                      usedefaultcallbacks=False)
        >>> ft.epoch_(learner, ft.TrainingPhase(), [(x, x)] * 3)   # steps by 0.1, 0.2, 0.3
        >>> round(model.weight.item(), 6), learner.cbstate.hyperparams["eta"]
        (-0.6, [0.1, 0.2, 0.30000000000000004])
    """

    writes = ("opt_state", "cbstate.hyperparams")
    handles = (StepBegin, EpochBegin)

    def __init__(
        self,
        schedules: Mapping[str, Callable[[int], Any]] | None = None,
        /,
        *,
        per: str = "step",
        select: Callable[[Any], Any] | None = None,
        **named: Callable[[int], Any],
    ) -> None:
        merged = dict(schedules or {})
        merged.update(named)
        if not merged:
            raise ValueError(
                "Scheduler needs at least one schedule, e.g. Scheduler(eta=ft.Exp(...))"
            )
        for name, s in merged.items():
            if not callable(s):
                raise TypeError(f"Scheduler: the schedule for {name!r} must be callable as s(t)")
        if per not in ("step", "epoch"):
            raise ValueError(f"Scheduler: per must be 'step' or 'epoch', got {per!r}")
        self.schedules = merged
        self.per = per
        self.select = select
        self.t = 0

    def init(self, learner: Any) -> None:
        if "hyperparams" not in learner.cbstate:
            learner.cbstate.hyperparams = MetricHistory()

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not isinstance(phase, AbstractTrainingPhase):
            return
        if isinstance(event, StepBegin) != (self.per == "step"):
            return
        t = self.t + 1
        values = {name: s(t) for name, s in self.schedules.items()}
        target = learner.opt_state if self.select is None else self.select(learner.opt_state)
        adjust_(target, **values)
        self.t = t
        hist = learner.cbstate.hyperparams
        for name, v in values.items():
            if isinstance(v, (int, float)):
                hist.add(name, t, float(v))

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])

    def __repr__(self) -> str:
        return f"Scheduler({', '.join(self.schedules)})"
