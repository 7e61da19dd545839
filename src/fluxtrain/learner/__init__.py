"""FluxTraining.jl's ``Learner`` for PyTorch: phases, events, callbacks, ``fit_``.

Everything listed in ``__all__`` is available as ``ft.<name>``; the built-in callbacks are in
``ft.callbacks``.
"""

from . import events
from .callback import Callback
from .control import runepoch, runstep
from .events import (
    BackwardBegin,
    BackwardEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
    StepBegin,
    StepEnd,
)
from .exceptions import (
    CallbackOrderError,
    CancelEpochException,
    CancelFittingException,
    CancelStepException,
    FitException,
    ProtectedAccessError,
)
from .learner import FitProgress, Learner, LearnerData, fit_
from .lr_find import LRFinderResult, lr_find
from .phases import (
    AbstractTrainingPhase,
    AbstractValidationPhase,
    Phase,
    TrainingPhase,
    ValidationPhase,
    epoch_,
    step_,
)
from .state import CallbackState, StepState

__all__ = [
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "BackwardBegin",
    "BackwardEnd",
    "Callback",
    "CallbackOrderError",
    "CallbackState",
    "CancelEpochException",
    "CancelFittingException",
    "CancelStepException",
    "EpochBegin",
    "EpochEnd",
    "Event",
    "FitBegin",
    "FitEnd",
    "FitException",
    "FitProgress",
    "LRFinderResult",
    "Learner",
    "LearnerData",
    "LossBegin",
    "Phase",
    "ProtectedAccessError",
    "StepBegin",
    "StepEnd",
    "StepState",
    "TrainingPhase",
    "ValidationPhase",
    "epoch_",
    "events",
    "fit_",
    "lr_find",
    "runepoch",
    "runstep",
    "step_",
]
