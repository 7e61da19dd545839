"""``ft.callbacks``: the built-in callbacks of the Learner (FluxTraining.jl's callbacks).

Reached as ``ft.callbacks.Metrics``, ``ft.callbacks.Scheduler`` (not the ``ft.Scheduler``
optimiser rule), ...  The implementations live in `fluxtrain.learner.callbacks`.

- Metrics and history: [`Metrics`][fluxtrain.callbacks.Metrics] (with [`Metric`][fluxtrain.callbacks.Metric], [`Loss`][fluxtrain.callbacks.Loss],
  [`Accuracy`][fluxtrain.callbacks.Accuracy]), [`Recorder`][fluxtrain.callbacks.Recorder].
- Output: [`ProgressBar`][fluxtrain.callbacks.ProgressBar], [`MetricsPrinter`][fluxtrain.callbacks.MetricsPrinter], [`CSVLogger`][fluxtrain.callbacks.CSVLogger],
  [`JSONLinesLogger`][fluxtrain.callbacks.JSONLinesLogger], [`TensorBoardLogger`][fluxtrain.callbacks.TensorBoardLogger], [`PlotMetrics`][fluxtrain.callbacks.PlotMetrics].
- Control: [`StopOnNaNLoss`][fluxtrain.callbacks.StopOnNaNLoss], [`EarlyStopping`][fluxtrain.callbacks.EarlyStopping], [`Scheduler`][fluxtrain.callbacks.Scheduler],
  [`SanityCheck`][fluxtrain.callbacks.SanityCheck], [`Throttle`][fluxtrain.callbacks.Throttle], [`CustomCallback`][fluxtrain.callbacks.CustomCallback].
- Resources: [`Checkpointer`][fluxtrain.callbacks.Checkpointer], [`ToDevice`][fluxtrain.callbacks.ToDevice], [`GarbageCollect`][fluxtrain.callbacks.GarbageCollect].
"""

from .learner.callbacks import Accuracy as Accuracy
from .learner.callbacks import Checkpointer as Checkpointer
from .learner.callbacks import CSVLogger as CSVLogger
from .learner.callbacks import CustomCallback as CustomCallback
from .learner.callbacks import EarlyStopping as EarlyStopping
from .learner.callbacks import GarbageCollect as GarbageCollect
from .learner.callbacks import History as History
from .learner.callbacks import JSONLinesLogger as JSONLinesLogger
from .learner.callbacks import Loss as Loss
from .learner.callbacks import Metric as Metric
from .learner.callbacks import MetricHistory as MetricHistory
from .learner.callbacks import Metrics as Metrics
from .learner.callbacks import MetricsPrinter as MetricsPrinter
from .learner.callbacks import PlotMetrics as PlotMetrics
from .learner.callbacks import ProgressBar as ProgressBar
from .learner.callbacks import Recorder as Recorder
from .learner.callbacks import SanityCheck as SanityCheck
from .learner.callbacks import SanityCheckError as SanityCheckError
from .learner.callbacks import Scheduler as Scheduler
from .learner.callbacks import StopOnNaNLoss as StopOnNaNLoss
from .learner.callbacks import TensorBoardLogger as TensorBoardLogger
from .learner.callbacks import Throttle as Throttle
from .learner.callbacks import ToDevice as ToDevice
from .learner.callbacks import default_callbacks as default_callbacks
from .learner.callbacks import learning_rates as learning_rates
from .learner.callbacks import plot_metrics as plot_metrics

# Everything here is reached as ft.callbacks.<name>; nothing is lifted to the top level.
__all__: list[str] = []
