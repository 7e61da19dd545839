"""The built-in callbacks, one module per family; public as ``ft.callbacks``."""

from .checkpointer import Checkpointer
from .custom import CustomCallback, Throttle
from .device import ToDevice
from .housekeeping import GarbageCollect
from .logging import CSVLogger, JSONLinesLogger, TensorBoardLogger, learning_rates
from .metrics import Accuracy, Loss, Metric, MetricHistory, Metrics
from .plotting import PlotMetrics, plot_metrics
from .progress import MetricsPrinter, ProgressBar
from .recorder import History, Recorder
from .sanity import SanityCheck, SanityCheckError
from .scheduler import Scheduler
from .stopping import EarlyStopping, StopOnNaNLoss

__all__ = [
    "Accuracy",
    "CSVLogger",
    "Checkpointer",
    "CustomCallback",
    "EarlyStopping",
    "GarbageCollect",
    "History",
    "JSONLinesLogger",
    "Loss",
    "Metric",
    "MetricHistory",
    "Metrics",
    "MetricsPrinter",
    "PlotMetrics",
    "ProgressBar",
    "Recorder",
    "SanityCheck",
    "SanityCheckError",
    "Scheduler",
    "StopOnNaNLoss",
    "TensorBoardLogger",
    "Throttle",
    "ToDevice",
    "default_callbacks",
    "learning_rates",
    "plot_metrics",
]


def default_callbacks() -> list:
    """Fresh instances of the default callbacks, which every ``Learner`` gets unless one of
    the same class is given or ``usedefaultcallbacks=False`` (see
    ``fluxtrain.learner.learner.default_callbacks``)."""
    from ..learner import default_callbacks as make

    return make()
