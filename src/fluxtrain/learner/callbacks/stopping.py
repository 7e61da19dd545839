"""``StopOnNaNLoss`` and ``EarlyStopping``: end fitting with a recorded reason.

Both raise [`CancelFittingException`][fluxtrain.learner.CancelFittingException]; [`fit_`][fluxtrain.learner.fit_] then returns
normally with the exception in ``learner.stop_reason`` (FluxTraining.jl issue #159).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..callback import Callback
from ..events import BackwardEnd, EpochEnd, Event, StepEnd
from ..exceptions import CancelFittingException
from ..phases import AbstractTrainingPhase, AbstractValidationPhase
from ..state import phase_key

__all__ = ["EarlyStopping", "StopOnNaNLoss"]


class StopOnNaNLoss(Callback):
    """Stops fitting when a training step's loss is NaN or infinite.

    Checked at ``BackwardEnd``, so the parameters keep their last finite values (no update is
    made from that batch), and at ``StepEnd`` of training phases that fire no ``BackwardEnd``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.ones(2, 1), torch.full((2, 1), float("nan")))]
        >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.StopOnNaNLoss()], data=data)
        >>> ft.fit_(learner, 3).stop_reason.msg
        'loss is nan at a step of TrainingPhase; stopped before updating the parameters'
    """

    reads = ("step.loss",)
    handles = (BackwardEnd, StepEnd)

    def __init__(self) -> None:
        self._checked = False  # this step's loss was checked at BackwardEnd

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if isinstance(event, StepEnd):
            checked, self._checked = self._checked, False
            if checked or not isinstance(phase, AbstractTrainingPhase):
                return
        else:
            self._checked = True
        loss = learner.step.loss
        if loss is None:
            return
        v = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(v):
            when = (
                "stopped before updating the parameters"
                if isinstance(event, BackwardEnd)
                else "stopped"
            )
            raise CancelFittingException(f"loss is {v} at a step of {phase_key(phase)}; {when}")


class EarlyStopping(Callback):
    """Stops fitting when ``metric`` has not improved for ``patience`` epochs.

    ``metric`` is a name recorded by ``Metrics`` (``"Loss"`` by default), watched at the end of
    each epoch of ``phase`` (validation by default; pass ``ft.AbstractTrainingPhase`` when there
    is no validation data).  ``mode="min"`` means lower is better, ``"max"`` higher; an epoch
    improves on the best so far when it beats it by more than ``min_delta``.  This is Keras's
    rule; ``EarlyStopping(1)`` stops after the first epoch that does not improve, as
    FluxTraining.jl's ``EarlyStopping(1)`` (EarlyStopping.jl ``Patience(1)``) does for a loss
    that goes up.

    Example:
        >>> from fluxtrain.callbacks import EarlyStopping
        >>> EarlyStopping(3, metric="Accuracy", mode="max")
        EarlyStopping(patience=3, metric='Accuracy', mode='max')
    """

    reads = ("cbstate.metrics_epoch",)
    handles = (EpochEnd,)

    def __init__(
        self,
        patience: int = 1,
        metric: str = "Loss",
        mode: str = "min",
        min_delta: float = 0.0,
        phase: type = AbstractValidationPhase,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta}")
        self.patience = patience
        self.metric = metric
        self.mode = mode
        self.min_delta = min_delta
        self.phase = phase
        self.best: float | None = None
        self.wait = 0

    def _improves(self, v: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not isinstance(phase, self.phase):
            return
        hist = learner.cbstate.metrics_epoch[phase]
        if self.metric not in hist:
            raise KeyError(
                f"EarlyStopping watches {self.metric!r}, which Metrics does not record for "
                f"{phase_key(phase)} (recorded: {hist.names()}); add it to Metrics(...)"
            )
        v = hist.last(self.metric)
        if self._improves(v):
            self.best, self.wait = v, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            raise CancelFittingException(
                f"early stopping: {self.metric} of {phase_key(phase)} has not improved for "
                f"{self.wait} epoch(s) (best {self.best:.6g}, last {v:.6g})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], int(state["wait"])

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, metric={self.metric!r}, mode={self.mode!r})"
        )
