"""``StopOnNaNLoss`` and ``EarlyStopping``: end fitting with a recorded reason.

Both raise [`CancelFittingException`][fluxtrain.learner.CancelFittingException]; [`fit_`][fluxtrain.learner.fit_] then returns
normally with the exception in ``learner.stop_reason`` (FluxTraining.jl issue #159).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...checkpoint import _model_tensors
from ...optimisers.engine import first_nonfinite
from ...tree import trainables
from ..callback import Callback
from ..events import BackwardEnd, EpochEnd, Event, FitEnd, StepEnd
from ..exceptions import CancelFittingException
from ..phases import AbstractTrainingPhase, AbstractValidationPhase
from ..state import phase_key
from .device import ToDevice

__all__ = ["EarlyStopping", "StopOnNaNLoss"]


class StopOnNaNLoss(Callback):
    """Stops fitting when a training step's loss, or its gradient, is NaN or infinite.

    Checked at ``BackwardEnd``, so the parameters keep their last finite values (no update is
    made from that batch), and at ``StepEnd`` of training phases that fire no ``BackwardEnd``.
    With ``gradients=True`` (the default) a finite loss whose gradient holds an Inf or NaN
    (``sqrt`` at 0, an overflow in backward) stops fitting too, naming the parameter: one
    reduction over the gradients per step.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.ones(2, 1), torch.full((2, 1), float("nan")))]
        >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.StopOnNaNLoss()], data=data,
        ...                      usedefaultcallbacks=False)
        >>> ft.fit_(learner, 3).stop_reason.msg
        'loss is nan at a step of TrainingPhase; stopped before updating the parameters'
    """

    reads = ("step.loss", "step.grads")
    handles = (BackwardEnd, StepEnd)

    def __init__(self, gradients: bool = True) -> None:
        if not isinstance(gradients, bool):
            raise TypeError(f"StopOnNaNLoss(gradients=...) must be a bool, got {gradients!r}")
        self.gradients = gradients
        self._checked = False  # this step's loss was checked at BackwardEnd

    def __repr__(self) -> str:
        return "StopOnNaNLoss()" if self.gradients else "StopOnNaNLoss(gradients=False)"

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
        if math.isfinite(v) and self.gradients and isinstance(event, BackwardEnd):
            grads = learner.step.grads
            if grads is not None:
                bad = first_nonfinite(trainables(grads, path=True))
                if bad is not None:
                    raise CancelFittingException(
                        f"the gradient at {bad} contains Inf or NaN at a step of "
                        f"{phase_key(phase)} (its loss {v} is finite); stopped before updating "
                        f"the parameters"
                    )
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

    It stops at that epoch's ``EpochEnd``, so the epoch counts as done: ``learner.epoch``
    includes it, the callbacks after this one (``Checkpointer``, loggers) still see its
    ``EpochEnd``, and a run resumed from its checkpoint goes on with the next epoch.

    With ``restore_best=True`` it keeps a copy (on the CPU) of the model's parameters and
    buffers from the best epoch and copies it back into the model at ``FitEnd``, so the fit
    ends with the best weights seen (Keras's ``restore_best_weights``; the optimiser state is
    not restored).  The copy is part of the callback's state, so it travels in checkpoints and
    a resumed run restores it too (each checkpoint then holds the model twice).

    Example:
        >>> from fluxtrain.callbacks import EarlyStopping
        >>> EarlyStopping(3, metric="Accuracy", mode="max")
        EarlyStopping(patience=3, metric='Accuracy', mode='max')
        >>> EarlyStopping(2, restore_best=True)
        EarlyStopping(patience=2, metric='Loss', mode='min', restore_best=True)
    """

    reads = ("cbstate.metrics_epoch",)
    handles = (EpochEnd,)
    runafter = (ToDevice,)  # both write the model when restore_best=True

    def __init__(
        self,
        patience: int = 1,
        metric: str = "Loss",
        mode: str = "min",
        min_delta: float = 0.0,
        phase: type = AbstractValidationPhase,
        restore_best: bool = False,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta}")
        if not isinstance(restore_best, bool):
            raise TypeError(
                f"EarlyStopping: restore_best must be True or False, got {restore_best!r}"
            )
        self.patience = patience
        self.metric = metric
        self.mode = mode
        self.min_delta = min_delta
        self.phase = phase
        self.restore_best = restore_best
        self.best: float | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        if restore_best:
            self.reads = ("cbstate.metrics_epoch", "model")  # type: ignore[misc]
            self.writes = ("model",)  # type: ignore[misc]
            self.handles = (EpochEnd, FitEnd)  # type: ignore[misc]

    def _improves(self, v: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return v < self.best - self.min_delta
        return v > self.best + self.min_delta

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if isinstance(event, FitEnd):
            if self.restore_best and self.best_weights is not None:
                self._restore(learner.model)
            return
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
            if self.restore_best:
                self.best_weights = {
                    p: t.detach().to("cpu", copy=True) for p, t in _model_tensors(learner.model)
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            raise CancelFittingException(
                f"early stopping: {self.metric} of {phase_key(phase)} has not improved for "
                f"{self.wait} epoch(s) (best {self.best:.6g}, last {v:.6g})"
            )

    def _restore(self, model: Any) -> None:
        best = self.best_weights or {}
        present = dict(_model_tensors(model))
        if present.keys() != best.keys() or any(present[p].shape != best[p].shape for p in present):
            raise ValueError(
                "EarlyStopping(restore_best=True): the model's parameters and buffers are no "
                "longer those the best weights were taken from; nothing was restored"
            )
        with torch.no_grad():
            for p, t in present.items():
                t.copy_(best[p])

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best": self.best, "wait": self.wait}
        if self.restore_best:
            out["best_weights"] = self.best_weights
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best, wait = state["best"], int(state["wait"])
        weights = state.get("best_weights")
        if weights is not None and not (
            isinstance(weights, dict) and all(isinstance(t, torch.Tensor) for t in weights.values())
        ):
            raise ValueError("EarlyStopping: best_weights must be a dict of tensors")
        self.best, self.wait = best, wait
        if self.restore_best:
            self.best_weights = weights

    def __repr__(self) -> str:
        out = f"EarlyStopping(patience={self.patience}, metric={self.metric!r}, mode={self.mode!r}"
        return out + (", restore_best=True)" if self.restore_best else ")")
