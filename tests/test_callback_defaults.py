"""Metrics limited to a phase, default callbacks kept, printers, and callbacks on a terminal."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import struct
import termios
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft
from fluxtrain.callbacks import Accuracy, Metric, Metrics, MetricsPrinter


def regression_data(n=4, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 2, generator=g)
        out.append((x, x.sum(dim=1, keepdim=True)))
    return out


def linear_learner(*callbacks, **kwargs):
    torch.manual_seed(0)
    data = regression_data()
    return ft.Learner(
        torch.nn.Linear(2, 1),
        F.mse_loss,
        ft.Descent(0.01),
        callbacks=list(callbacks),
        data=(data, data),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# Metric(..., phase=...)


def test_a_metric_limited_to_validation_is_computed_and_recorded_only_in_validation():
    calls = []

    def maxerr(yp, y):
        calls.append(yp.requires_grad)
        return (yp - y).abs().max()

    learner = linear_learner(Metrics(Metric(maxerr, phase=ft.ValidationPhase)))
    ft.fit_(learner, 2)
    train_step = learner.cbstate.metrics_step[ft.TrainingPhase()]
    valid_step = learner.cbstate.metrics_step[ft.ValidationPhase()]
    assert "Maxerr" not in train_step
    assert "Maxerr" not in learner.cbstate.metrics_epoch[ft.TrainingPhase()]
    assert len(valid_step["Maxerr"]) == 8  # 2 epochs of 4 validation batches
    assert learner.cbstate.metrics_epoch[ft.ValidationPhase()].steps("Maxerr") == [1, 2]
    assert len(calls) == 8  # never evaluated during training
    # the loss is still tracked in both phases
    assert len(train_step["Loss"]) == 8


def test_a_metric_phase_matches_subclasses_of_the_given_phase_class():
    class Holdout(ft.ValidationPhase):
        pass

    m = Metric(lambda yp, y: 0.0, name="Zero", phase=ft.AbstractValidationPhase)
    assert m.applies_to(Holdout()) and m.applies_to(ft.ValidationPhase())
    assert not m.applies_to(ft.TrainingPhase())
    assert Metric(lambda yp, y: 0.0, name="Zero").applies_to(ft.TrainingPhase())
    assert repr(m) == "Metric(Zero, phase=AbstractValidationPhase)"


def test_a_metric_phase_must_be_a_phase_class():
    with pytest.raises(TypeError, match=r"phase=ValidationPhase\(\).*class"):
        Metric(F.l1_loss, phase=ft.ValidationPhase())
    with pytest.raises(TypeError, match=r"subclass of ft\.Phase"):
        Metric(F.l1_loss, phase=int)


# ---------------------------------------------------------------------------------------------
# MetricsPrinter: one row per epoch by default, the boxed tables as an option


def test_the_default_metrics_printer_prints_a_header_and_one_row_per_epoch():
    out = io.StringIO()
    learner = linear_learner(Metrics(Accuracy(phase=ft.ValidationPhase)), MetricsPrinter(file=out))
    ft.fit_(learner, 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # the header, then one row per epoch (training and validation)
    assert lines[0].split() == [
        "epoch",
        "train",
        "Loss",
        "valid",
        "Loss",
        "valid",
        "Accuracy",
        "time",
    ]
    rows = [ln.split() for ln in lines[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    train = learner.cbstate.metrics_epoch[ft.TrainingPhase()]["Loss"]
    valid = learner.cbstate.metrics_epoch[ft.ValidationPhase()]["Loss"]
    assert [float(r[1]) for r in rows] == pytest.approx(train, abs=1e-4)
    assert [float(r[2]) for r in rows] == pytest.approx(valid, abs=1e-4)
    assert all(r[4].endswith("s") for r in rows)


def test_a_new_fit_prints_the_header_again_and_time_can_be_left_out():
    out = io.StringIO()
    learner = linear_learner(Metrics(), MetricsPrinter(file=out, time=False))
    ft.fit_(learner, 1)
    ft.fit_(learner, 1)
    lines = out.getvalue().splitlines()
    assert [ln.split()[0] for ln in lines] == ["epoch", "1", "epoch", "2"]
    assert "time" not in lines[0]


def test_a_phase_epoch_run_alone_gets_its_own_row():
    out = io.StringIO()
    learner = linear_learner(Metrics(), MetricsPrinter(file=out, time=False))
    ft.epoch_(learner, ft.ValidationPhase(), regression_data())
    assert out.getvalue().splitlines()[0].split() == ["epoch", "valid", "Loss"]
    assert out.getvalue().splitlines()[1].split()[0] == "1"


def test_a_fit_stopped_after_training_still_prints_that_epochs_row():
    class StopAfterTraining(ft.Callback):
        handles = (ft.EpochEnd,)

        def on(self, event, phase, learner):
            if isinstance(phase, ft.TrainingPhase):
                raise ft.CancelFittingException("enough")

    out = io.StringIO()
    learner = linear_learner(Metrics(), MetricsPrinter(file=out, time=False), StopAfterTraining())
    ft.fit_(learner, 3)
    assert [ln.split() for ln in out.getvalue().splitlines()][1][0] == "1"
    assert len(out.getvalue().splitlines()) == 2


def test_the_boxed_printer_is_an_option_printing_a_table_per_phase_epoch():
    out = io.StringIO()
    learner = linear_learner(Metrics(), MetricsPrinter(file=out, style="boxed"))
    ft.fit_(learner, 2)
    lines = out.getvalue().splitlines()
    rows = [ln for ln in lines if ln.startswith("│") and "Loss" not in ln]
    assert [r.split("│")[1].strip() for r in rows] == ["TrainingPhase", "ValidationPhase"] * 2
    assert [r.split("│")[2].strip() for r in rows] == ["1", "1", "2", "2"]
    with pytest.raises(ValueError, match=r"'row'.*'boxed'"):
        MetricsPrinter(style="box")


# ---------------------------------------------------------------------------------------------
# Default callbacks are added unless one of the same class is given


def test_early_stopping_alone_gets_the_default_metrics_it_watches():
    learner = linear_learner(ft.callbacks.EarlyStopping(1))
    learner.lossfn = lambda yp, y: F.mse_loss(yp, y) + learner.epoch  # validation loss rises
    with contextlib.redirect_stdout(io.StringIO()):
        ft.fit_(learner, 5)
    assert isinstance(learner.stop_reason, ft.CancelFittingException)
    assert learner.epoch == 2  # the second epoch ran (no improvement) and counts
    assert learner.get_callback(Metrics) is not None


def test_a_given_callback_replaces_the_default_of_its_class_and_the_others_are_added():
    mine = Metrics(Accuracy())
    learner = linear_learner(mine)
    names = sorted(type(cb).__name__ for cb in learner.callbacks)
    assert names == ["Metrics", "MetricsPrinter", "ProgressBar", "Recorder", "StopOnNaNLoss"]
    assert learner.get_callback(Metrics) is mine
    defaults = [type(cb) for cb in ft.callbacks.default_callbacks()]
    assert set(defaults) == {type(cb) for cb in learner.callbacks}


def test_a_subclass_or_a_wrapper_of_a_default_counts_as_that_default():
    class MyPrinter(MetricsPrinter):
        pass

    learner = linear_learner(MyPrinter(), ft.callbacks.Throttle(ft.callbacks.Recorder(), every=2))
    names = sorted(type(cb).__name__ for cb in learner.callbacks)
    assert names == ["Metrics", "MyPrinter", "ProgressBar", "StopOnNaNLoss", "Throttle"]


def test_usedefaultcallbacks_false_gives_exactly_the_given_callbacks():
    mine = ft.callbacks.Recorder()
    assert linear_learner(mine, usedefaultcallbacks=False).callbacks == (mine,)
    assert linear_learner(usedefaultcallbacks=False).callbacks == ()
    assert len(linear_learner().callbacks) == 5


def test_a_callback_clashing_with_a_default_names_the_way_out():
    class MyHistory(ft.Callback):
        writes = ("cbstate.history",)

    with pytest.raises(ft.CallbackOrderError) as info:
        linear_learner(MyHistory())
    assert "usedefaultcallbacks=False" in "".join(info.value.__notes__)
    assert linear_learner(MyHistory(), usedefaultcallbacks=False).callbacks[0].writes


def test_a_clash_among_the_given_callbacks_alone_does_not_blame_the_defaults():
    class MyHistory(ft.Callback):
        writes = ("cbstate.history",)

    with pytest.raises(ft.CallbackOrderError) as info:
        linear_learner(MyHistory(), ft.callbacks.Recorder())
    assert not getattr(info.value, "__notes__", [])
    with pytest.raises(TypeError, match="usedefaultcallbacks must be True or False"):
        linear_learner(usedefaultcallbacks="no")


# ---------------------------------------------------------------------------------------------
# The callbacks behave the same whether or not stderr is a terminal


class Terminal:
    """A pseudo-terminal standing in for stderr: ``isatty()`` is true, as in a real shell."""

    END = b"<end of test output>"

    def __init__(self):
        self.master, slave = pty.openpty()
        # 24 rows of 120 columns: a new pty is 0 x 0, which tqdm would fill with nothing
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        self.file = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
        self.chunks: list[bytes] = []
        self.text = ""
        self.done = threading.Event()
        # Read all along: a pty holds only a few kilobytes before writes block.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        seen = b""
        while not self.done.is_set():
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            self.chunks.append(chunk)
            seen = (seen + chunk)[-2 * len(self.END) :]
            if self.END in seen:
                break
        self.done.set()

    def close(self) -> None:
        """Drain the pty into ``self.text``, then close it."""
        self.file.write(self.END.decode() + "\n")
        self.file.flush()
        self.done.wait(timeout=10)
        self.file.close()
        os.close(self.master)
        text = b"".join(self.chunks).decode("utf-8", "replace")
        self.text = text[: text.rfind(self.END.decode())]


@contextlib.contextmanager
def stderr_as(kind):
    """sys.stderr as a pseudo-terminal, or as a stream that is not a terminal (a pipe, a log).

    Set inside the test body: pytest puts its own capture back on sys.stderr after fixtures.
    """
    if kind == "terminal":
        term = Terminal()
        assert term.file.isatty()
        try:
            with contextlib.redirect_stderr(term.file):
                yield term
        finally:
            term.close()
    else:
        stream = io.StringIO()
        assert not stream.isatty()
        with contextlib.redirect_stderr(stream):
            yield stream


@pytest.mark.parametrize("kind", ["terminal", "pipe"])
def test_progress_bar_without_metrics_trains_the_same_on_a_terminal_and_off_it(kind):
    with warnings.catch_warnings(record=True) as caught, stderr_as(kind):
        warnings.simplefilter("always")
        learner = linear_learner(ft.callbacks.ProgressBar(mininterval=0), usedefaultcallbacks=False)
        ft.fit_(learner, 2)
    assert learner.epoch == 2
    # the declared dependency is the same either way: one warning at construction
    # the declared dependencies are the same either way: warned about once, at construction
    assert sorted(str(w.message).split(" but ")[0] for w in caught) == [
        "ProgressBar() reads learner.cbstate.metrics_epoch",
        "ProgressBar() reads learner.cbstate.metrics_step",
    ]


def test_progress_bar_on_a_terminal_draws_the_count_without_metrics_and_the_loss_with_them():
    for callbacks, loss_shown in (([], False), ([Metrics()], True)):
        with stderr_as("terminal") as term:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ProgressBar without Metrics warns (see above)
                learner = linear_learner(
                    ft.callbacks.ProgressBar(mininterval=0), *callbacks, usedefaultcallbacks=False
                )
            ft.fit_(learner, 1)
        text = term.text
        assert "Epoch 1 TrainingPhase" in text and "4/4" in text
        assert ("loss=" in text) is loss_shown


@pytest.mark.parametrize("kind", ["terminal", "pipe"])
def test_the_default_callbacks_fit_alike_on_a_terminal_and_off_it(kind):
    out = io.StringIO()
    with stderr_as(kind) as err:
        learner = linear_learner(MetricsPrinter(file=out, time=False))
        ft.fit_(learner, 2)
    assert learner.epoch == 2
    assert [ln.split()[0] for ln in out.getvalue().splitlines()] == ["epoch", "1", "2"]
    drawn = err.text if kind == "terminal" else err.getvalue()
    assert ("Epoch 2 ValidationPhase" in drawn) is (kind == "terminal")
