"""Loggers: epoch (and optionally step) metrics to CSV, JSON lines, or TensorBoard.

They read ``cbstate.metrics_epoch``/``cbstate.metrics_step`` written by ``Metrics``.  Files are
appended to (so a resumed run continues its log) and only the main process writes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ... import distributed
from ...optimisers.engine import rules_in
from ...optimisers.state import Leaf
from ...tree import children
from ..callback import Callback
from ..events import EpochEnd, Event, FitEnd, StepEnd
from ..phases import AbstractTrainingPhase
from ..state import phase_key

__all__ = ["CSVLogger", "JSONLinesLogger", "TensorBoardLogger", "learning_rates"]


class _MetricsLogger(Callback):
    """Shared logic: collect the values of an epoch (or step) and hand them to ``write``."""

    reads = ("cbstate.metrics_epoch", "cbstate.metrics_step")
    handles = (StepEnd, EpochEnd, FitEnd)

    def __init__(self, steps: bool = False) -> None:
        self.steps = steps

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not distributed.is_main_process():
            return
        if isinstance(event, FitEnd):
            self.close()
            return
        if isinstance(event, StepEnd):
            if not self.steps:
                return
            hist = learner.cbstate.metrics_step.get(phase)
            kind = "step"
        else:
            hist = learner.cbstate.metrics_epoch.get(phase)
            kind = "epoch"
        if hist is None or not hist.names():
            return
        names = hist.names()
        x = hist.steps(names[0])[-1]
        values = {n: hist.last(n) for n in names if hist.steps(n)[-1] == x}
        self.write(kind, phase_key(phase), x, values)

    def write(self, kind: str, phase: str, x: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release files (called at ``FitEnd``)."""


class CSVLogger(_MetricsLogger):
    """Appends one row per epoch (``kind,phase,epoch,<metrics>``) to a CSV file; with
    ``steps=True`` one row per step too (``kind`` is ``epoch`` or ``step``).

    The columns are fixed by the first row written; the header is written when the file is new.

    Example:
        >>> from fluxtrain.callbacks import CSVLogger
        >>> CSVLogger("runs/log.csv")
        CSVLogger('runs/log.csv')
    """

    def __init__(self, path: str | os.PathLike[str], steps: bool = False) -> None:
        super().__init__(steps)
        self.path = Path(path)
        self._fields: list[str] | None = None

    def write(self, kind: str, phase: str, x: int, values: dict[str, float]) -> None:
        row = {"kind": kind, "phase": phase, "index": x, **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        if self._fields is None:
            if new:
                self._fields = list(row)
            else:
                with self.path.open(newline="") as f:
                    self._fields = next(csv.reader(f), list(row))
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, restval="", extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def __repr__(self) -> str:
        return f"CSVLogger({str(self.path)!r})"


class JSONLinesLogger(_MetricsLogger):
    """Appends one JSON object per epoch (and per step with ``steps=True``) to a file:
    ``{"kind": "epoch", "phase": "TrainingPhase", "index": 1, "Loss": 0.25}``.

    Example:
        >>> from fluxtrain.callbacks import JSONLinesLogger
        >>> JSONLinesLogger("runs/log.jsonl", steps=True)
        JSONLinesLogger('runs/log.jsonl', steps=True)
    """

    def __init__(self, path: str | os.PathLike[str], steps: bool = False) -> None:
        super().__init__(steps)
        self.path = Path(path)

    def write(self, kind: str, phase: str, x: int, values: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "phase": phase, "index": x, **values}) + "\n")

    def __repr__(self) -> str:
        return f"JSONLinesLogger({str(self.path)!r}, steps={self.steps})"


def learning_rates(opt_state: Any) -> dict[str, float]:
    """The learning rate (``eta``) each part of the model was last updated with.

    ``{"eta": value}`` when every Leaf shares one rate, else one entry per rate,
    ``"eta/<path of its first Leaf>"``.  A Scheduler rule gives the rate of its last step;
    rules without an ``eta`` (AdaDelta) are left out.
    """
    found: dict[float, str] = {}
    for path, leaf in _leaves_with_paths(opt_state):
        rule = leaf.rule
        if hasattr(rule, "rule_at") and isinstance(leaf.state, tuple):
            rule = rule.rule_at(max(int(leaf.state[0]) - 1, 1))
        eta = next((r.eta for r in rules_in(rule) if isinstance(getattr(r, "eta", None), float)),
                   None)  # fmt: skip
        if eta is not None and eta not in found:
            found[eta] = path
    if len(found) == 1:
        return {"eta": next(iter(found))}
    return {f"eta/{path}": eta for eta, path in found.items()}


def _leaves_with_paths(tree: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, Leaf):
        return [(path or "<root>", tree)]
    ch = children(tree) if tree is not None else None
    out: list[tuple[str, Any]] = []
    for k, v in (ch or {}).items():
        out += _leaves_with_paths(v, f"{path}.{k}" if path else str(k))
    return out


class TensorBoardLogger(_MetricsLogger):
    """Writes scalars ``<phase>/<metric>`` per epoch (and ``<phase>/step/<metric>`` per step
    with ``steps=True``) with ``torch.utils.tensorboard`` (needs the ``tensorboard`` package,
    imported on first use), and the learning rate in use after each training epoch (or step)
    as ``hyperparams/eta`` (``hyperparams/eta/<path>`` when parts of the model differ; see
    ``learning_rates``).

    Example:
        >>> from fluxtrain.callbacks import TensorBoardLogger
        >>> TensorBoardLogger("runs/tb")
        TensorBoardLogger('runs/tb')
    """

    reads = ("cbstate.metrics_epoch", "cbstate.metrics_step", "opt_state")

    def __init__(self, logdir: str | os.PathLike[str], steps: bool = False) -> None:
        super().__init__(steps)
        self.logdir = Path(logdir)
        self._writer: Any = None

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        super().on(event, phase, learner)
        training = isinstance(phase, AbstractTrainingPhase)
        if not training or not distributed.is_main_process() or learner.opt_state is None:
            return
        if isinstance(event, EpochEnd) or (isinstance(event, StepEnd) and self.steps):
            kind = "step" if isinstance(event, StepEnd) else "epoch"
            x = learner.cbstate.metrics_step.get(phase) if kind == "step" else None
            index = x.steps(x.names()[0])[-1] if x is not None and x.names() else None
            if index is None:
                hist = learner.cbstate.metrics_epoch.get(phase)
                index = hist.steps(hist.names()[0])[-1] if hist and hist.names() else 0
            w = self._get_writer()
            prefix = "hyperparams/step/" if kind == "step" else "hyperparams/"
            for name, v in learning_rates(learner.opt_state).items():
                w.add_scalar(prefix + name, v, global_step=index)

    def _get_writer(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "TensorBoardLogger needs the tensorboard package: pip install tensorboard"
                ) from e
            self._writer = SummaryWriter(log_dir=str(self.logdir))
        return self._writer

    def write(self, kind: str, phase: str, x: int, values: dict[str, float]) -> None:
        w = self._get_writer()
        prefix = f"{phase}/step/" if kind == "step" else f"{phase}/"
        for name, v in values.items():
            w.add_scalar(prefix + name, v, global_step=x)
        if kind == "epoch":
            w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.logdir)!r})"
