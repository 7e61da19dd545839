"""``ProgressBar`` (tqdm) and ``MetricsPrinter`` (a row of metrics per epoch).

Both print on the main process only ([`fluxtrain.distributed.is_main_process`][fluxtrain.distributed.is_main_process]).
FluxTraining.jl ``ProgressPrinter``/``MetricsPrinter`` (``src/callbacks/callbacks.jl``).
"""

from __future__ import annotations

import sys
import time as _time
from typing import IO, Any

from tqdm.auto import tqdm

from ... import distributed
from ..callback import Callback
from ..events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd, StepEnd
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
    redraws in seconds.  The loss comes from ``Metrics`` (a default callback); without
    it the bar shows the step count alone.

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
                # Without Metrics there is no loss to show, only the count: the same callback
                # must work whether or not stderr is a terminal (when it is not, the bar is off
                # and this code never runs, so a hard dependency would only fail on a terminal).
                steps = learner.cbstate.get("metrics_step")
                hist = None if steps is None else steps.get(phase)
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


_STYLES = ("row", "boxed")


def _phase_label(phase: Any) -> str:
    """Short column prefix of a phase: ``train``, ``valid``, else the phase's class name."""
    name = phase_key(phase)
    return {"TrainingPhase": "train", "ValidationPhase": "valid"}.get(name, name)


class MetricsPrinter(Callback):
    """Prints the epoch's metric values (main process only).

    ``style="row"`` (default) prints one row per epoch, with a column per phase and metric and
    the time since the fit began, and the header again only when the columns change::

        epoch  train Loss  train Accuracy  valid Loss  valid Accuracy   time
            1      1.2555          0.6015      0.5531          0.8050   0.3s
            2      0.4302          0.8734      0.3307          0.9025   0.6s

    Within ``ft.fit_`` the row is printed when the epoch's last phase ends (or at
    ``FitEnd`` if the fit stops earlier); an epoch run alone with ``epoch_`` gets its own row.
    ``style="boxed"`` prints FluxTraining.jl's boxed table for each phase's epoch instead.
    ``file`` is where to print (``sys.stdout`` by default), ``digits`` the decimals shown, and
    ``time=False`` drops the time column.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.ones(4, 1), torch.ones(4, 1))]
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> cbs = [ft.callbacks.Metrics(), ft.callbacks.MetricsPrinter(time=False)]
        >>> learner = ft.Learner(model, torch.nn.functional.l1_loss, ft.Descent(0.5),
        ...                      callbacks=cbs, data=(data, data))
        >>> _ = ft.fit_(learner, 2)
        epoch  train Loss  valid Loss
            1      1.0000      0.5000
            2      0.5000      0.0000
        >>> _ = learner.replace_callback(ft.callbacks.MetricsPrinter(style="boxed"))
        >>> ft.epoch_(learner, ft.ValidationPhase(), data)
        ┌─────────────────┬───────┬────────┐
        │           Phase │ Epoch │   Loss │
        ├─────────────────┼───────┼────────┤
        │ ValidationPhase │     3 │ 0.0000 │
        └─────────────────┴───────┴────────┘
    """

    reads = ("cbstate.metrics_epoch", "progress", "epoch")
    handles = (FitBegin, EpochBegin, EpochEnd, FitEnd)

    def __init__(
        self,
        file: IO[str] | None = None,
        digits: int = 4,
        style: str = "row",
        time: bool = True,
    ) -> None:
        if style not in _STYLES:
            raise ValueError(
                f"MetricsPrinter(style={style!r}): choose 'row' (one row per epoch) or 'boxed' "
                f"(a boxed table per phase and epoch)"
            )
        self.file = file
        self.digits = digits
        self.style = style
        self.time = time
        self._start: float | None = None
        self._columns: list[str] | None = None
        self._pending: dict[str, list[tuple[str, float]]] = {}
        self._pending_epoch: int | None = None

    def _out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stdout

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if not distributed.is_main_process():
            return
        if isinstance(event, FitBegin):
            self._start = _time.perf_counter()
            self._columns = None  # each fit starts with a header
            self._pending = {}  # left over by a fit that ended in an exception
            return
        if isinstance(event, EpochBegin):
            if self._start is None:
                self._start = _time.perf_counter()
            return
        if isinstance(event, FitEnd):
            self._flush()
            self._start = None
            return
        hist = learner.cbstate.metrics_epoch.get(phase)
        if hist is None or not hist.names():
            return
        if self.style == "boxed":
            self._print_boxed(phase, hist)
            return
        progress = learner.progress
        epoch = learner.epoch + 1 if progress is not None else hist.steps(hist.names()[0])[-1]
        if self._pending and self._pending_epoch != epoch:
            self._flush()  # a phase of the previous epoch was cut short
        self._pending_epoch = epoch
        self._pending[_phase_label(phase)] = [(n, hist.last(n)) for n in hist.names()]
        if progress is None or progress.phase_index >= progress.nphases - 1:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        cells = [("epoch", str(self._pending_epoch))]
        for label, values in self._pending.items():
            cells += [(f"{label} {n}", f"{v:.{self.digits}f}") for n, v in values]
        if self.time:
            elapsed = 0.0 if self._start is None else _time.perf_counter() - self._start
            cells.append(("time", f"{elapsed:.1f}s"))
        self._pending = {}
        header = [h for h, _ in cells]
        widths = [max(len(h), len(v), 6) if h != "epoch" else 5 for h, v in cells]
        out = self._out()
        if header != self._columns:
            self._columns = header
            tqdm.write("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)), file=out)
        tqdm.write("  ".join(f"{v:>{w}}" for (_, v), w in zip(cells, widths)), file=out)

    def _print_boxed(self, phase: Any, hist: Any) -> None:
        names = hist.names()
        epoch = hist.steps(names[0])[-1]
        header = ["Phase", "Epoch", *names]
        row = [phase_key(phase), str(epoch)] + [f"{hist.last(n):.{self.digits}f}" for n in names]
        tqdm.write(_table(header, row), file=self._out())

    def __repr__(self) -> str:
        return "MetricsPrinter()" if self.style == "row" else "MetricsPrinter(style='boxed')"
