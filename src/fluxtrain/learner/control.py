"""``runstep`` and ``runepoch``: run step or epoch code inside the events and control flow.

Both come in two forms (FluxTraining.jl ``src/training.jl``, where they take a ``do`` block):

- a function form, ``runstep(stepfn, learner, phase, initial_state)`` calling
  ``stepfn(handle, state)``, and ``runepoch(epochfn, learner, phase)`` calling
  ``epochfn(handle)``;
- a context-manager form, ``with runstep(learner, phase, initial_state) as (handle, state):`` and
  ``with runepoch(learner, phase) as handle:``.

``handle(event)`` fires an event to the callbacks; ``state`` is the new [`StepState`][fluxtrain.learner.StepState], which
``learner.step`` points to.  ``runstep`` fires ``StepBegin``/``StepEnd`` and swallows a
[`CancelStepException`][fluxtrain.learner.CancelStepException]; ``runepoch`` fires ``EpochBegin``/``EpochEnd``, puts the
model in training (``AbstractTrainingPhase``) or evaluation (``AbstractValidationPhase``) mode for
the epoch, swallows a [`CancelEpochException`][fluxtrain.learner.CancelEpochException], and, when not inside
[`fit_`][fluxtrain.learner.fit_], ends on a [`CancelFittingException`][fluxtrain.learner.CancelFittingException] by recording it in
``learner.stop_reason``.

A ``CancelStepException`` where no step runs, or a ``CancelEpochException`` where no epoch runs,
is a ``RuntimeError`` saying where it may be raised (see ``misplaced_cancel``).

One limit of Python's ``with``: a cancellation raised by a ``StepBegin``/``EpochBegin`` callback
cannot skip the block from inside it, so it leaves the ``with`` statement; [`step_`][fluxtrain.learner.step_] and
[`epoch_`][fluxtrain.learner.epoch_] (and the function forms) catch it.  Built-in phases use the function forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..tree import children
from .events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd, StepBegin, StepEnd
from .exceptions import CancelEpochException, CancelFittingException, CancelStepException
from .state import StepState

__all__ = ["Handle", "runepoch", "runstep"]

# Events at which no step runs, and at which no epoch runs.
_OUTSIDE_STEPS = (FitBegin, FitEnd, EpochBegin, EpochEnd)
_OUTSIDE_EPOCHS = (FitBegin, FitEnd)


def misplaced_cancel(e: BaseException, where: str, event: Any = None) -> RuntimeError | None:
    """The error to raise instead of ``e`` when it cancels something that is not running:
    a ``CancelStepException`` outside any step (at ``EpochBegin``,
    ``EpochEnd``, ``FitBegin``, ``FitEnd`` or in epoch code outside ``runstep``), or a
    ``CancelEpochException`` outside any epoch (at ``FitBegin``/``FitEnd``).
    ``None`` when ``e`` is where it may be.  ``where`` says who raised it and when.

    FluxTraining.jl catches each only around its step (``runstep``) or epoch (``runepoch``);
    anywhere else it escapes ``fit!``.  Here it becomes an error saying where it may be raised.
    """
    if isinstance(e, CancelStepException) and (event is None or isinstance(event, _OUTSIDE_STEPS)):
        return RuntimeError(
            f"{type(e).__name__} raised {where}, outside any step: it may only be raised "
            f"between StepBegin and StepEnd (by step code, or by a callback at StepBegin, "
            f"LossBegin, BackwardBegin, BackwardEnd or StepEnd); raise CancelEpochException to "
            f"skip the rest of an epoch, or CancelFittingException to end fitting"
        )
    if isinstance(e, CancelEpochException) and isinstance(event, _OUTSIDE_EPOCHS):
        return RuntimeError(
            f"{type(e).__name__} raised {where}, outside any epoch: it may only be raised "
            f"between EpochBegin and EpochEnd (by epoch or step code, or by a callback at any "
            f"event from EpochBegin to EpochEnd); raise CancelFittingException to end fitting"
        )
    return None


class Handle:
    """``handle(event)``: fire ``event`` (an [`Event`][fluxtrain.learner.Event] or an event class) to the learner's
    callbacks during ``phase``."""

    __slots__ = ("learner", "phase")

    def __init__(self, learner: Any, phase: Any) -> None:
        self.learner = learner
        self.phase = phase

    def __call__(self, event: Event | type[Event]) -> None:
        if isinstance(event, type):
            event = event()
        self.learner._dispatch(event, self.phase)

    def __repr__(self) -> str:
        return f"Handle({self.phase!r})"


def _initial(initial_state: Any) -> dict[str, Any]:
    if initial_state is None:
        return {}
    if isinstance(initial_state, Mapping):
        return dict(initial_state)
    if hasattr(initial_state, "_asdict"):
        return dict(initial_state._asdict())
    raise TypeError(
        f"initial_state must be a mapping such as {{'xs': xs, 'ys': ys}}, got "
        f"{type(initial_state).__name__}"
    )


def _is_learner(x: Any) -> bool:
    return hasattr(x, "_dispatch")


class StepRun:
    """The context manager returned by ``runstep(learner, phase, initial_state)``."""

    def __init__(self, learner: Any, phase: Any, initial_state: Any = None) -> None:
        self.learner = learner
        self.phase = phase
        self.state = StepState(**_initial(initial_state))
        self.handle = Handle(learner, phase)

    def __enter__(self) -> tuple[Handle, StepState]:
        self.learner.step = self.state
        self.handle(StepBegin())
        return self.handle, self.state

    def __exit__(self, et: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None:
            try:
                self.handle(StepEnd())
            except CancelStepException:
                pass
            return False
        return isinstance(e, CancelStepException)


def runstep(*args: Any, **kwargs: Any) -> Any:
    """Run one step's code between ``StepBegin`` and ``StepEnd``.

    ``runstep(stepfn, learner, phase, initial_state=None) -> StepState`` calls
    ``stepfn(handle, state)``; ``with runstep(learner, phase, initial_state) as (handle, state):``
    does the same for a block.  ``initial_state`` (a mapping, e.g. ``{"xs": xs, "ys": ys}``) fills
    the new state, which becomes ``learner.step`` before ``StepBegin``.  A
    [`CancelStepException`][fluxtrain.learner.CancelStepException] ends the step early without ``StepEnd``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[])
        >>> def stepfn(handle, state):
        ...     state.loss = 1.5
        >>> ft.runstep(stepfn, learner, ft.TrainingPhase(), {"xs": 1}).loss
        1.5
        >>> with ft.runstep(learner, ft.TrainingPhase()) as (handle, state):
        ...     state.loss = 2.5
        >>> learner.step.loss
        2.5
    """
    if args and not _is_learner(args[0]) and callable(args[0]):
        return _runstep_fn(*args, **kwargs)
    return StepRun(*args, **kwargs)


def _runstep_fn(
    stepfn: Callable[[Handle, StepState], Any], learner: Any, phase: Any, initial_state: Any = None
) -> StepState:
    run = StepRun(learner, phase, initial_state)
    learner.step = run.state
    try:
        run.handle(StepBegin())
        stepfn(run.handle, run.state)
        run.handle(StepEnd())
    except CancelStepException:
        pass
    return run.state


# ---------------------------------------------------------------------------------------------
# Epochs


def _modules(model: Any) -> list[nn.Module]:
    """The top-level Modules in a model tree (a Module, or dicts/tuples of them)."""
    if isinstance(model, nn.Module):
        return [model]
    ch = children(model)
    if ch is None:
        return []
    return [m for v in ch.values() for m in _modules(v)]


def _set_mode(model: Any, training: bool | None) -> list[tuple[nn.Module, bool]]:
    """Put every Module of ``model`` in train/eval mode; return what to restore."""
    if training is None:
        return []
    saved = [(m, m.training) for top in _modules(model) for m in top.modules()]
    for top in _modules(model):
        top.train(training)
    return saved


def _restore_mode(saved: list[tuple[nn.Module, bool]]) -> None:
    for m, flag in saved:
        m.training = flag


class EpochRun:
    """The context manager returned by ``runepoch(learner, phase)``."""

    def __init__(self, learner: Any, phase: Any) -> None:
        self.learner = learner
        self.phase = phase
        self.handle = Handle(learner, phase)
        self._saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> Handle:
        self._saved = _set_mode(self.learner.model, getattr(self.phase, "training", None))
        try:
            self.handle(EpochBegin())
        except BaseException:
            _restore_mode(self._saved)
            raise
        return self.handle

    def __exit__(self, et: Any, e: BaseException | None, tb: Any) -> bool:
        try:
            if e is None:
                progress = getattr(self.learner, "progress", None)
                if progress is not None:
                    # The epoch's work is done: a checkpoint written at EpochEnd resumes after it.
                    progress.phases_done = progress.phase_index + 1
                try:
                    self.handle(EpochEnd())
                except CancelEpochException:
                    pass
                except CancelFittingException as stop:
                    return self._stop(stop, reraise=True)
                return False
            if isinstance(e, CancelEpochException):
                return True
            if isinstance(e, CancelFittingException):
                return self._stop(e, reraise=False)
            bad = misplaced_cancel(e, f"during the epoch of {self.phase!r} by its epoch code")
            if bad is not None:
                raise bad from e
            return False
        finally:
            _restore_mode(self._saved)

    def _stop(self, e: CancelFittingException, reraise: bool) -> bool:
        if getattr(self.learner, "progress", None) is not None:
            if reraise:
                raise e
            return False  # fit_ records it
        self.learner.stop_reason = e
        return True


def runepoch(*args: Any, **kwargs: Any) -> Any:
    """Run one epoch's code between ``EpochBegin`` and ``EpochEnd`` (the seed's ``withepoch``).

    ``runepoch(epochfn, learner, phase)`` calls ``epochfn(handle)``;
    ``with runepoch(learner, phase) as handle:`` does the same for a block.  During the epoch
    the model's Modules are in training mode for an ``AbstractTrainingPhase`` and in evaluation
    mode for an ``AbstractValidationPhase`` (restored afterwards).  A
    [`CancelEpochException`][fluxtrain.learner.CancelEpochException] ends the epoch without ``EpochEnd``; a
    [`CancelFittingException`][fluxtrain.learner.CancelFittingException] outside [`fit_`][fluxtrain.learner.fit_] ends it too and is
    recorded in ``learner.stop_reason``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, callbacks=[])
        >>> def epochfn(handle):
        ...     raise ft.CancelFittingException("low loss reached")
        >>> ft.runepoch(epochfn, learner, ft.TrainingPhase())
        >>> learner.stop_reason
        CancelFittingException('low loss reached')
    """
    if args and not _is_learner(args[0]) and callable(args[0]):
        return _runepoch_fn(*args, **kwargs)
    return EpochRun(*args, **kwargs)


def _runepoch_fn(epochfn: Callable[[Handle], Any], learner: Any, phase: Any) -> None:
    run = EpochRun(learner, phase)
    try:
        handle = run.__enter__()
    except CancelEpochException:
        return
    except CancelFittingException as e:
        if run._stop(e, reraise=True):
            return
    try:
        epochfn(handle)
    except BaseException as e:
        if not run.__exit__(type(e), e, e.__traceback__):
            raise
        return
    run.__exit__(None, None, None)
