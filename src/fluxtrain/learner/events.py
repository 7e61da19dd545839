"""Events: the moments of training that callbacks react to (FluxTraining.jl ``Events``).

During [`fit_`][fluxtrain.learner.fit_] they fire in this order (each epoch runs a training then, when
there is validation data, a validation phase)::

    FitBegin
      EpochBegin                                  (TrainingPhase)
        StepBegin LossBegin BackwardBegin BackwardEnd StepEnd      (once per batch)
      EpochEnd
      EpochBegin                                  (ValidationPhase)
        StepBegin LossBegin StepEnd                                (once per batch)
      EpochEnd
      ...                                         (next epoch)
    FitEnd

``FitBegin``/``FitEnd`` are fluxtrain's additions (FluxTraining.jl has only ``Init``): they fire
once per [`fit_`][fluxtrain.learner.fit_] call, and ``FitEnd`` also fires when fitting is cancelled with
[`CancelFittingException`][fluxtrain.learner.CancelFittingException], so that callbacks can close files and progress bars.
A cancelled step skips its remaining events (``StepEnd`` included); a cancelled epoch skips
``EpochEnd``.  Source: FluxTraining.jl ``src/callbacks/events.jl`` and ``src/training.jl``.

Events are tiny classes; test for one with ``isinstance(event, StepEnd)``.  User code may define
new events by subclassing [`Event`][fluxtrain.learner.Event] and firing them with ``handle(MyEvent())`` inside a step.
"""

from __future__ import annotations

__all__ = [
    "BackwardBegin",
    "BackwardEnd",
    "EpochBegin",
    "EpochEnd",
    "Event",
    "FitBegin",
    "FitEnd",
    "LossBegin",
    "StepBegin",
    "StepEnd",
]


class Event:
    """Base class of everything a callback can react to.

    Events carry no data: callbacks read what they need from the learner (``learner.step``,
    ``learner.cbstate``).  Equal when of the same class.

    Example:
        >>> import fluxtrain as ft
        >>> ft.StepEnd(), ft.StepEnd() == ft.StepEnd(), isinstance(ft.LossBegin(), ft.Event)
        (StepEnd(), True, True)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class FitBegin(Event):
    """Once at the start of [`fit_`][fluxtrain.learner.fit_], before the first epoch (phase is ``None``)."""

    __slots__ = ()


class FitEnd(Event):
    """Once at the end of [`fit_`][fluxtrain.learner.fit_], also after a cancellation (phase ``None``)."""

    __slots__ = ()


class EpochBegin(Event):
    """At the start of each epoch of a phase."""

    __slots__ = ()


class EpochEnd(Event):
    """At the end of each epoch of a phase (not fired when the epoch was cancelled)."""

    __slots__ = ()


class StepBegin(Event):
    """At the start of each step (batch), after ``learner.step`` holds the new step's state."""

    __slots__ = ()


class StepEnd(Event):
    """At the end of each step (not fired when the step was cancelled)."""

    __slots__ = ()


class LossBegin(Event):
    """Between the forward pass (``step.ys_pred`` is set) and the loss computation."""

    __slots__ = ()


class BackwardBegin(Event):
    """Training phases: after the loss is computed (``step.loss``), before the gradient."""

    __slots__ = ()


class BackwardEnd(Event):
    """Training phases: after the gradient (``step.grads``), before the parameter update."""

    __slots__ = ()
