"""The Learner: seed 004's step, epoch and loop definitions, event order, control flow, fit_,
custom phases, and saving/resuming learner state."""

from __future__ import annotations

import collections
import copy
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import fluxtrain as ft
from fluxtrain import checkpoint as ck
from fluxtrain.learner.events import BackwardBegin, BackwardEnd, LossBegin


def mae(yp, y):
    return (yp - y).abs().mean()


def batches(n=3, bs=4, din=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, din, generator=g)
        out.append((x, x.sum(1, keepdim=True)))
    return out


class EventLog(ft.Callback):
    """Records (event name, phase name) for every event."""

    def __init__(self):
        self.log = []

    def on(self, event, phase, learner):
        self.log.append((type(event).__name__, None if phase is None else type(phase).__name__))


# ---------------------------------------------------------------------------------------------
# Seed 004: the three step definitions


class PlainPhase(ft.AbstractTrainingPhase):
    """Seed 004's first step!: gradient and update, no runstep (so no step events)."""

    def step(self, learner, batch):
        xs, ys = batch

        def loss_of(model):
            ys_pred = model(xs)
            return learner.lossfn(ys_pred, ys)

        (grads,) = ft.gradient(loss_of, learner.model)
        ft.update_(learner.opt_state, learner.model, grads)


class RunstepPhase(ft.AbstractTrainingPhase):
    """Seed 004's second step!: the same inside runstep, storing the state."""

    def step(self, learner, batch):
        def stepfn(handle, state):
            state.xs, state.ys = batch

            def loss_of(model):
                state.ŷs = model(state.xs)
                state.loss = learner.lossfn(state.ŷs, state.ys)
                return state.loss

            (state.grads,) = ft.gradient(loss_of, learner.model)
            ft.update_(learner.opt_state, learner.model, state.grads)

        return ft.runstep(stepfn, learner, self)


class HandlePhase(ft.AbstractTrainingPhase):
    """Seed 004's third step!: with handle(LossBegin()) etc. (FluxTraining's TrainingPhase),
    written with the context-manager form of runstep."""

    def step(self, learner, batch):
        with ft.runstep(learner, self) as (handle, state):
            state.xs, state.ys = batch

            def loss_of(model):
                state.ŷs = model(state.xs)
                handle(LossBegin())
                state.loss = learner.lossfn(state.ŷs, state.ys)
                handle(BackwardBegin())
                return state.loss

            (state.grads,) = ft.gradient(loss_of, learner.model)
            handle(BackwardEnd())
            ft.update_(learner.opt_state, learner.model, state.grads)
        return state


class SeedValidationPhase(ft.AbstractValidationPhase):
    """Seed 004's ValidationPhase."""

    def step(self, learner, batch):
        def stepfn(_, state):
            state.xs, state.ys = batch
            state.ŷs = learner.model(state.xs)
            state.loss = learner.lossfn(state.ŷs, state.ys)

        return ft.runstep(stepfn, learner, self)


def linear_learner(callbacks=(), rule=None, data=None):
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    return ft.Learner(
        model,
        mae,
        rule or ft.Descent(0.1),
        callbacks=list(callbacks),
        data=data,
        usedefaultcallbacks=False,
    )


def test_seed_plain_step_trains_but_fires_only_epoch_events():
    log = EventLog()
    learner = linear_learner([log])
    ft.epoch_(learner, PlainPhase(), batches(3))
    assert learner.model.weight.abs().sum() > 0
    assert log.log == [("EpochBegin", "PlainPhase"), ("EpochEnd", "PlainPhase")]


def test_seed_runstep_step_stores_the_state_callbacks_read():
    losses = []
    cb = ft.callbacks.CustomCallback(
        lambda lr: losses.append((lr.step.loss.item(), lr.step.ys_pred.shape)),
        ft.StepEnd,
        reads=("step.loss", "step.ys_pred"),
    )
    learner = linear_learner([cb])
    data = batches(3)
    ft.epoch_(learner, RunstepPhase(), data)
    # The first step's loss is the zero model's MAE against ys.
    assert losses[0][0] == pytest.approx(data[0][1].abs().mean().item())
    assert [s for _, s in losses] == [torch.Size([4, 1])] * 3
    assert learner.step.ŷs is learner.step.ys_pred
    assert set(learner.step.keys()) == {"xs", "ys", "ys_pred", "loss", "grads"}


def test_seed_handle_step_fires_loss_and_backward_events_in_order():
    log = EventLog()
    learner = linear_learner([log])
    ft.epoch_(learner, HandlePhase(), batches(2))
    step = ["StepBegin", "LossBegin", "BackwardBegin", "BackwardEnd", "StepEnd"]
    assert [e for e, _ in log.log] == ["EpochBegin", *step, *step, "EpochEnd"]


def test_seed_handle_step_is_the_builtin_training_step():
    # Same data, same start: the seed's step and TrainingPhase give the same parameters.
    a, b = linear_learner(), linear_learner()
    ft.epoch_(a, HandlePhase(), batches(3))
    ft.epoch_(b, ft.TrainingPhase(), batches(3))
    torch.testing.assert_close(a.model.weight, b.model.weight, rtol=0, atol=0)


def test_seed_validation_phase_runs_forward_and_loss_only():
    learner = linear_learner([ft.callbacks.Metrics()])
    before = learner.model.weight.clone()
    data = batches(3)
    ft.epoch_(learner, SeedValidationPhase(), data)
    assert torch.equal(learner.model.weight, before)
    hist = learner.cbstate.metrics_epoch[SeedValidationPhase()]
    expected = sum(y.abs().mean().item() for _, y in data) / 3
    assert hist.last("Loss") == pytest.approx(expected)


def test_seed_withepoch_early_exit_loop_ends_cleanly_and_records_why():
    learner = linear_learner()
    phase = ft.TrainingPhase()
    data = batches(50)
    seen = []

    def epochfn(handle):
        for batch in data:
            ft.step_(learner, phase, batch)
            seen.append(learner.step.loss.item())
            if learner.step.loss < 0.1:
                raise ft.CancelFittingException("Low loss reached.")

    ft.runepoch(epochfn, learner, phase)  # returns: nothing escapes
    assert seen[-1] < 0.1 and len(seen) < 50
    assert learner.stop_reason.msg == "Low loss reached."
    assert learner.stop_reason.callback is None


# ---------------------------------------------------------------------------------------------
# Event order and fit_


def test_events_fire_in_documented_order_for_two_epochs_of_three_batches():
    log = EventLog()
    data = batches(3)
    learner = linear_learner([log], data=(data, data))
    ft.fit_(learner, 2)
    T, V = "TrainingPhase", "ValidationPhase"
    train_step = [
        (e, T) for e in ("StepBegin", "LossBegin", "BackwardBegin", "BackwardEnd", "StepEnd")
    ]
    valid_step = [(e, V) for e in ("StepBegin", "LossBegin", "StepEnd")]
    epoch = (
        [("EpochBegin", T)]
        + train_step * 3
        + [("EpochEnd", T), ("EpochBegin", V)]
        + valid_step * 3
        + [("EpochEnd", V)]
    )
    assert log.log == [("FitBegin", None)] + epoch * 2 + [("FitEnd", None)]


def test_fit_learns_coefficient_three_like_fluxtraining():
    # FluxTraining.jl test/training.jl "Basic Learner convergence": y = 3x, 16 batches of 8
    # with x drawn from 1..100, MAE loss, Descent(0.001), 5 epochs: coefficient within 0.1 of 3.
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(16):
        x = torch.randint(1, 101, (8, 1), generator=g).float()
        data.append((x, 3 * x))
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(torch.rand(1, generator=g).item())
    learner = ft.Learner(model, F.l1_loss, ft.Descent(0.001), callbacks=[], data=(data, data))
    ft.fit_(learner, 5)
    assert abs(model.weight.item() - 3) < 0.1
    assert learner.epoch == 5


def test_fit_without_validation_data_runs_training_epochs_only():
    log = EventLog()
    learner = linear_learner([log], data=batches(2))
    ft.fit_(learner, 2)
    assert {p for _, p in log.log} == {None, "TrainingPhase"}
    assert learner.data.validation is None


def test_fit_needs_training_data():
    with pytest.raises(ValueError, match="no training data"):
        ft.fit_(linear_learner(), 1)


def test_fit_with_data_argument_overrides_learner_data():
    rec = ft.callbacks.Recorder()
    learner = linear_learner([rec], data=batches(2))
    ft.fit_(learner, 1, (batches(5), batches(1)))
    assert learner.cbstate.history[ft.TrainingPhase].steps == 5
    assert learner.cbstate.history[ft.ValidationPhase].steps == 1


# ---------------------------------------------------------------------------------------------
# Control flow


def cancel_on(event_cls, exc, when=lambda n: True, phase=ft.Phase):
    count = collections.Counter()

    def fn(learner):
        count["n"] += 1
        if when(count["n"]):
            raise exc("test")

    return ft.callbacks.CustomCallback(fn, event_cls, phase)


def test_cancel_step_at_step_begin_skips_the_step_and_its_step_end():
    log = EventLog()
    cancel = cancel_on(ft.StepBegin, ft.CancelStepException, when=lambda n: n == 2)
    learner = linear_learner([cancel, log])
    ft.epoch_(learner, ft.TrainingPhase(), batches(3))
    events = [e for e, _ in log.log]
    assert events.count("StepBegin") == 2  # the cancelling callback ran first, the log did not
    assert events.count("StepEnd") == 2


def test_cancel_step_at_step_begin_with_context_manager_step_is_caught_by_step_():
    cancel = cancel_on(ft.StepBegin, ft.CancelStepException)
    learner = linear_learner([cancel])
    before = learner.model.weight.clone()
    ft.epoch_(learner, HandlePhase(), batches(3))
    assert torch.equal(learner.model.weight, before)


def test_cancel_step_inside_step_code_keeps_earlier_updates_only():
    class HalfStep(ft.AbstractTrainingPhase):
        def step(self, learner, batch):
            with ft.runstep(learner, self, {"xs": batch[0]}) as (_, state):
                state.done = "first half"
                raise ft.CancelStepException("skip the rest")
            return state

    log = EventLog()
    learner = linear_learner([log])
    state = ft.step_(learner, HalfStep(), batches(1)[0])
    assert state.done == "first half"
    assert [e for e, _ in log.log] == ["StepBegin"]


def test_cancel_epoch_skips_the_rest_of_the_epoch_but_fitting_goes_on():
    log = EventLog()
    cancel = cancel_on(ft.StepEnd, ft.CancelEpochException, when=lambda n: n == 2)
    data = batches(3)
    learner = linear_learner([log, cancel], data=(data, data))
    ft.fit_(learner, 1)
    events = [x for x in log.log if x[0] in ("EpochBegin", "EpochEnd", "StepEnd")]
    T, V = "TrainingPhase", "ValidationPhase"
    assert events == [
        ("EpochBegin", T), ("StepEnd", T), ("StepEnd", T),
        ("EpochBegin", V), ("StepEnd", V), ("StepEnd", V), ("StepEnd", V), ("EpochEnd", V),
    ]  # fmt: skip
    assert learner.epoch == 1


def test_cancel_fitting_from_callback_ends_fit_records_reason_and_fires_fit_end():
    log = EventLog()
    cancel = cancel_on(ft.StepEnd, ft.CancelFittingException, when=lambda n: n == 2)
    data = batches(3)
    learner = linear_learner([cancel, log], data=(data, data))
    out = ft.fit_(learner, 3)
    assert out is learner
    assert learner.stop_reason.msg == "test"
    assert learner.stop_reason.callback is cancel
    assert log.log[-1] == ("FitEnd", None)
    assert [e for e, _ in log.log].count("StepEnd") == 1
    assert learner.epoch == 0 and learner.progress is None


def test_a_new_fit_clears_the_previous_stop_reason():
    cancel = cancel_on(ft.EpochBegin, ft.CancelFittingException, when=lambda n: n == 1)
    learner = linear_learner([cancel], data=batches(2))
    ft.fit_(learner, 2)
    assert learner.stop_reason is not None
    ft.fit_(learner, 1)
    assert learner.stop_reason is None and learner.epoch == 1


def test_other_errors_from_callbacks_propagate_naming_the_callback():
    def boom(learner):
        raise RuntimeError("boom")

    learner = linear_learner([ft.callbacks.CustomCallback(boom, ft.StepEnd)], data=batches(2))
    with pytest.raises(RuntimeError, match="boom") as info:
        ft.fit_(learner, 1)
    assert any(
        "CustomCallback(boom, StepEnd)" in n and "StepEnd()" in n for n in info.value.__notes__
    )
    assert learner.progress is None


# ---------------------------------------------------------------------------------------------
# Phases and modes


def test_model_is_in_train_mode_for_training_and_eval_mode_for_validation_then_restored():
    modes = []
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5))
    model.eval()

    class Spy(ft.Callback):
        reads = ("model",)
        handles = (ft.StepEnd,)

        def on(self, event, phase, learner):
            modes.append((type(phase).__name__, learner.model.training, learner.model[1].training))

    data = batches(1)
    learner = ft.Learner(model, F.mse_loss, callbacks=[Spy()], data=(data, data))
    ft.fit_(learner, 1)
    assert modes == [("TrainingPhase", True, True), ("ValidationPhase", False, False)]
    assert not model.training and not model[1].training


def test_validation_step_builds_no_autograd_graph():
    learner = linear_learner()
    state = ft.step_(learner, ft.ValidationPhase(), batches(1)[0])
    assert not state.ys_pred.requires_grad and state.grads is None


def test_training_step_stores_detached_loss_and_gradient_tree():
    learner = linear_learner()
    state = ft.step_(learner, ft.TrainingPhase(), batches(1)[0])
    assert not state.loss.requires_grad and state.loss.dim() == 0
    assert state.grads.weight.shape == (1, 2)


def test_autocast_runs_forward_and_loss_in_bfloat16():
    dtypes = []
    cb = ft.callbacks.CustomCallback(
        lambda lr: dtypes.append(lr.step.ys_pred.dtype), ft.LossBegin, reads=("step.ys_pred",)
    )
    model = torch.nn.Linear(2, 1)
    learner = ft.Learner(
        model, F.mse_loss, ft.Descent(0.1), callbacks=[cb], autocast=torch.bfloat16
    )
    ft.step_(learner, ft.TrainingPhase(), batches(1)[0])
    ft.step_(learner, ft.ValidationPhase(), batches(1)[0])
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert model.weight.dtype == torch.float32


def test_batches_that_are_not_pairs_give_a_readable_error():
    learner = linear_learner()
    with pytest.raises(TypeError, match=r"pairs \(xs, ys\), got a tuple of length 3.*override"):
        ft.step_(learner, ft.TrainingPhase(), (1, 2, 3))


def test_phase_without_step_says_what_to_define():
    class Empty(ft.AbstractTrainingPhase):
        pass

    with pytest.raises(NotImplementedError, match=r"define step\(self, learner, batch\)"):
        ft.step_(linear_learner(), Empty(), batches(1)[0])


def test_epoch_without_data_names_the_missing_data():
    with pytest.raises(ValueError, match="no validation data"):
        ft.epoch_(linear_learner(), ft.ValidationPhase())


def test_phases_compare_by_class_and_fields():
    assert ft.TrainingPhase() == ft.TrainingPhase()
    assert ft.TrainingPhase() != ft.ValidationPhase()
    assert {ft.TrainingPhase(): 1}[ft.TrainingPhase()] == 1


# ---------------------------------------------------------------------------------------------
# A custom phase: two models trained against each other


GAN = collections.namedtuple("GAN", ["generator", "critic"])


class GANPhase(ft.AbstractTrainingPhase):
    """Least-squares GAN step on one-dimensional data: critic update, then generator update,
    each on its own part of the model tree and of the optimiser state."""

    def step(self, learner, batch):
        real, noise = batch
        gen, critic = learner.model.generator, learner.model.critic

        def stepfn(handle, state):
            state.xs, state.ys = noise, real

            def critic_loss(c):
                fake = gen(noise).detach()
                return ((c(real) - 1) ** 2).mean() + (c(fake) ** 2).mean()

            state.critic_loss, (gc,) = ft.withgradient(critic_loss, critic)
            ft.update_(learner.opt_state.critic, critic, gc)
            handle(LossBegin())

            def generator_loss(g):
                return ((critic(g(noise)) - 1) ** 2).mean()

            loss, (gg,) = ft.withgradient(generator_loss, gen)
            state.loss = torch.tensor(loss)
            handle(BackwardEnd())
            ft.update_(learner.opt_state.generator, gen, gg)

        return ft.runstep(stepfn, learner, self)


def test_custom_gan_phase_trains_two_models_with_their_own_optimiser_state():
    # Real data ~ N(3, 0.1); the generator g(z) = a*z + b maps N(0, 1) noise, so the mean of
    # what it generates is its bias b.  Adversarial training oscillates around the solution;
    # OAdam (optimistic Adam, made for such games) damps it, and b averaged over the last 100
    # steps sits at the real mean.
    torch.manual_seed(0)
    generator = torch.nn.Linear(1, 1)
    critic = torch.nn.Linear(1, 1)
    g = torch.Generator().manual_seed(3)
    data = [
        (3 + 0.1 * torch.randn(32, 1, generator=g), torch.randn(32, 1, generator=g))
        for _ in range(20)
    ]
    biases = []
    track = ft.callbacks.CustomCallback(
        lambda lr: biases.append(lr.model.generator.bias.item()), ft.StepEnd, reads=("model",)
    )
    learner = ft.Learner(
        GAN(generator, critic),
        mae,
        ft.OAdam(0.1),
        callbacks=[ft.callbacks.Recorder(), track],
        data=data,
    )
    assert set(ft.tree.children(learner.opt_state)) == {"generator", "critic"}
    start = generator.bias.item()
    for _ in range(10):
        ft.epoch_(learner, GANPhase())
    assert abs(start - 3) > 2
    assert abs(sum(biases[-100:]) / 100 - 3) < 0.2
    assert learner.cbstate.history[GANPhase()].steps == 200
    # Each model was updated through its own part of the state.
    assert learner.opt_state.critic.weight.state[0].abs().sum() > 0
    assert learner.opt_state.generator.bias.state[0].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Construction


def test_learner_sets_up_the_rule_and_accepts_an_existing_state():
    model = torch.nn.Linear(2, 1)
    st = ft.setup(ft.Momentum(0.01), model)
    learner = ft.Learner(model, mae, st, callbacks=[])
    assert learner.opt_state is st and learner.optimizer == ft.Momentum(0.01)
    learner2 = ft.Learner(model, mae, callbacks=[])
    assert learner2.optimizer == ft.Adam() and learner2.opt_state.weight.rule == ft.Adam()


def test_default_callbacks_when_none_are_given():
    names = {type(cb).__name__ for cb in ft.Learner(torch.nn.Linear(1, 1), mae).callbacks}
    assert names == {"ProgressBar", "MetricsPrinter", "StopOnNaNLoss", "Recorder", "Metrics"}
    assert ft.Learner(torch.nn.Linear(1, 1), mae, usedefaultcallbacks=False).callbacks == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": (x for x in batches(2))}, TypeError, "iterator"),
        ({"data": (torch.zeros(4, 2), torch.zeros(4, 1))}, TypeError, "DataLoader"),
        ({"callbacks": [ft.callbacks.Metrics]}, TypeError, "pass an instance"),
        ({"callbacks": [print]}, TypeError, "CustomCallback"),
        ({"optimizer": ft.Adam}, TypeError, "Adam()"),
        ({"autocast": "bf16"}, TypeError, "torch dtype"),
    ],
)
def test_learner_construction_errors_are_readable(kwargs, error, match):
    with pytest.raises(error, match=match):
        ft.Learner(torch.nn.Linear(2, 1), mae, **kwargs)


def test_a_list_of_batches_is_training_data_and_a_pair_of_lists_is_train_and_valid():
    data = batches(2)
    assert ft.Learner(torch.nn.Linear(2, 1), mae, callbacks=[], data=data).data == (data, None)
    learner = ft.Learner(torch.nn.Linear(2, 1), mae, callbacks=[], data=(data, data[:1]))
    assert learner.data.training is data and len(learner.data.validation) == 1


def test_repr_names_model_rule_callbacks_and_data():
    learner = linear_learner([ft.callbacks.Recorder()], data=(batches(3), batches(1)))
    assert repr(learner) == (
        "Learner(model=Linear, lossfn=mae, optimizer=Descent(eta=0.1), "
        "callbacks=[Recorder()], data=(3 batches, 1 batches))"
    )


# ---------------------------------------------------------------------------------------------
# Saving and resuming


class ShuffledBatches:
    """A re-iterable of batches reshuffled with the global torch RNG, with a state_dict."""

    def __init__(self, n=4):
        self.x = torch.randn(8 * n, 2)
        self.y = self.x @ torch.tensor([[1.0], [-2.0]])
        self.n = n
        self.iterations = 0

    def __len__(self):
        return self.n

    def __iter__(self):
        self.iterations += 1
        perm = torch.randperm(len(self.x))
        for i in range(self.n):
            idx = perm[8 * i : 8 * (i + 1)]
            yield self.x[idx], self.y[idx]

    def state_dict(self):
        return {"iterations": self.iterations}

    def load_state_dict(self, d):
        self.iterations = d["iterations"]


class MemoryStore:
    """save_fn/load_fn pair keeping checkpoints in memory (the checkpoint format is another
    module's business)."""

    def __init__(self):
        self.files = {}

    def save(self, path, model, opt_state, learner):
        self.files[str(path)] = copy.deepcopy(
            {"model": model.state_dict(), "opt_state": opt_state, "learner": learner}
        )

    def load(self, path, model, opt_state):
        saved = self.files[str(path)]
        model.load_state_dict(saved["model"])
        for new, old in zip(ft.leaves(opt_state), ft.leaves(saved["opt_state"])):
            new.state = copy.deepcopy(old.state)
        return {"learner": saved["learner"]}


def resumable(store, folder, sched=True):
    torch.manual_seed(11)
    train, valid = ShuffledBatches(), ShuffledBatches(2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))
    cbs = [
        ft.callbacks.Recorder(),
        ft.callbacks.Metrics(),
        ft.callbacks.EarlyStopping(5),
        ft.callbacks.Checkpointer(folder, save_fn=store.save),
    ]
    if sched:
        cbs.append(ft.callbacks.Scheduler(eta=lambda t: 0.05 / t**0.5))
    return ft.Learner(model, F.mse_loss, ft.Momentum(0.05), callbacks=cbs, data=(train, valid))


def test_resume_from_a_checkpoint_continues_exactly_as_an_uninterrupted_run(tmp_path):
    store = MemoryStore()
    straight = resumable(store, tmp_path / "a")
    ft.fit_(straight, 4)

    interrupted = resumable(store, tmp_path / "b")

    def crash_at_third_epoch(learner):
        if learner.epoch == 2:
            raise KeyboardInterrupt

    interrupted.add_callback(
        ft.callbacks.CustomCallback(crash_at_third_epoch, ft.EpochBegin, reads=("epoch",))
    )
    with pytest.raises(KeyboardInterrupt):
        ft.fit_(interrupted, 4)

    resumed = resumable(store, tmp_path / "b")
    torch.manual_seed(999)  # the RNG state comes from the checkpoint
    with pytest.warns(UserWarning, match="callback 'CustomCallback', which this learner does not"):
        ft.fit_(resumed, 4, resume=tmp_path / "b" / "epoch_002.safetensors", load_fn=store.load)

    assert resumed.epoch == straight.epoch == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for phase in (ft.TrainingPhase, ft.ValidationPhase):
        assert resumed.cbstate.history[phase] == straight.cbstate.history[phase]
        assert (
            resumed.cbstate.metrics_epoch[phase]["Loss"]
            == straight.cbstate.metrics_epoch[phase]["Loss"]
        )
    assert (
        resumed.get_callback(ft.callbacks.Scheduler).t
        == straight.get_callback(ft.callbacks.Scheduler).t
        == 16
    )
    assert resumed.data.training.iterations == straight.data.training.iterations == 4


def test_resume_after_the_last_epoch_trains_nothing_more(tmp_path):
    store = MemoryStore()
    learner = resumable(store, tmp_path, sched=False)
    ft.fit_(learner, 2)
    again = resumable(store, tmp_path, sched=False)
    ft.fit_(again, 2, resume=tmp_path / "epoch_002.safetensors", load_fn=store.load)
    assert again.epoch == 2
    assert again.cbstate.history[ft.TrainingPhase].steps == 8
    for a, b in zip(learner.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_state_dict_is_plain_json_data_and_round_trips():
    data = batches(2)
    learner = ft.Learner(
        torch.nn.Linear(2, 1),
        mae,
        callbacks=[ft.callbacks.Recorder(), ft.callbacks.Metrics(), ft.callbacks.EarlyStopping(2)],
        data=(data, data),
    )
    ft.fit_(learner, 2)
    sd = learner.state_dict()
    text = json.dumps(sd)
    other = ft.Learner(
        torch.nn.Linear(2, 1),
        mae,
        callbacks=[ft.callbacks.Recorder(), ft.callbacks.Metrics(), ft.callbacks.EarlyStopping(2)],
    )
    other.load_state_dict(json.loads(text))
    assert other.epoch == 2
    assert other.cbstate.history[ft.TrainingPhase] == learner.cbstate.history[ft.TrainingPhase]
    assert (
        other.cbstate.metrics_step["TrainingPhase"]["SmoothLoss"]
        == learner.cbstate.metrics_step["TrainingPhase"]["SmoothLoss"]
    )
    assert (
        other.get_callback(ft.callbacks.EarlyStopping).best
        == learner.get_callback(ft.callbacks.EarlyStopping).best
    )
    # A restored per-phase dict still makes entries for new phases.
    assert other.cbstate.history["SomeNewPhase"].steps == 0


def test_load_state_dict_rejects_foreign_data():
    with pytest.raises(ValueError, match="not a saved learner state"):
        linear_learner().load_state_dict({"epoch": 1})


def test_resume_needs_a_checkpoint_with_learner_state():
    learner = linear_learner(data=batches(2))
    with pytest.raises(ValueError, match="no learner state"):
        ft.fit_(learner, 1, resume="x.ckpt", load_fn=lambda path, model, opt_state: {"epoch": 3})


def test_fit_with_a_shuffling_dataloader_saves_its_order_state():
    X, Y = torch.randn(40, 2), torch.randn(40, 1)
    train = ft.DataLoader((X, Y), batchsize=8, shuffle=True, rng=0)
    learner = ft.Learner(
        torch.nn.Linear(2, 1), F.mse_loss, callbacks=[ft.callbacks.Recorder()], data=train
    )
    ft.fit_(learner, 2)
    assert learner.cbstate.history[ft.TrainingPhase].samples == 80
    state = learner.state_dict()["data"]["training"]
    # A loader restored from the saved state shuffles the next epoch as the original does.
    other = ft.DataLoader((X, Y), batchsize=8, shuffle=True, rng=123)
    other.load_state_dict(state)
    for (xa, _), (xb, _) in zip(train, other):
        assert torch.equal(xa, xb)


def test_building_a_learner_does_not_start_iterating_its_data():
    X = torch.arange(32.0).reshape(32, 1)

    def loader():
        return ft.DataLoader((X, X), batchsize=8, shuffle=True, rng=1)

    train = loader()
    ft.Learner(torch.nn.Linear(1, 1), F.mse_loss, callbacks=[], data=(train, train))
    for (a, _), (b, _) in zip(train, loader()):
        assert torch.equal(a, b)


def test_a_bad_saved_state_changes_nothing():
    learner = ft.Learner(
        torch.nn.Linear(2, 1), mae, callbacks=[ft.callbacks.Recorder()], data=batches(2)
    )
    ft.fit_(learner, 1)
    good = learner.state_dict()
    bad = copy.deepcopy(good)
    bad["epoch"] = 7
    bad["cbstate"]["history"] = {"__type__": "NoSuchType", "state": {}}
    with pytest.raises(ValueError, match="unknown callback state type 'NoSuchType'"):
        learner.load_state_dict(bad)
    assert learner.epoch == 1
    assert learner.cbstate.history[ft.TrainingPhase].steps == 2


# ---------------------------------------------------------------------------------------------
# Issue 14, item 11: cancellations where there is nothing of their kind to cancel


class RaiseAt(ft.Callback):
    """Raises ``exc`` at every ``event`` (FitBegin/FitEnd included, unlike CustomCallback)."""

    def __init__(self, event, exc):
        self.handles = (event,)
        self.exc = exc

    def on(self, event, phase, learner):
        raise self.exc("test")


@pytest.mark.parametrize(
    "event, exc, where",
    [
        (ft.FitBegin, ft.CancelStepException, "between StepBegin and StepEnd"),
        (ft.EpochBegin, ft.CancelStepException, "between StepBegin and StepEnd"),
        (ft.EpochEnd, ft.CancelStepException, "between StepBegin and StepEnd"),
        (ft.FitEnd, ft.CancelStepException, "between StepBegin and StepEnd"),
        (ft.FitBegin, ft.CancelEpochException, "between EpochBegin and EpochEnd"),
        (ft.FitEnd, ft.CancelEpochException, "between EpochBegin and EpochEnd"),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_cancelling_what_is_not_running_is_an_error_saying_where_it_may_be_raised(
    event, exc, where
):
    data = batches(2)
    cb = RaiseAt(event, exc)
    learner = linear_learner([cb], data=(data, data))
    with pytest.raises(RuntimeError, match=where) as info:
        ft.fit_(learner, 2)
    msg = str(info.value)
    assert exc.__name__ in msg and event.__name__ in msg and "RaiseAt" in msg
    assert isinstance(info.value.__cause__, exc)
    assert learner.progress is None


def test_cancel_step_outside_any_step_is_an_error_outside_fit_too():
    learner = linear_learner([RaiseAt(ft.EpochEnd, ft.CancelStepException)])
    with pytest.raises(RuntimeError, match="outside any step"):
        ft.epoch_(learner, ft.TrainingPhase(), batches(2))

    def epochfn(handle):  # epoch code, not in a step
        raise ft.CancelStepException("test")

    with pytest.raises(RuntimeError, match="outside any step"):
        ft.runepoch(epochfn, linear_learner(), ft.TrainingPhase())


def test_cancel_epoch_at_epoch_end_skips_the_rest_of_epoch_end_and_fitting_goes_on():
    # FluxTraining.jl's runepoch catches a CancelEpochException from EpochEnd's handlers.
    log = EventLog()
    data = batches(2)
    learner = linear_learner([RaiseAt(ft.EpochEnd, ft.CancelEpochException), log], data=data)
    ft.fit_(learner, 3)
    assert learner.epoch == 3 and learner.stop_reason is None
    assert [e for e, _ in log.log].count("EpochEnd") == 0  # the later callback was skipped
    assert [e for e, _ in log.log].count("EpochBegin") == 3


# ---------------------------------------------------------------------------------------------
# Issue 14, item 12: a fit cancelled at EpochEnd counts that epoch, and its checkpoint is written


def diverging_learner(folder, *extra, patience=2, restore_best=False):
    """Trains on y = 3x and validates on y = -3x, so that the validation loss rises every
    epoch: EarlyStopping(patience) stops after epoch patience + 1."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(1, 11, (4, 1), generator=g).float() for _ in range(3)]
    train = [(x, 3 * x) for x in xs]
    valid = [(x, -3 * x) for x in xs[:2]]
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    cbs = [
        ft.callbacks.Recorder(),
        ft.callbacks.Metrics(),
        ft.callbacks.Checkpointer(folder),
        ft.callbacks.EarlyStopping(patience, **({"restore_best": True} if restore_best else {})),
        *extra,
    ]
    return ft.Learner(model, mae, ft.Descent(0.01), callbacks=cbs, data=(train, valid))


def test_early_stopping_with_checkpointer_epoch_count_names_and_resume_agree(tmp_path):
    learner = diverging_learner(tmp_path)
    ft.fit_(learner, 10)
    assert "has not improved for 2 epoch(s)" in learner.stop_reason.msg
    ran = learner.cbstate.history[ft.TrainingPhase].epochs
    assert ran == 3 and learner.epoch == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "epoch_003.safetensors" and len(names) == 3
    saved = ft.load(tmp_path / "epoch_003.safetensors", restore_rng=False)["learner"]
    assert saved["callbacks"]["EarlyStopping"]["wait"] == 2

    resumed = diverging_learner(tmp_path)
    ft.fit_(resumed, 10, resume=tmp_path / "epoch_003.safetensors")
    # Epoch 4 ran (not epoch 3 again), and did not improve either: stopped after it.
    assert resumed.cbstate.history[ft.TrainingPhase].epochs == 4
    assert resumed.epoch == 4
    assert sorted(p.name for p in tmp_path.iterdir())[-1] == "epoch_004.safetensors"


def test_fit_cancelled_at_a_training_epoch_end_skips_validation_and_counts_the_epoch(tmp_path):
    class StopAfterSecondTraining(ft.Callback):
        handles = (ft.EpochEnd,)
        reads = ("epoch",)
        runbefore = (ft.callbacks.Checkpointer,)

        def on(self, event, phase, learner):
            if isinstance(phase, ft.AbstractTrainingPhase) and learner.epoch == 1:
                raise ft.CancelFittingException("enough")

    log = EventLog()
    data = batches(2)
    cp = ft.callbacks.Checkpointer(tmp_path)
    learner = linear_learner([StopAfterSecondTraining(), cp, log], data=(data, data))
    ft.fit_(learner, 5)
    assert learner.epoch == 2 and learner.stop_reason.msg == "enough"
    assert [p.name for p in cp.saved] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    # The callbacks after the one that stopped still saw that EpochEnd.
    assert log.log[-2:] == [("EpochEnd", "TrainingPhase"), ("FitEnd", None)]
    resumed = linear_learner(
        [StopAfterSecondTraining(), ft.callbacks.Checkpointer(tmp_path)], data=(data, data)
    )
    with pytest.warns(UserWarning, match="callback 'EventLog', which this learner does not"):
        ft.fit_(resumed, 3, resume=cp.saved[-1])
    assert resumed.epoch == 3


def test_early_stopping_restore_best_puts_back_the_best_weights_at_the_end(tmp_path):
    weights = []
    spy = ft.callbacks.CustomCallback(
        lambda lr: weights.append(lr.model.weight.detach().clone()),
        ft.EpochEnd,
        ft.ValidationPhase,
        reads=("model",),
    )
    learner = diverging_learner(tmp_path, spy, restore_best=True)
    ft.fit_(learner, 10)
    assert len(weights) == 3 and not torch.equal(weights[0], weights[-1])
    assert torch.equal(learner.model.weight, weights[0])  # epoch 1 had the lowest loss
    # The best weights travel in the checkpoint, so a resumed run restores them too.
    resumed = diverging_learner(tmp_path, restore_best=True)
    with pytest.warns(UserWarning, match="callback 'CustomCallback', which this learner does"):
        ft.fit_(resumed, 10, resume=tmp_path / "epoch_003.safetensors")
    assert torch.equal(resumed.model.weight, weights[0])
    plain = diverging_learner(tmp_path / "plain")
    ft.fit_(plain, 10)
    assert torch.equal(plain.model.weight, weights[-1])  # without restore_best: the last


def test_resume_with_a_bad_learner_state_changes_nothing(tmp_path):
    data = batches(2)
    learner = linear_learner(
        [ft.callbacks.Recorder(), ft.callbacks.Checkpointer(tmp_path)], data=(data, data)
    )
    ft.fit_(learner, 2)
    path = tmp_path / "epoch_001.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    structure = json.loads(header["__metadata__"]["fluxtrain"])
    learner_state = dict(structure["extra"]["learner"]["__dict__"])
    rng = learner_state["rng"]["__dict__"]
    for item in rng:
        if item[0] == "torch":
            item[1] = "AAAA"  # 3 bytes: no generator takes that
    # Re-written with every checksum recomputed: the file itself is sound.
    ck._write_file(path, json.dumps(structure), load_file(path))

    fresh = linear_learner(
        [ft.callbacks.Recorder(), ft.callbacks.Checkpointer(tmp_path)], data=(data, data)
    )
    weight = fresh.model.weight.detach().clone()
    with pytest.raises(ValueError, match="malformed RNG states"):
        ft.fit_(fresh, 3, resume=path)
    assert torch.equal(fresh.model.weight, weight)
    assert fresh.epoch == 0 and fresh.cbstate.history[ft.TrainingPhase].epochs == 0
