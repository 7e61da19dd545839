"""``ProgressBar`` (tqdm) and ``MetricsPrinter`` (a table at each epoch's end).

Both print on the main process only ([`fluxtrain.distributed.is_main_process`][fluxtrain.distributed.is_main_process]).
FluxTraining.jl ``ProgressPrinter``/``MetricsPrinter`` (``src/callbacks/callbacks.jl``).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm.auto import tqdm

from ... import distributed
from ..callback import Callback
from ..events import EpochBegin, EpochEnd, Event, FitEnd, StepEnd
from ..state import phase_key

__all__ = ["MetricsPrinter", "ProgressBar"]


def _epoch_number(learner: Any, phase: Any) -> int:
    """1-based number of the running epoch: the fit epoch, else the phase's epoch count."""
    if learner.progress is not None:
        return learner.epoch + 1
    hist = learner.cbstate.get("metrics_epoch")
    if hist is not None and phase in hist and "Loss" in hist[phase]:
        return len(hist[phase]["Loss"]) + 1
    return learner.epoch + 1


class ProgressBar(Callback):
    """A tqdm progress bar per epoch showing the smoothed loss.

    ``disable=None`` (default) hides it when the output is not a terminal; ``file`` is where
    it is drawn (``sys.stderr`` by default); ``mininterval`` is tqdm's minimum time between
    redraws in seconds.

    Example:
        >>> from fluxtrain.callbacks import ProgressBar
        >>> ProgressBar(disable=True)
        ProgressBar()
    """

    reads = ("cbstate.metrics_step", "cbstate.metrics_epoch", "epoch_length", "epoch", "progress")
    handles = (EpochBegin, StepEnd, EpochEnd, FitEnd)

    def __init__(
        self, disable: bool | None = None, file: IO[str] | None = None, mininterval: float = 0.1
    ) -> None:
        self.disable = disable
        self.file = file
        self.mininterval = mininterval
        self._bar: Any = None

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if isinstance(event, StepEnd):
            bar = self._bar
            if bar is not None and bar.update(1):
                hist = learner.cbstate.metrics_step.get(phase)
                if hist is not None:
                    name = "SmoothLoss" if "SmoothLoss" in hist else "Loss"
                    if name in hist:
                        bar.set_postfix_str(f"loss={hist.last(name):.4g}", refresh=False)
        elif isinstance(event, EpochBegin):
            self._close()
            if distributed.is_main_process():
                self._bar = tqdm(
                    total=learner.epoch_length,
                    desc=f"Epoch {_epoch_number(learner, phase)} {phase_key(phase)}",
                    disable=self.disable,
                    file=self.file if self.file is not None else sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                    mininterval=self.mininterval,
                )
                if self._bar.disable:  # not a terminal: skip the per-step calls altogether
                    self._bar = None
        else:
            self._close()


def _table(header: list[str], row: list[str]) -> str:
    widths = [max(len(h), len(c)) for h, c in zip(header, row)]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def cells(values: list[str]) -> str:
        return "│" + "│".join(f" {v:>{w}} " for v, w in zip(values, widths)) + "│"

    return "\n".join(
        [line("┌", "┬", "┐"), cells(header), line("├", "┼", "┤"), cells(row), line("└", "┴", "┘")]
    )


class MetricsPrinter(Callback):
    """Prints a table of the epoch's metric values at the end of each epoch (main process).

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.ones(4, 1), torch.ones(4, 1))]
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> cbs = [ft.callbacks.Metrics(), ft.callbacks.MetricsPrinter()]
        >>> learner = ft.Learner(model, torch.nn.functional.l1_loss, callbacks=cbs, data=data)
        >>> ft.epoch_(learner, ft.ValidationPhase(), data)
        ┌─────────────────┬───────┬────────┐
        │           Phase │ Epoch │   Loss │
        ├─────────────────┼───────┼────────┤
        │ ValidationPhase │     1 │ 1.0000 │
        └─────────────────┴───────┴────────┘
    """

    reads = ("cbstate.metrics_epoch",)
    handles = (EpochEnd,)

    def __init__(self, file: IO[str] | None = None, digits: int = 4) -> None:
        self.file = file
        self.digits = digits

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not distributed.is_main_process():
            return
        hist = learner.cbstate.metrics_epoch.get(phase)
        if hist is None or not hist.names():
            return
        names = hist.names()
        epoch = hist.steps(names[0])[-1]
        header = ["Phase", "Epoch", *names]
        row = [phase_key(phase), str(epoch)] + [f"{hist.last(n):.{self.digits}f}" for n in names]
        tqdm.write(_table(header, row), file=self.file if self.file is not None else sys.stdout)
