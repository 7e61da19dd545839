"""``Recorder``: counts epochs, steps and samples per phase (FluxTraining.jl
``src/callbacks/recorder.jl``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..callback import Callback
from ..events import EpochBegin, EpochEnd, Event, StepEnd
from ..state import PhaseDict, register_state_type

__all__ = ["History", "Recorder"]


@register_state_type
@dataclasses.dataclass
class History:
    """Counters of one phase: completed ``epochs``, completed ``steps`` (in total),
    ``steps_epoch`` (in the current epoch) and ``samples`` seen."""

    epochs: int = 0
    steps: int = 0
    steps_epoch: int = 0
    samples: int = 0

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, int]) -> History:
        return cls(**d)


def batch_size(xs: Any) -> int:
    """The number of observations in ``xs`` (first dimension; first element of a tuple/dict)."""
    if isinstance(xs, torch.Tensor):
        return int(xs.shape[0]) if xs.dim() > 0 else 1
    if hasattr(xs, "shape") and len(xs.shape) > 0:
        return int(xs.shape[0])
    if isinstance(xs, dict) and xs:
        return batch_size(next(iter(xs.values())))
    if isinstance(xs, (tuple, list)) and xs and hasattr(xs[0], "shape"):
        return batch_size(xs[0])
    try:
        return len(xs)
    except TypeError:
        return 0


class Recorder(Callback):
    """Keeps ``learner.cbstate.history[phase]``, a [`History`][fluxtrain.callbacks.History] per phase.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))] * 3
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.Recorder()], data=data,
        ...                      usedefaultcallbacks=False)
        >>> _ = ft.fit_(learner, 2)
        >>> learner.cbstate.history[ft.TrainingPhase()]
        History(epochs=2, steps=6, steps_epoch=3, samples=48)
    """

    reads = ("step.xs",)
    writes = ("cbstate.history",)
    handles = (EpochBegin, StepEnd, EpochEnd)

    def init(self, learner: Any) -> None:
        if "history" not in learner.cbstate:
            learner.cbstate.history = PhaseDict(History)

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        h = learner.cbstate.history[phase]
        if isinstance(event, StepEnd):
            h.steps += 1
            h.steps_epoch += 1
            h.samples += batch_size(learner.step.xs)
        elif isinstance(event, EpochBegin):
            h.steps_epoch = 0
        else:
            h.epochs += 1
