"""Phases: what one step and one epoch do (FluxTraining.jl ``Phase``, ``step!``, ``epoch!``).

A phase is an object whose [`Phase.step`][fluxtrain.learner.Phase.step] runs one batch and whose [`Phase.epoch`][fluxtrain.learner.Phase.epoch]
iterates over a data iterator.  Write a new training behaviour by subclassing
[`AbstractTrainingPhase`][fluxtrain.learner.AbstractTrainingPhase] (or [`AbstractValidationPhase`][fluxtrain.learner.AbstractValidationPhase]) and overriding ``step``,
then run it with ``epoch_(learner, MyPhase(), data)``; callbacks that act only in training
(``Scheduler``) or only in validation (``EarlyStopping``) recognise it by its base class.

The module-level [`step_`][fluxtrain.learner.step_] and [`epoch_`][fluxtrain.learner.epoch_] (FluxTraining.jl's ``step!``/``epoch!``)
dispatch to the phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .. import _losscall
from ..gradient import _gradient_tree, _sharded, _split_output, gradient
from ..mode import differentiating
from ..optimisers import update_
from ..optimisers.state import unwrap
from .control import Handle, runepoch, runstep
from .events import BackwardBegin, BackwardEnd, LossBegin
from .exceptions import CancelEpochException, CancelStepException, FitException
from .state import StepState

__all__ = [
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "Phase",
    "TrainingPhase",
    "ValidationPhase",
    "epoch_",
    "step_",
]


class Phase:
    """Base class of phases.  Override [`step`][fluxtrain.learner.Phase.step] (and [`epoch`][fluxtrain.learner.Phase.epoch] if one epoch is more than
    "for each batch, one step").

    Phases compare equal when of the same class with equal attributes, so they can key dicts
    (``learner.cbstate.history[TrainingPhase()]``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> class Forward(ft.Phase):
        ...     def step(self, learner, batch):
        ...         return ft.runstep(lambda handle, state: setattr(state, "ys_pred",
        ...                           learner.model(batch)), learner, self)
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[])
        >>> ft.step_(learner, Forward(), torch.ones(3, 2)).ys_pred.shape
        torch.Size([3, 1])
    """

    #: Module mode during the phase's epochs: True (train), False (eval), None (leave as is).
    training: ClassVar[bool | None] = None

    def step(self, learner: Any, batch: Any) -> StepState | None:
        """Run one step on ``batch`` and return its state (``learner.step``)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no step: define step(self, learner, batch) in your phase "
            f"class (see TrainingPhase.step for the standard supervised step)"
        )

    def epoch(self, learner: Any, dataiter: Iterable[Any]) -> None:
        """Run one epoch: ``step_`` on every batch of ``dataiter`` inside [`runepoch`][fluxtrain.learner.runepoch]."""

        def run(handle: Handle) -> None:
            for i, batch in enumerate(dataiter):
                try:
                    step_(learner, self, batch)
                except FitException:
                    raise
                except Exception as e:
                    e.add_note(_where(learner, self, i))
                    raise

        runepoch(run, learner, self)

    def dataiter(self, learner: Any) -> Iterable[Any] | None:
        """The data an epoch of this phase uses when none is given (``None`` here)."""
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class AbstractTrainingPhase(Phase):
    """Base class of phases that train: the model is in training mode during their epochs,
    ``Scheduler`` steps in them, and they use ``learner.data.training`` by default.

    Example:
        >>> import fluxtrain as ft
        >>> isinstance(ft.TrainingPhase(), ft.AbstractTrainingPhase), ft.TrainingPhase.training
        (True, True)
    """

    training: ClassVar[bool | None] = True

    def dataiter(self, learner: Any) -> Iterable[Any] | None:
        return learner.data.training


class AbstractValidationPhase(Phase):
    """Base class of phases that evaluate: the model is in evaluation mode during their
    epochs, ``EarlyStopping`` watches them, and they use ``learner.data.validation`` by default.

    Example:
        >>> import fluxtrain as ft
        >>> ft.ValidationPhase(), ft.ValidationPhase.training
        (ValidationPhase(), False)
    """

    training: ClassVar[bool | None] = False

    def dataiter(self, learner: Any) -> Iterable[Any] | None:
        return learner.data.validation


def _where(learner: Any, phase: Phase, index: int) -> str:
    """Which batch an error came from, as a note on the exception."""
    name = type(phase).__name__
    if getattr(learner, "progress", None) is None:
        return f"(in batch {index + 1} (index {index}) of a {name} epoch)"
    return f"(in batch {index + 1} (index {index}) of {name}, in epoch {learner.epoch + 1} of fit_)"


def _lossfn(learner: Any, ys_pred: Any, ys: Any) -> Any:
    """``learner.lossfn(ys_pred, ys)``, with errors naming the convention and the problem."""
    try:
        loss = learner.lossfn(ys_pred, ys)
    except TypeError as e:
        # The call itself did not fit the signature: most likely train_'s loss(model, x, y).
        if _losscall.accepts(learner.lossfn, 2) is False:
            raise _losscall.learner_convention_error(learner.lossfn) from e
        raise
    _losscall.check_scalar(loss, "the loss lossfn(ŷ, y) returned")
    return loss


def _pair(batch: Any, phase: Phase) -> tuple[Any, Any]:
    """``(xs, ys)`` of a batch: a pair as it is; a dict (Hugging Face style) is ``xs`` whole,
    with its ``"labels"`` (or ``None``) as ``ys``."""
    if isinstance(batch, Mapping):
        return batch, batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    what = (
        f"a {type(batch).__name__} of length {len(batch)}"
        if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}"
    )
    raise TypeError(
        f"{type(phase).__name__} takes batches that are pairs (xs, ys), got {what} (a dict "
        f"batch is also taken, as model(**batch)); for other batch layouts subclass {type(phase).__name__} and override step(self, learner, batch)"
    )


def autocast_context(learner: Any, xs: Any) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` with ``learner.autocast`` as dtype on ``xs``'s device (or nothing)."""
    dtype = getattr(learner, "autocast", None)
    if dtype is None:
        return contextlib.nullcontext()
    if isinstance(xs, Mapping):
        xs = next((v for v in xs.values() if isinstance(v, torch.Tensor)), None)
    device = xs.device.type if isinstance(xs, torch.Tensor) else "cpu"
    return torch.autocast(device_type=device, dtype=dtype)


def _detached(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def forward(model: Any, xs: Any, keywords: bool) -> Any:
    """``model(**xs)`` when the batch was a dict (the keyword arguments of a Hugging Face
    model), ``model(xs)`` otherwise (also when the ``xs`` of a pair is a dict)."""
    if keywords and isinstance(xs, Mapping):
        return model(**xs)
    return model(xs)


def prediction(out: Any) -> Any:
    """What ``lossfn`` and metrics read as ``ys_pred``: the ``logits`` of an output that is a
    dict or a transformers ``ModelOutput`` (a dict too), else the output itself."""
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    return out


def compute_loss(learner: Any, out: Any, state: StepState) -> Any:
    """``lossfn(ys_pred, ys)``, or with ``lossfn=None`` the model output's own ``loss``."""
    if learner.lossfn is not None:
        return _lossfn(learner, state.ys_pred, state.ys)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            f"the Learner has no lossfn, so the loss must come from the model's output, but the "
            f"{type(out).__name__} it returned has no 'loss' (a Hugging Face model computes one "
            f"when the batch has 'labels'); give the Learner a lossfn(ys_pred, ys)"
        )
    return loss


class TrainingPhase(AbstractTrainingPhase):
    """The supervised training step (FluxTraining.jl ``TrainingPhase``).

    For a batch ``(xs, ys)``: ``StepBegin``; forward ``ys_pred = model(xs)``; ``LossBegin``;
    ``loss = lossfn(ys_pred, ys)``; ``BackwardBegin``; ``grads = ft.gradient(...)``;
    ``BackwardEnd``; ``ft.update_(learner.opt_state, learner.model, grads)``; ``StepEnd``.
    A dict batch (Hugging Face style) is ``xs`` whole, the model is called as ``model(**xs)``
    and ``ys`` is ``xs["labels"]`` (the ``xs`` of a pair is passed as one argument even when it
    is a dict); an output that is a dict or a ``ModelOutput`` gives its
    ``logits`` as ``ys_pred``; with ``lossfn=None`` the loss is the output's ``loss``.
    Forward and loss run under ``torch.autocast`` when the learner has ``autocast`` set.
    ``loss`` and ``ys_pred`` are stored detached once the gradient is taken.

    Example:
        >>> import torch, fluxtrain as ft
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> learner = ft.Learner(model, torch.nn.functional.l1_loss, ft.Descent(0.1), callbacks=[])
        >>> state = ft.step_(learner, ft.TrainingPhase(), (torch.ones(4, 1), torch.ones(4, 1)))
        >>> sorted(state.keys())
        ['grads', 'loss', 'xs', 'ys', 'ys_pred']
    """

    def step(self, learner: Any, batch: Any) -> StepState:
        xs, ys = _pair(batch, self)
        keywords = isinstance(batch, Mapping)
        if isinstance(learner.model, nn.Module):
            return runstep(_module_step(learner, keywords), learner, self, {"xs": xs, "ys": ys})

        def run(handle: Handle, state: StepState) -> None:
            def loss_of(model: Any) -> Any:
                with autocast_context(learner, state.xs):
                    out = forward(model, state.xs, keywords)
                    state.ys_pred = prediction(out)
                    handle(LossBegin())
                    state.loss = compute_loss(learner, out, state)
                handle(BackwardBegin())
                return state.loss

            (state.grads,) = gradient(loss_of, learner.model)
            state.loss = _detached(state.loss)
            state.ys_pred = _detached(state.ys_pred)
            handle(BackwardEnd())
            update_(learner.opt_state, learner.model, state.grads)

        return runstep(run, learner, self, {"xs": xs, "ys": ys})


def _module_step(learner: Any, keywords: bool = False) -> Any:
    """The same step for a Module, with the gradient going through ``.grad``.

    It fires the same events and leaves the same state (``state.grads`` is the gradient tree
    ``ft.gradient`` would give), but lets backward write into the update engine's buffers and
    calls ``update_`` without a gradient tree walk: the path ``train_`` takes too.
    """
    model = unwrap(learner.model)
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = None if _sharded(learner.model) else params  # FSDP: see ft.train_

    def run(handle: Handle, state: StepState) -> None:
        for p in params:
            p.grad = None
        with torch.enable_grad(), differentiating(), autocast_context(learner, state.xs):
            out = forward(learner.model, state.xs, keywords)
            state.ys_pred = prediction(out)
            handle(LossBegin())
            state.loss = compute_loss(learner, out, state)
        handle(BackwardBegin())
        loss, _ = _split_output(state.loss)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            torch.autograd.backward(loss, inputs=inputs)
        state.grads = _gradient_tree(model, {id(p): p.grad for p in params})
        state.loss = _detached(state.loss)
        state.ys_pred = _detached(state.ys_pred)
        handle(BackwardEnd())
        try:
            update_(learner.opt_state, learner.model)
        finally:
            for p in params:
                p.grad = None

    return run


class ValidationPhase(AbstractValidationPhase):
    """The validation step: forward and loss without gradients (FluxTraining.jl
    ``ValidationPhase``), firing ``StepBegin``, ``LossBegin``, ``StepEnd``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> learner = ft.Learner(model, torch.nn.functional.l1_loss, callbacks=[])
        >>> state = ft.step_(learner, ft.ValidationPhase(), (torch.ones(4, 1), torch.ones(4, 1)))
        >>> state.grads is None, state.loss.requires_grad
        (True, False)
    """

    def step(self, learner: Any, batch: Any) -> StepState:
        xs, ys = _pair(batch, self)
        keywords = isinstance(batch, Mapping)

        def run(handle: Handle, state: StepState) -> None:
            with torch.no_grad(), autocast_context(learner, state.xs):
                out = forward(learner.model, state.xs, keywords)
                state.ys_pred = prediction(out)
                handle(LossBegin())
                state.loss = compute_loss(learner, out, state)

        return runstep(run, learner, self, {"xs": xs, "ys": ys})


def step_(learner: Any, phase: Phase, batch: Any) -> StepState:
    """Run one step of ``phase`` on ``batch`` (FluxTraining.jl ``step!``); returns the step
    state, ``learner.step``.  A cancelled step returns what it had stored.

    Example:
        >>> import torch, fluxtrain as ft
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss, callbacks=[])
        >>> ft.step_(learner, ft.TrainingPhase(), (torch.ones(3, 2), torch.zeros(3, 1))).xs.shape
        torch.Size([3, 2])
    """
    try:
        state = phase.step(learner, batch)
    except CancelStepException:
        return learner.step
    return learner.step if state is None else state


def _length(it: Any) -> int | None:
    try:
        return len(it)
    except TypeError:
        return None


def epoch_(learner: Any, phase: Phase, dataiter: Iterable[Any] | None = None) -> None:
    """Run one epoch of ``phase`` over ``dataiter`` (default: the phase's data on the learner;
    FluxTraining.jl ``epoch!``).  ``learner.epoch_length`` holds ``len(dataiter)`` meanwhile.

    Example:
        >>> import torch, fluxtrain as ft
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
        ...                      usedefaultcallbacks=False)
        >>> data = [(torch.ones(3, 2), torch.zeros(3, 1))] * 4
        >>> ft.epoch_(learner, ft.TrainingPhase(), data)
        >>> learner.step.loss.shape
        torch.Size([])
    """
    if dataiter is None:
        dataiter = phase.dataiter(learner)
        if dataiter is None:
            role = "validation" if isinstance(phase, AbstractValidationPhase) else "training"
            raise ValueError(
                f"epoch_: no data for {phase!r}: the learner has no {role} data; pass it to "
                f"Learner(..., data=(train, valid)) or as epoch_(learner, phase, data)"
            )
    learner.epoch_length = _length(dataiter)
    try:
        phase.epoch(learner, dataiter)
    except CancelEpochException:
        pass
    finally:
        learner.epoch_length = None
