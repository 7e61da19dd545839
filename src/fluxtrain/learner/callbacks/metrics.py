"""``Metrics``: loss and user metrics per step and per epoch (FluxTraining.jl
``src/callbacks/metrics.jl``).

Each step, every metric is evaluated on ``(learner.step.ys_pred, learner.step.ys)`` (the loss is
read from ``learner.step.loss``) and stored in ``cbstate.metrics_step[phase]``; at the end of an
epoch, the epoch value (the mean over the epoch's steps weighted by batch size, then averaged
over processes with [`fluxtrain.distributed.all_reduce_mean`][fluxtrain.distributed.all_reduce_mean]) goes to
``cbstate.metrics_epoch[phase]``.  A smoothed loss is kept per step under ``"SmoothLoss"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import distributed
from ..callback import Callback
from ..events import EpochBegin, EpochEnd, Event, StepEnd
from ..phases import Phase
from ..state import PhaseDict, phase_key, register_state_type
from .recorder import batch_size

__all__ = ["Accuracy", "Loss", "Metric", "MetricHistory", "Metrics"]


@register_state_type
class MetricHistory:
    """Values of named series against a step or epoch number.

    Example:
        >>> from fluxtrain.callbacks import MetricHistory
        >>> h = MetricHistory()
        >>> h.add("Loss", 1, 0.5); h.add("Loss", 2, 0.25)
        >>> h["Loss"], h.steps("Loss"), h.last("Loss")
        ([0.5, 0.25], [1, 2], 0.25)
    """

    def __init__(self) -> None:
        self._x: dict[str, list[int]] = {}
        self._v: dict[str, list[float]] = {}

    def add(self, name: str, x: int, value: float) -> None:
        """Append ``value`` at step/epoch ``x`` to series ``name``."""
        if name not in self._v:
            self._x[name] = []
            self._v[name] = []
        self._x[name].append(x)
        self._v[name].append(value)

    def __getitem__(self, name: str) -> list[float]:
        if name not in self._v:
            raise KeyError(f"no metric {name!r} recorded; recorded: {self.names()}")
        return self._v[name]

    def __contains__(self, name: object) -> bool:
        return name in self._v

    def steps(self, name: str) -> list[int]:
        """The step/epoch numbers of series ``name``."""
        self[name]
        return self._x[name]

    def last(self, name: str) -> float:
        """The latest value of series ``name``."""
        values = self[name]
        if not values:
            raise KeyError(f"metric {name!r} has no values yet")
        return values[-1]

    def names(self) -> list[str]:
        """The series names, in the order they were first added."""
        return list(self._v)

    def state_dict(self) -> dict[str, list[list[float]]]:
        return {k: [self._x[k], self._v[k]] for k in self._v}

    @classmethod
    def from_state_dict(cls, d: dict[str, list[list[float]]]) -> MetricHistory:
        h = cls()
        for k, (xs, vs) in d.items():
            h._x[k] = [int(x) for x in xs]
            h._v[k] = [float(v) for v in vs]
        return h

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {len(v)} values" for k, v in self._v.items())
        return f"MetricHistory({inner})"


def _scalar(v: Any, name: str) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(
                f"metric {name!r} returned a tensor of shape {tuple(v.shape)}, not a scalar"
            )
        return float(v.item())
    return float(v)


def _phase_class(phase: Any) -> type | tuple[type, ...]:
    """Check ``Metric(..., phase=...)``: a phase class (or a tuple of them)."""
    classes = phase if isinstance(phase, tuple) else (phase,)
    for c in classes:
        if not isinstance(c, type):
            raise TypeError(
                f"Metric(..., phase={c!r}) takes a phase class such as ft.ValidationPhase, not "
                f"an instance: the metric is computed in every phase that is an instance of it"
            )
        if not issubclass(c, Phase):
            raise TypeError(
                f"Metric(..., phase={c.__name__}): the phase must be a subclass of ft.Phase "
                f"(ft.TrainingPhase, ft.ValidationPhase, ft.AbstractValidationPhase, ...)"
            )
    return phase


class Metric:
    """A metric ``fn(ys_pred, ys) -> number`` evaluated each step; its epoch value is the mean
    over steps weighted by batch size.

    ``phase`` limits the metric to the phases that are instances of that class (FluxTraining.jl
    ``Metric(fn; phase=ValidationPhase)``): in other phases it is neither computed nor
    recorded, so an expensive metric costs nothing during training.  The default, ``ft.Phase``,
    means every phase.

    Example:
        >>> import torch, fluxtrain as ft
        >>> from fluxtrain.callbacks import Metric
        >>> Metric(lambda yp, y: (yp - y).abs().max(), name="MaxError")
        Metric(MaxError)
        >>> m = Metric(torch.nn.functional.l1_loss, phase=ft.ValidationPhase)
        >>> m, m.applies_to(ft.TrainingPhase()), m.applies_to(ft.ValidationPhase())
        (Metric(L1_loss, phase=ValidationPhase), False, True)
    """

    def __init__(
        self,
        fn: Callable[[Any, Any], Any],
        name: str | None = None,
        phase: type | tuple[type, ...] = Phase,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a metric must be callable as fn(ys_pred, ys), got {fn!r}")
        self.fn = fn
        self.name = name or _name_of(fn)
        self.phase = _phase_class(phase)

    def applies_to(self, phase: Any) -> bool:
        """Whether the metric is computed during ``phase`` (an instance of its ``phase``)."""
        return isinstance(phase, self.phase)

    def compute(self, step: Any) -> float | None:
        """The value for the step whose state is ``step`` (``None`` to skip this step)."""
        if step.ys_pred is None or step.ys is None:
            raise ValueError(
                f"metric {self.name!r} needs learner.step.ys_pred and learner.step.ys, but the "
                f"step did not set them"
            )
        return _scalar(self.fn(step.ys_pred, step.ys), self.name)

    def __repr__(self) -> str:
        if self.phase is Phase:
            return f"{type(self).__name__}({self.name})"
        phases = self.phase if isinstance(self.phase, tuple) else (self.phase,)
        names = ", ".join(c.__name__ for c in phases)
        return f"{type(self).__name__}({self.name}, phase={names})"


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        raise ValueError("give a lambda metric a name: Metric(lambda yp, y: ..., name='MyMetric')")
    return name[:1].upper() + name[1:]


class Loss(Metric):
    """The step's loss, ``learner.step.loss`` (always the first metric of ``Metrics``)."""

    def __init__(self, name: str = "Loss") -> None:
        self.fn = None  # type: ignore[assignment]
        self.name = name
        self.phase = Phase

    def compute(self, step: Any) -> float | None:
        loss = step.loss
        return None if loss is None else _scalar(loss, self.name)


class Accuracy(Metric):
    """Fraction of correct predictions.

    ``ys_pred`` holds scores with classes along dimension 1; ``ys`` holds integer class labels,
    or one-hot / probability targets of the same shape as ``ys_pred``.  With a single output
    column (binary), a prediction is positive when its score exceeds ``threshold``.
    ``phase`` limits it to some phases, as for ``Metric``.

    Example:
        >>> import torch
        >>> from fluxtrain.callbacks import Accuracy
        >>> acc = Accuracy()
        >>> acc.fn(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """

    def __init__(
        self,
        threshold: float = 0.5,
        name: str = "Accuracy",
        phase: type | tuple[type, ...] = Phase,
    ) -> None:
        self.threshold = threshold
        super().__init__(self._accuracy, name, phase)

    def _accuracy(self, ys_pred: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        if ys_pred.dim() == 1 or (ys_pred.dim() == 2 and ys_pred.shape[1] == 1):
            pred = ys_pred.reshape(-1) > self.threshold
            return (pred == (ys.reshape(-1) > 0.5)).float().mean()
        pred = ys_pred.argmax(dim=1)
        target = ys.argmax(dim=1) if ys.shape == ys_pred.shape else ys
        return (pred == target).float().mean()


class _Running:
    """Per-phase running sums of an epoch, step counters and the smoothed loss."""

    __slots__ = ("epochs", "smooth", "smooth_n", "steps", "sums", "weight")

    def __init__(self, nmetrics: int) -> None:
        self.sums = [0.0] * nmetrics
        self.weight = [0] * nmetrics
        self.steps = 0
        self.epochs = 0
        self.smooth = 0.0
        self.smooth_n = 0


class Metrics(Callback):
    """Tracks the loss (always) and the given metrics per step and per epoch.

    ``metrics`` are [`Metric`][fluxtrain.callbacks.Metric] objects or plain functions ``f(ys_pred, ys)`` (named after
    the function).  ``smooth`` is the weight of FluxTraining.jl's ``SmoothLoss``: the smoothed
    loss is a running mean whose step weight is ``max(1/t, smooth)`` at step ``t`` (an
    exponentially weighted mean once ``t > 1/smooth``; OnlineStats ``ExponentialWeight``);
    ``None`` turns it off.  Results: ``cbstate.metrics_step[phase]`` and
    ``cbstate.metrics_epoch[phase]``, [`MetricHistory`][fluxtrain.callbacks.MetricHistory] objects.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.randn(8, 2), torch.randn(8, 1))] * 3
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.Metrics()], data=data,
        ...                      usedefaultcallbacks=False)
        >>> _ = ft.fit_(learner, 2)
        >>> h = learner.cbstate.metrics_epoch[ft.TrainingPhase()]
        >>> h.names(), h.steps("Loss")
        (['Loss'], [1, 2])
    """

    reads = ("step.loss", "step.ys", "step.ys_pred", "step.xs")
    writes = ("cbstate.metrics_step", "cbstate.metrics_epoch")
    handles = (EpochBegin, StepEnd, EpochEnd)

    def __init__(self, *metrics: Metric | Callable[[Any, Any], Any], smooth: float | None = 0.02):
        self.metrics: list[Metric] = [Loss()] + [
            m if isinstance(m, Metric) else Metric(m) for m in metrics
        ]
        names = [m.name for m in self.metrics]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"Metrics: several metrics are named {dupes}; give them distinct names"
            )
        if smooth is not None and not 0 < smooth <= 1:
            raise ValueError(f"Metrics: smooth must be in (0, 1] or None, got {smooth}")
        self.smooth = smooth
        self._running: dict[str, _Running] = {}

    def init(self, learner: Any) -> None:
        for entry in ("metrics_step", "metrics_epoch"):
            if entry not in learner.cbstate:
                learner.cbstate[entry] = PhaseDict(MetricHistory)

    def _run(self, phase: Any) -> _Running:
        key = phase_key(phase)
        run = self._running.get(key)
        if run is None:
            run = self._running[key] = _Running(len(self.metrics))
        return run

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        run = self._run(phase)
        if isinstance(event, StepEnd):
            step = learner.step
            run.steps += 1
            hist = learner.cbstate.metrics_step[phase]
            n = None
            for i, m in enumerate(self.metrics):
                # A metric limited to other phases is skipped (FluxTraining.jl's step! leaves
                # its value as nothing): no step value, and no epoch value either.
                v = m.compute(step) if m.applies_to(phase) else None
                if v is None:
                    continue
                if n is None:
                    n = max(batch_size(step.xs), 1)
                hist.add(m.name, run.steps, v)
                run.sums[i] += v * n
                run.weight[i] += n
                if i == 0 and self.smooth is not None:
                    run.smooth_n += 1
                    w = max(1.0 / run.smooth_n, self.smooth)
                    run.smooth += w * (v - run.smooth)
                    hist.add("SmoothLoss", run.steps, run.smooth)
        elif isinstance(event, EpochBegin):
            run.sums = [0.0] * len(self.metrics)
            run.weight = [0] * len(self.metrics)
        else:
            run.epochs += 1
            hist = learner.cbstate.metrics_epoch[phase]
            for i, m in enumerate(self.metrics):
                if run.weight[i]:
                    value = distributed.all_reduce_mean(run.sums[i] / run.weight[i])
                    hist.add(m.name, run.epochs, float(value))

    def state_dict(self) -> dict[str, Any]:
        return {
            k: {"steps": r.steps, "epochs": r.epochs, "smooth": r.smooth, "smooth_n": r.smooth_n}
            for k, r in self._running.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._running = {}
        for k, d in state.items():
            r = self._run(k)
            r.steps, r.epochs = int(d["steps"]), int(d["epochs"])
            r.smooth, r.smooth_n = float(d["smooth"]), int(d["smooth_n"])

    def __repr__(self) -> str:
        return f"Metrics({', '.join(m.name for m in self.metrics)})"
