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
    """Skip the rest of the current step (its remaining events, ``StepEnd`` included)."""


class CancelEpochException(FitException):
    """Skip the rest of the current epoch (``EpochEnd`` is not fired); fitting goes on."""


class CancelFittingException(FitException):
    """End fitting: [`fit_`][fluxtrain.learner.fit_] fires ``FitEnd``, records the reason, and returns."""


class ProtectedAccessError(AttributeError):
    """A callback touched learner state it did not declare in its ``reads``/``writes``."""


class CallbackOrderError(ValueError):
    """The callbacks' declarations cannot be satisfied: two writers of the same state with no
    order between them, a cycle, or a read of callback state that no callback writes."""
