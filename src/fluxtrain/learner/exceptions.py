"""Control-flow exceptions of the training loop, and the errors of the callback system.

Raise [`CancelStepException`][fluxtrain.learner.CancelStepException], [`CancelEpochException`][fluxtrain.learner.CancelEpochException] or
[`CancelFittingException`][fluxtrain.learner.CancelFittingException] from a callback or from step code to skip the rest of a step, an
epoch, or the whole fit (FluxTraining.jl ``src/callbacks/callback.jl``).  Unlike FluxTraining.jl
(issue #159), a cancelled fit is not an error for the caller: [`fit_`][fluxtrain.learner.fit_] returns
normally and records the exception in ``learner.stop_reason`` (its ``callback`` attribute names
the callback that raised it, so early stopping can be told from a NaN loss without parsing text).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallbackOrderError",
    "CancelEpochException",
    "CancelFittingException",
    "CancelStepException",
    "FitException",
    "ProtectedAccessError",
]


class FitException(Exception):
    """Base class of the exceptions that change the control flow of fitting.

    ``msg`` is the reason; ``callback`` is the callback that raised it (set by the learner when
    the exception leaves a callback; ``None`` when raised by step code).

    Example:
        >>> import fluxtrain as ft
        >>> e = ft.CancelFittingException("low loss reached")
        >>> e.msg, e.callback, str(e)
        ('low loss reached', None, 'low loss reached')
    """

    def __init__(self, msg: str = "", callback: Any = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.callback = callback

    def __repr__(self) -> str:
        by = f", callback={self.callback!r}" if self.callback is not None else ""
        return f"{type(self).__name__}({self.msg!r}{by})"


class CancelStepException(FitException):
    """Skip the rest of the current step (its remaining events, ``StepEnd`` included).

    It may only be raised between ``StepBegin`` and ``StepEnd``: by step code, or by a
    callback at ``StepBegin``, ``LossBegin``, ``BackwardBegin``, ``BackwardEnd`` or ``StepEnd``.
    Raised anywhere else (at ``EpochBegin``, ``EpochEnd``, ``FitBegin``, ``FitEnd``, or by epoch
    code outside a step) it becomes a ``RuntimeError`` saying so.
    """


class CancelEpochException(FitException):
    """Skip the rest of the current epoch (``EpochEnd`` is not fired); fitting goes on.

    It may be raised from ``EpochBegin`` to ``EpochEnd``.  Raised by a callback at ``EpochEnd``,
    the callbacks that have not yet seen that ``EpochEnd`` are skipped (FluxTraining.jl's
    ``runepoch``).  Raised at ``FitBegin`` or ``FitEnd``, where no epoch runs, it becomes a
    ``RuntimeError`` saying so.
    """


class CancelFittingException(FitException):
    """End fitting: [`fit_`][fluxtrain.learner.fit_] fires ``FitEnd``, records the reason, and returns.

    Raised at an ``EpochEnd`` it ends fitting after that epoch: the callbacks after the one
    that raised it still see the ``EpochEnd`` (``Checkpointer`` saves the epoch), the epoch's
    remaining phases are skipped and the epoch counts in ``learner.epoch``.
    """


class ProtectedAccessError(AttributeError):
    """A callback touched learner state it did not declare in its ``reads``/``writes``."""


class CallbackOrderError(ValueError):
    """The callbacks' declarations cannot be satisfied: two writers of the same state with no
    order between them, a cycle, or a read of callback state that no callback writes."""
