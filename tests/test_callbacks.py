"""Built-in callbacks, declared state access, and the order derived from it."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft
from fluxtrain import distributed
from fluxtrain.callbacks import (
    Accuracy,
    Checkpointer,
    CSVLogger,
    CustomCallback,
    EarlyStopping,
    GarbageCollect,
    JSONLinesLogger,
    Metric,
    Metrics,
    MetricsPrinter,
    PlotMetrics,
    ProgressBar,
    Recorder,
    SanityCheck,
    SanityCheckError,
    Scheduler,
    StopOnNaNLoss,
    TensorBoardLogger,
    Throttle,
    ToDevice,
)


def coeff_data(n=16, bs=8, coeff=3.0, seed=0):
    """FluxTraining's test data: x from 1..100, y = coeff * x."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(1, 101, (bs, 1), generator=g).float()
        out.append((x, coeff * x))
    return out


def coeff_learner(*callbacks, data=None, rule=None, w0=0.0):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w0)
    data = coeff_data() if data is None else data
    return ft.Learner(
        model,
        F.l1_loss,
        rule or ft.Descent(0.001),
        callbacks=list(callbacks),
        data=(data, data),
        usedefaultcallbacks=False,
    )


# ---------------------------------------------------------------------------------------------
# Throttle, CustomCallback


def test_throttled_callback_cancelling_every_second_step_leaves_8_of_16_steps():
    # FluxTraining.jl test/callbacks/conditional.jl
    def cancel(learner):
        raise ft.CancelStepException("test")

    throttled = Throttle(
        CustomCallback(cancel, ft.StepBegin, ft.TrainingPhase), every=2, event=ft.StepBegin
    )
    learner = coeff_learner(Recorder(), throttled)
    ft.epoch_(learner, ft.TrainingPhase())
    assert learner.cbstate.history[ft.TrainingPhase()].steps == 8


@pytest.mark.parametrize(
    ("kwargs", "steps"),
    [({"every": 2}, 8), ({"every": 16}, 1), ({"seconds": 0}, 16), ({"seconds": 3600}, 1)],
)
def test_throttled_recorder_sees_every_nth_step_end(kwargs, steps):
    learner = coeff_learner(Throttle(Recorder(), event=ft.StepEnd, **kwargs))
    ft.epoch_(learner, ft.TrainingPhase())
    assert learner.cbstate.history[ft.TrainingPhase()].steps == steps
    assert learner.cbstate.history[ft.TrainingPhase()].epochs == 1  # EpochEnd is not throttled


def test_throttle_stands_in_for_the_wrapped_callback():
    inner = Recorder()
    learner = coeff_learner(Metrics(), Throttle(inner, every=3))
    assert learner.get_callback(Recorder).callback is inner
    with pytest.raises(ValueError, match="exactly one of every"):
        Throttle(inner)


def test_custom_callback_filters_by_phase():
    seen = []
    cb = CustomCallback(lambda lr: seen.append(1), ft.StepEnd, ft.AbstractValidationPhase)
    ft.fit_(coeff_learner(cb, data=coeff_data(3)), 1)
    assert len(seen) == 3


# ---------------------------------------------------------------------------------------------
# Stopping


def test_early_stopping_1_ends_fit_without_exception_and_records_why():
    # Training on y = 3x while validating on y = -3x: the validation loss grows each epoch.
    train, valid = coeff_data(4), coeff_data(2, coeff=-3.0)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    stopper = EarlyStopping(1)
    learner = ft.Learner(
        model, F.l1_loss, ft.Descent(0.001), callbacks=[Metrics(), stopper], data=(train, valid)
    )
    ft.fit_(learner, 10)
    # Epoch 1 set the best, epoch 2 was worse: stopped at its end, and it counts (issue 14).
    assert learner.epoch == 2
    assert learner.cbstate.metrics_epoch[ft.ValidationPhase()].steps("Loss") == [1, 2]
    assert isinstance(learner.stop_reason, ft.CancelFittingException)
    assert learner.stop_reason.callback is stopper
    assert "Loss of ValidationPhase has not improved for 1 epoch" in learner.stop_reason.msg


def test_early_stopping_patience_and_max_mode():
    accs = iter([0.5, 0.6, 0.6, 0.55, 0.7])

    class FakeAccuracy(ft.Callback):
        writes = ("cbstate.metrics_epoch",)
        handles = (ft.EpochEnd,)

        def init(self, learner):
            learner.cbstate.metrics_epoch = ft.learner.state.PhaseDict(ft.callbacks.MetricHistory)

        def on(self, event, phase, learner):
            h = learner.cbstate.metrics_epoch[phase]
            h.add("Accuracy", len(h["Accuracy"]) + 1 if "Accuracy" in h else 1, next(accs))

    stopper = EarlyStopping(2, metric="Accuracy", mode="max", phase=ft.AbstractTrainingPhase)
    learner = coeff_learner(FakeAccuracy(), stopper, data=coeff_data(1))
    ft.fit_(learner, 10, (coeff_data(1), None))
    # best 0.6 at epoch 2; epochs 3 and 4 do not beat it: stop at the end of epoch 4.
    assert learner.epoch == 4 and stopper.best == 0.6 and stopper.wait == 2


def test_early_stopping_on_an_unrecorded_metric_says_what_is_recorded():
    learner = coeff_learner(Metrics(), EarlyStopping(1, metric="Accuracy"), data=coeff_data(1))
    with pytest.raises(KeyError, match=r"recorded: \['Loss'\]"):
        ft.fit_(learner, 1)


def test_stop_on_nan_loss_stops_before_the_update_that_would_spoil_the_parameters():
    data = coeff_data(4)
    data[2] = (data[2][0], torch.full_like(data[2][1], float("nan")))
    learner = coeff_learner(StopOnNaNLoss(), Recorder(), data=data)
    weights = []
    learner.add_callback(
        CustomCallback(
            lambda lr: weights.append(lr.model.weight.item()), ft.StepEnd, reads=("model",)
        )
    )
    ft.fit_(learner, 3)
    assert len(weights) == 2
    assert learner.model.weight.item() == weights[-1] and math.isfinite(weights[-1])
    assert "loss is nan" in learner.stop_reason.msg and "before updating" in learner.stop_reason.msg


# ---------------------------------------------------------------------------------------------
# Scheduler


def test_scheduler_sets_the_rate_that_update_uses():
    # loss = sum(w * x) with x = 1 has gradient 1, so Descent moves w by exactly eta each step.
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    etas = [0.5, 0.25, 0.125, 0.0625]
    sched = Scheduler(eta=lambda t: etas[t - 1])
    one = torch.ones(1, 1)
    learner = ft.Learner(model, lambda yp, y: yp.sum(), ft.Descent(10.0), callbacks=[sched])
    ws = []
    for _ in range(4):
        ft.step_(learner, ft.TrainingPhase(), (one, one))
        ws.append(model.weight.item())
    assert ws == pytest.approx([-0.5, -0.75, -0.875, -0.9375], abs=1e-7)
    assert learner.cbstate.hyperparams["eta"] == etas
    assert learner.opt_state.weight.rule.eta == 0.0625


def test_scheduler_with_an_exp_schedule_and_momentum_keeps_the_momentum():
    # Momentum: v = rho*v + eta*g; x -= v.  With g = 1: v1 = eta1, v2 = rho*eta1 + eta2, ...
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    sched = Scheduler(eta=ft.Exp(0.1, 0.5))
    one = torch.ones(1, 1)
    learner = ft.Learner(model, lambda yp, y: yp.sum(), ft.Momentum(1.0, 0.9), callbacks=[sched])
    v, w = 0.0, 0.0
    for t in range(1, 5):
        ft.step_(learner, ft.TrainingPhase(), (one, one))
        v = 0.9 * v + 0.1 * 0.5 ** (t - 1)
        w -= v
        assert model.weight.item() == pytest.approx(w, abs=1e-6)


def test_scheduler_only_advances_in_training_and_per_epoch_when_asked():
    sched = Scheduler({"eta": lambda t: 0.001 * t}, per="epoch")
    learner = coeff_learner(sched, data=coeff_data(2))
    ft.fit_(learner, 3)
    assert sched.t == 3
    assert learner.cbstate.hyperparams.steps("eta") == [1, 2, 3]


def test_scheduler_adjusts_the_selected_subtree_only():
    model = {"a": torch.nn.Linear(1, 1), "b": torch.nn.Linear(1, 1)}
    sched = Scheduler(eta=lambda t: 0.5, select=lambda st: st["a"])

    class Phase(ft.AbstractTrainingPhase):
        def step(self, learner, batch):
            return ft.runstep(lambda h, s: None, learner, self)

    learner = ft.Learner(model, F.mse_loss, ft.Descent(0.1), callbacks=[sched])
    ft.step_(learner, Phase(), None)
    assert learner.opt_state["a"].weight.rule.eta == 0.5
    assert learner.opt_state["b"].weight.rule.eta == 0.1


def test_scheduler_rejects_unknown_hyperparameters_at_the_first_step():
    learner = coeff_learner(Scheduler(gamma=lambda t: 0.1), data=coeff_data(1))
    with pytest.raises(ValueError, match="gamma"):
        ft.fit_(learner, 1)


# ---------------------------------------------------------------------------------------------
# Metrics and Recorder


def test_metrics_epoch_value_is_the_batch_size_weighted_mean_and_smooth_loss_follows_its_formula():
    x = torch.arange(10.0).reshape(10, 1)
    data = [(x[:4], torch.zeros(4, 1)), (x[4:8], torch.zeros(4, 1)), (x[8:], torch.zeros(2, 1))]
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    learner = ft.Learner(model, F.l1_loss, callbacks=[Metrics(smooth=0.5)], data=(data, data))
    ft.epoch_(learner, ft.ValidationPhase())
    step = learner.cbstate.metrics_step[ft.ValidationPhase()]
    assert step["Loss"] == [1.5, 5.5, 8.5]
    assert learner.cbstate.metrics_epoch[ft.ValidationPhase()]["Loss"] == [pytest.approx(4.5)]
    # SmoothLoss: m_t = m_{t-1} + max(1/t, 0.5) * (x_t - m_{t-1})
    m1 = 1.5
    m2 = m1 + 0.5 * (5.5 - m1)
    m3 = m2 + 0.5 * (8.5 - m2)
    assert step["SmoothLoss"] == pytest.approx([m1, m2, m3])


def test_metrics_accept_functions_and_metric_objects_and_reject_duplicates():
    def maxerror(yp, y):
        return (yp - y).abs().max()

    data = coeff_data(2)
    learner = coeff_learner(
        Metrics(maxerror, Metric(lambda yp, y: (yp - y).mean(), name="Bias")), data=data
    )
    ft.epoch_(learner, ft.ValidationPhase())
    h = learner.cbstate.metrics_epoch[ft.ValidationPhase()]
    assert h.names() == ["Loss", "Maxerror", "Bias"]
    assert h.last("Maxerror") == pytest.approx(sum(3 * x.max().item() for x, _ in data) / 2)
    with pytest.raises(ValueError, match="several metrics are named"):
        Metrics(Metric(maxerror, name="Loss"))
    with pytest.raises(ValueError, match="give a lambda metric a name"):
        Metrics(lambda yp, y: 0)


@pytest.mark.parametrize(
    ("yp", "y", "expected"),
    [
        ([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], [0, 0, 0], 2 / 3),
        ([[2.0, 1.0], [0.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]], 1.0),
        ([[0.9], [0.2], [0.7], [0.4]], [[1.0], [0.0], [0.0], [0.0]], 0.75),
    ],
)
def test_accuracy_for_labels_onehot_and_binary_targets(yp, y, expected):
    assert Accuracy().fn(torch.tensor(yp), torch.tensor(y)).item() == pytest.approx(expected)


def test_recorder_counts_epochs_steps_and_samples_per_phase():
    data = [(torch.ones(5, 1), torch.ones(5, 1))] * 3
    learner = coeff_learner(Recorder(), data=data)
    ft.fit_(learner, 2, (data, data[:1]))
    assert learner.cbstate.history[ft.TrainingPhase] == ft.callbacks.History(2, 6, 3, 30)
    assert learner.cbstate.history[ft.ValidationPhase] == ft.callbacks.History(2, 2, 1, 10)


# ---------------------------------------------------------------------------------------------
# Output callbacks


def test_progress_bar_draws_each_epoch_with_the_smoothed_loss():
    out = io.StringIO()
    bar = ProgressBar(disable=False, file=out, mininterval=0)
    learner = coeff_learner(Metrics(), bar, data=coeff_data(3))
    ft.fit_(learner, 1)
    text = out.getvalue()
    assert "Epoch 1 TrainingPhase" in text and "Epoch 1 ValidationPhase" in text
    assert "3/3" in text
    smooth = learner.cbstate.metrics_step[ft.TrainingPhase]["SmoothLoss"]
    assert f"loss={smooth[1]:.4g}" in text  # shown one redraw after it is set
    assert bar._bar is None  # closed at the end


def test_csv_and_json_lines_loggers_append_epoch_rows(tmp_path):
    learner = coeff_learner(
        Metrics(),
        CSVLogger(tmp_path / "log.csv"),
        JSONLinesLogger(tmp_path / "log.jsonl", steps=True),
        data=coeff_data(2),
    )
    ft.fit_(learner, 2)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [(r["phase"], r["index"]) for r in rows] == [
        ("TrainingPhase", "1"), ("ValidationPhase", "1"), ("TrainingPhase", "2"), ("ValidationPhase", "2"),
    ]  # fmt: skip
    expected = learner.cbstate.metrics_epoch[ft.TrainingPhase]["Loss"]
    assert [float(r["Loss"]) for r in rows if r["phase"] == "TrainingPhase"] == pytest.approx(
        expected
    )
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in records) == 8
    assert {"kind": "epoch", "phase": "ValidationPhase", "index": 2} == {
        k: records[-1][k] for k in ("kind", "phase", "index")
    }
    # A second fit appends without a second header.
    ft.fit_(learner, 1)
    assert len(list(csv.DictReader((tmp_path / "log.csv").open()))) == 6


def test_tensorboard_logger_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    learner = coeff_learner(Metrics(), TensorBoardLogger(tmp_path), data=coeff_data(2))
    ft.fit_(learner, 2)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    values = [e.value for e in acc.Scalars("TrainingPhase/Loss")]
    assert values == pytest.approx(learner.cbstate.metrics_epoch[ft.TrainingPhase]["Loss"])


def test_tensorboard_logger_writes_the_learning_rate_of_a_scheduled_rule(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rule = ft.Scheduler(ft.Descent, eta=ft.Exp(0.01, 0.5))  # 0.01, 0.005, ... per step
    learner = coeff_learner(
        Metrics(), TensorBoardLogger(tmp_path, steps=True), data=coeff_data(2), rule=rule
    )
    ft.fit_(learner, 2)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    per_step = [e.value for e in acc.Scalars("hyperparams/step/eta")]
    per_epoch = [e.value for e in acc.Scalars("hyperparams/eta")]
    batches = len(per_step) // 2
    assert per_step == pytest.approx([0.01 * 0.5**k for k in range(2 * batches)])
    assert per_epoch == pytest.approx([per_step[batches - 1], per_step[-1]])


def test_learning_rates_names_each_part_when_rates_differ():
    model = {"enc": torch.zeros(2), "dec": torch.zeros(2)}
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01)), model)
    assert ft.callbacks.learning_rates(state) == {"eta": 0.01}
    ft.adjust_(state["dec"], 0.001)
    assert ft.callbacks.learning_rates(state) == {"eta/enc": 0.01, "eta/dec": 0.001}


def test_plot_metrics_writes_a_png(tmp_path):
    learner = coeff_learner(Metrics(), PlotMetrics(tmp_path / "curves.png"), data=coeff_data(2))
    ft.fit_(learner, 2)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_main_process_writes_and_prints(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    out = io.StringIO()
    saved = []
    cbs = [
        Metrics(),
        MetricsPrinter(file=out),
        CSVLogger(tmp_path / "a.csv"),
        PlotMetrics(tmp_path / "a.png"),
        Checkpointer(tmp_path / "ck", save_fn=lambda p, **kw: saved.append(p)),
    ]
    ft.fit_(coeff_learner(*cbs, data=coeff_data(1)), 1)
    assert out.getvalue() == "" and saved == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Checkpointer, ToDevice, GarbageCollect, SanityCheck


def test_checkpointer_saves_model_state_and_learner_state_after_each_epoch_keeping_the_last(
    tmp_path,
):
    calls = []

    def save(path, model, opt_state, learner):
        calls.append((path.name, learner["epoch"], learner["progress"]["phases_done"]))
        path.write_text("x")

    cp = Checkpointer(tmp_path, keep=2, save_fn=save)
    learner = coeff_learner(Recorder(), cp, data=coeff_data(2))
    ft.fit_(learner, 3)
    assert calls == [
        ("epoch_001.safetensors", 0, 2),
        ("epoch_002.safetensors", 1, 2),
        ("epoch_003.safetensors", 2, 2),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_002.safetensors",
        "epoch_003.safetensors",
    ]
    assert cp.saved == [tmp_path / "epoch_002.safetensors", tmp_path / "epoch_003.safetensors"]


def test_checkpointer_runs_after_every_writer_of_learner_state(tmp_path):
    cp = Checkpointer(tmp_path, save_fn=lambda *a, **k: None)
    learner = coeff_learner(cp, Metrics(), Recorder(), ProgressBar())
    order = [type(cb).__name__ for cb in learner.callbacks]
    assert order.index("Checkpointer") > max(order.index("Metrics"), order.index("Recorder"))


def test_failed_save_propagates_and_keeps_earlier_checkpoints(tmp_path):
    n = []

    def save(path, model, opt_state, learner):
        n.append(1)
        if len(n) == 2:
            raise OSError("disk full")
        path.write_text("ok")

    learner = coeff_learner(Checkpointer(tmp_path, save_fn=save), data=coeff_data(1))
    with pytest.raises(OSError, match="disk full"):
        ft.fit_(learner, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_001.safetensors"]


def test_to_device_moves_batches_and_model_once_and_keeps_the_optimiser_state():
    seen = []
    spy = CustomCallback(
        lambda lr: seen.append(lr.step.xs.device), ft.StepBegin, reads=("step.xs",)
    )
    model = torch.nn.Linear(1, 1, bias=False)
    learner = ft.Learner(
        model,
        F.l1_loss,
        ft.Momentum(0.001),
        callbacks=[spy, ToDevice("cpu")],
        data=coeff_data(2),
        usedefaultcallbacks=False,
    )
    assert [type(cb).__name__ for cb in learner.callbacks] == ["ToDevice", "CustomCallback"]
    ft.fit_(learner, 1)
    leaf = learner.opt_state.weight
    momentum = leaf.state.clone()
    ft.fit_(learner, 1)  # a second fit must not reset the momentum
    assert momentum.abs().sum() > 0
    assert seen == [torch.device("cpu")] * 4
    assert learner.opt_state.weight is leaf


def test_to_device_moving_keeps_momenta_values(monkeypatch):
    from fluxtrain.learner.callbacks import device as devmod

    model = torch.nn.Linear(2, 1)
    st = ft.setup(ft.Momentum(0.1), model)
    ft.update_(st, model, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    before = st.weight.state.clone()
    devmod.move_model_and_state(model, st, torch.device("cpu"))
    assert torch.equal(st.weight.state, before)
    ft.update_(st, model, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    assert torch.allclose(st.weight.state, 0.9 * before + 0.1)


def test_garbage_collect_runs_every_n_steps(monkeypatch):
    import gc

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1))
    ft.epoch_(coeff_learner(GarbageCollect(5)), ft.TrainingPhase())
    assert len(calls) == 3


def test_sanity_check_reports_a_shape_error_readably_and_changes_nothing():
    data = [(torch.ones(4, 3), torch.ones(4, 1))]
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    stats = model[1].running_mean.clone()
    learner = ft.Learner(model, F.mse_loss, callbacks=[SanityCheck()], data=(data, data))
    with pytest.raises(SanityCheckError) as info:
        ft.fit_(learner, 1)
    msg = str(info.value)
    assert "'model(xs) runs' failed" in msg
    assert "xs is a tensor of shape (4, 3)" in msg
    assert "passed   training data yields (xs, ys) pairs" in msg
    assert "not run  lossfn" in msg
    assert torch.equal(model[1].running_mean, stats)


def test_sanity_check_catches_a_non_scalar_loss_and_a_model_without_gradient():
    data = [(torch.ones(4, 2), torch.ones(4, 1))]
    learner = ft.Learner(
        torch.nn.Linear(2, 1), lambda yp, y: yp - y, callbacks=[SanityCheck()], data=(data, data)
    )
    with pytest.raises(SanityCheckError, match=r"tensor of shape \(4, 1\); it must be a scalar"):
        ft.fit_(learner, 1)

    def detached(yp, y):
        return F.mse_loss(yp.detach(), y) + torch.tensor(0.0, requires_grad=True)

    learner = ft.Learner(
        torch.nn.Linear(2, 1), detached, callbacks=[SanityCheck()], data=(data, data)
    )
    with pytest.raises(SanityCheckError, match="no parameter gets a gradient"):
        ft.fit_(learner, 1)


def test_sanity_check_passes_a_good_setup_once_and_warns_without_validation_data():
    check = SanityCheck()
    learner = coeff_learner(check, data=coeff_data(2))
    ft.fit_(learner, 2)
    assert check.checked
    train_only = ft.Learner(
        torch.nn.Linear(1, 1), F.l1_loss, callbacks=[SanityCheck()], data=coeff_data(1)
    )
    with pytest.warns(UserWarning, match="no validation data"):
        ft.fit_(train_only, 1)


# ---------------------------------------------------------------------------------------------
# Declared access


class Reads(ft.Callback):
    handles = (ft.StepEnd,)

    def __init__(self, reads=(), writes=(), action=None):
        self.reads = reads
        self.writes = writes
        self.action = action

    def on(self, event, phase, learner):
        self.action(learner)

    def __repr__(self):
        return "Reads()"


def run_one_step(cb):
    learner = coeff_learner(cb, data=coeff_data(1))
    ft.epoch_(learner, ft.TrainingPhase())
    return learner


def test_an_undeclared_read_raises_naming_the_path_to_declare():
    cb = Reads(reads=("step.loss",), action=lambda lr: lr.step.xs)
    with pytest.raises(
        ft.ProtectedAccessError,
        match=r"Reads\(\) read learner.step.xs without declaring it: add 'step.xs' to its `reads`",
    ):
        run_one_step(cb)


def test_a_write_declared_only_as_read_raises():
    cb = Reads(reads=("step",), action=lambda lr: setattr(lr.step, "loss", 0))
    with pytest.raises(ft.ProtectedAccessError, match=r"wrote learner\.step\.loss"):
        run_one_step(cb)
    cb = Reads(reads=("cbstate",), action=lambda lr: setattr(lr.cbstate, "mine", 1))
    with pytest.raises(ft.ProtectedAccessError, match=r"add 'cbstate\.mine' to its `writes`"):
        run_one_step(cb)


def test_declared_reads_and_writes_are_allowed_and_reach_the_learner():
    def act(lr):
        lr.cbstate.mine = float(lr.step.loss) + lr.step.ŷs.shape[0]

    learner = run_one_step(
        Reads(reads=("step.loss", "step.ys_pred"), writes=("cbstate.mine",), action=act)
    )
    assert learner.cbstate.mine == pytest.approx(float(learner.step.loss) + 8)


def test_star_reads_everything_but_writes_nothing():
    seen = []
    learner = run_one_step(Reads(reads=("*",), action=lambda lr: seen.append(lr.model is not None)))
    assert seen == [True] and learner is not None
    with pytest.raises(ft.ProtectedAccessError):
        run_one_step(Reads(reads=("*",), action=lambda lr: setattr(lr, "epoch", 3)))


def test_declaring_a_path_the_learner_lacks_is_an_error():
    with pytest.raises(ValueError, match=r"learner\.modle"):
        coeff_learner(Reads(reads=("modle",)))


# ---------------------------------------------------------------------------------------------
# Order


class W(ft.Callback):
    def __init__(self, name, reads=(), writes=(), runafter=(), runbefore=()):
        self.name = name
        self.reads, self.writes = reads, writes
        self.runafter, self.runbefore = runafter, runbefore

    def __repr__(self):
        return self.name


def order(*cbs):
    return [cb.name for cb in coeff_learner(*cbs).callbacks]


def test_writers_run_before_readers_and_the_given_order_is_kept_otherwise():
    a = W("a", reads=("cbstate.x",))
    b = W("b")
    c = W("c", writes=("cbstate.x",))
    assert order(a, b, c) == ["b", "c", "a"]
    assert order(b, a, c) == ["b", "c", "a"]
    d = W("d", writes=("cbstate",))  # writing a prefix touches cbstate.x too
    assert order(a, d) == ["d", "a"]


def test_two_writers_of_the_same_state_are_an_error_unless_ordered():
    class First(W):
        pass

    with pytest.raises(ft.CallbackOrderError, match=r"a and b both write learner.cbstate.x"):
        order(W("a", writes=("cbstate.x",)), W("b", writes=("cbstate.x",)))
    ordered = order(
        W("a", writes=("cbstate.x",), runafter=(First,)), First("f", writes=("cbstate",))
    )
    assert ordered == ["f", "a"]


def test_a_cycle_is_an_error_listing_its_reasons():
    with pytest.raises(ft.CallbackOrderError, match="cycle") as info:
        order(
            W("a", writes=("cbstate.x",), reads=("cbstate.y",)),
            W("b", writes=("cbstate.y",), reads=("cbstate.x",)),
        )
    assert "a writes learner.cbstate.x, which b reads" in str(info.value)
    assert "b writes learner.cbstate.y, which a reads" in str(info.value)


def test_reading_callback_state_nobody_writes_warns():
    with pytest.warns(
        UserWarning, match=r"reads learner.cbstate.metrics_epoch but no callback writes it"
    ):
        coeff_learner(EarlyStopping(1))


def test_builtin_defaults_are_ordered_writers_first():
    names = [type(cb).__name__ for cb in ft.Learner(torch.nn.Linear(1, 1), F.mse_loss).callbacks]
    assert names.index("Metrics") < names.index("ProgressBar")
    assert names.index("Metrics") < names.index("MetricsPrinter")


# ---------------------------------------------------------------------------------------------
# Adding, removing, replacing, getting


def test_add_get_replace_remove_callbacks_recompute_the_order():
    with pytest.warns(UserWarning, match="no callback writes it"):
        learner = coeff_learner(MetricsPrinter())
    assert learner.get_callback(Metrics) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.add_callback(Metrics())
    assert [type(cb).__name__ for cb in learner.callbacks] == ["Metrics", "MetricsPrinter"]
    assert "metrics_epoch" in learner.cbstate  # the new callback was initialised
    old = learner.replace_callback(Metrics(Accuracy()))
    assert old is not None and len(learner.get_callback(Metrics).metrics) == 2
    assert (
        learner.replace_callback(Recorder()) is None and learner.get_callback(Recorder) is not None
    )
    removed = learner.remove_callback(Recorder)
    assert isinstance(removed, Recorder) and learner.get_callback(Recorder) is None
    assert learner.remove_callback(Recorder) is None


def test_a_rejected_callback_leaves_the_learner_unchanged():
    learner = coeff_learner(W("a", writes=("cbstate.x",)))
    before = learner.callbacks
    with pytest.raises(ft.CallbackOrderError):
        learner.add_callback(W("b", writes=("cbstate.x",)))
    assert learner.callbacks == before


def test_sanity_check_does_not_change_what_training_sees():
    def run(with_check):
        torch.manual_seed(5)
        X, Y = torch.randn(32, 2), torch.randn(32, 1)
        train = ft.DataLoader((X, Y), batchsize=8, shuffle=True, rng=1)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
        )
        cbs = [SanityCheck()] if with_check else []
        learner = ft.Learner(model, F.mse_loss, ft.Descent(0.1), callbacks=cbs, data=(train, train))
        ft.fit_(learner, 2)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Issue 14, item 6: keep holds across resumes; keeping the best k by a metric


def checkpointed(folder, *cbs, **kw):
    cp = Checkpointer(folder, **kw)
    return coeff_learner(Recorder(), Metrics(), *cbs, cp, data=coeff_data(2)), cp


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_checkpointer_keep_holds_across_resumes(tmp_path):
    learner, cp = checkpointed(tmp_path, keep=2)
    ft.fit_(learner, 2)
    assert files(tmp_path) == ["epoch_001.safetensors", "epoch_002.safetensors"]
    for resume_from, nepochs in (("epoch_002", 4), ("epoch_004", 6)):
        learner, cp = checkpointed(tmp_path, keep=2)
        ft.fit_(learner, nepochs, resume=tmp_path / f"{resume_from}.safetensors")
        # The checkpoint resumed from is rotated out like any other.
        assert files(tmp_path) == [
            f"epoch_{nepochs - 1:03d}.safetensors",
            f"epoch_{nepochs:03d}.safetensors",
        ]
        assert cp.saved == [tmp_path / name for name in files(tmp_path)]


def test_checkpointer_state_in_a_checkpoint_lists_the_files_kept_after_writing_it(tmp_path):
    learner, _ = checkpointed(tmp_path, keep=2)
    ft.fit_(learner, 3)
    saved = ft.load(tmp_path / "epoch_003.safetensors", restore_rng=False)["learner"]
    assert saved["callbacks"]["Checkpointer"]["saved"] == [
        str(tmp_path / "epoch_002.safetensors"),
        str(tmp_path / "epoch_003.safetensors"),
    ]


class FakeMetric(ft.Callback):
    """Records the next of ``values`` as ``name`` at each training EpochEnd."""

    writes = ("cbstate.metrics_epoch",)
    handles = (ft.EpochEnd,)
    runafter = (Metrics,)  # which makes cbstate.metrics_epoch

    def __init__(self, values, name="Accuracy"):
        self.values = list(values)
        self.name = name
        self.n = 0

    def on(self, event, phase, learner):
        if isinstance(phase, ft.AbstractTrainingPhase):
            self.n += 1
            learner.cbstate.metrics_epoch[phase].add(self.name, self.n, self.values[self.n - 1])

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_checkpointer_keeps_the_best_k_by_a_metric_and_the_latest(tmp_path):
    accs = [0.5, 0.9, 0.6, 0.8, 0.7, 0.95]
    kw = dict(keep_best=2, metric="Accuracy", mode="max", phase=ft.AbstractTrainingPhase)
    learner, cp = checkpointed(tmp_path, FakeMetric(accs), **kw)
    ft.fit_(learner, 5)
    # Best two: epoch 2 (0.9) and epoch 4 (0.8); epoch 5 is kept as the latest, to resume.
    assert files(tmp_path) == [f"epoch_{e:03d}.safetensors" for e in (2, 4, 5)]
    assert cp.best == [
        (0.9, tmp_path / "epoch_002.safetensors"),
        (0.8, tmp_path / "epoch_004.safetensors"),
    ]
    learner, cp = checkpointed(tmp_path, FakeMetric(accs), **kw)
    ft.fit_(learner, 6, resume=tmp_path / "epoch_005.safetensors")
    # Epoch 6 (0.95) is the best and the latest: epochs 4 and 5 go.
    assert files(tmp_path) == ["epoch_002.safetensors", "epoch_006.safetensors"]


def test_checkpointer_keep_best_needs_the_metric_recorded(tmp_path):
    learner, _ = checkpointed(tmp_path, keep_best=1, metric="Accuracy")
    with pytest.raises(KeyError, match=r"Checkpointer.*'Accuracy'.*recorded: \['Loss'\]"):
        ft.fit_(learner, 1)
    with pytest.raises(ValueError, match="keep_best must be"):
        Checkpointer(tmp_path, keep_best=0)
    with pytest.raises(ValueError, match="mode must be"):
        Checkpointer(tmp_path, keep_best=1, mode="lowest")


def test_stop_on_nan_loss_stops_before_applying_a_nan_gradient_of_a_finite_loss():
    # |w x - y| written as sqrt((w x - y)^2): at w x == y the loss is 0 and its gradient NaN
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    data = [(torch.ones(1, 1), torch.ones(1, 1))]
    learner = ft.Learner(
        model,
        lambda yp, y: torch.sqrt(((yp - y) ** 2).sum()),
        callbacks=[ft.callbacks.StopOnNaNLoss()],
        data=data,
        optimizer=ft.Descent(0.1),
        usedefaultcallbacks=False,
    )
    ft.fit_(learner, 2)
    assert "weight" in learner.stop_reason.msg and "Inf or NaN" in learner.stop_reason.msg
    assert float(model.weight) == 1.0  # never updated from the NaN gradient
