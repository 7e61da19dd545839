"""lr_find: the learning-rate range test on copies of model and optimiser state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft


def regression_data(n=8, bs=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 4, generator=g)
        out.append((x, x.sum(1, keepdim=True)))
    return out


def regression_learner(rule=None, callbacks=()):
    torch.manual_seed(0)
    return ft.Learner(
        torch.nn.Linear(4, 1),
        F.mse_loss,
        rule or ft.Descent(),
        callbacks=list(callbacks),
        data=(regression_data(), regression_data(2, seed=1)),
    )


def test_lr_find_leaves_model_state_callbacks_and_history_unchanged():
    learner = regression_learner(ft.Adam(0.003), [ft.callbacks.Recorder(), ft.callbacks.Metrics()])
    ft.fit_(learner, 1)
    params = [p.clone() for p in learner.model.parameters()]
    moments = [leaf.state[0].clone() for leaf in ft.leaves(learner.opt_state)]
    step, history = learner.step, learner.cbstate.history[ft.TrainingPhase]
    steps_before = history.steps
    result = ft.lr_find(learner, 1e-5, 1.0, nsteps=20)
    assert len(result.lrs) >= 2
    for p, q in zip(params, learner.model.parameters()):
        assert torch.equal(p, q)
    for m, leaf in zip(moments, ft.leaves(learner.opt_state)):
        assert torch.equal(m, leaf.state[0])
        assert leaf.rule == ft.Adam(0.003)
    assert learner.step is step and history.steps == steps_before
    # The learner still trains normally afterwards.
    ft.fit_(learner, 1)
    assert history.steps == steps_before + 8


def test_lr_find_sweeps_exponentially_and_smooths_with_the_debiased_moving_average():
    # A loss that does not depend on the rate never diverges, so the sweep runs to the end.
    learner = ft.Learner(
        torch.nn.Linear(4, 1),
        lambda yp, y: (yp * 0).sum() + (y**2).mean(),
        ft.Descent(),
        callbacks=[],
        data=regression_data(3),
    )
    result = ft.lr_find(learner, 1e-6, 1e-1, nsteps=25, beta=0.9)
    expected_lrs = [1e-6 * (1e5) ** (i / 24) for i in range(25)]
    assert result.lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1e-1)
    # Losses cycle through the 3 batches; check the smoothing independently.
    avg, smoothed = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.9 * avg + 0.1 * loss
        smoothed.append(avg / (1 - 0.9 ** (i + 1)))
    assert result.smoothed == pytest.approx(smoothed)
    batch_losses = [(y**2).mean().item() for _, y in regression_data(3)]
    assert result.losses[:6] == pytest.approx(batch_losses * 2)


def test_lr_find_uses_the_scheduled_rate_on_the_copy():
    # loss = sum(w) has gradient 1 for w: each step moves the copy's weight by exactly lr.
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    seen = []

    def loss(yp, y):
        seen.append(next(learner.model.parameters()).item())
        return yp.sum()

    one = torch.ones(1, 1)
    learner = ft.Learner(model, loss, ft.Descent(), callbacks=[], data=[(one, one)])
    result = ft.lr_find(learner, 0.01, 1.0, nsteps=3, diverge=1e9)
    assert seen == pytest.approx([0.0, -0.01, -0.11])
    assert result.lrs == pytest.approx([0.01, 0.1, 1.0])
    assert model.weight.item() == 0.0


def test_lr_find_stops_when_the_loss_diverges_and_suggests_a_stable_rate():
    learner = regression_learner()
    result = ft.lr_find(learner, 1e-5, 100.0, nsteps=100)
    assert len(result.lrs) < 100
    last, best = result.smoothed[-1], min(result.smoothed[:-1])
    assert not np.isfinite(last) or last > 4 * best
    # mse on standard normal inputs has Hessian ~2I: plain descent diverges above lr ~1.
    assert 1e-3 < result.suggestion < 1.0


def test_lr_find_suggestion_is_where_the_smoothed_loss_falls_fastest():
    learner = regression_learner()
    result = ft.lr_find(learner, 1e-4, 100.0, nsteps=60)
    n = len(result.lrs) - (1 if len(result.lrs) < 60 else 0)
    lrs, sm = np.array(result.lrs[n // 10 : n]), np.array(result.smoothed[n // 10 : n])
    slope = np.gradient(sm, np.log(lrs))
    assert result.suggestion == lrs[np.argmin(slope)]


def test_lr_find_plots_to_png(tmp_path):
    learner = regression_learner()
    result = ft.lr_find(learner, 1e-4, 1.0, nsteps=10, plot=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert repr(result).startswith("LRFinderResult(10 steps, suggestion=")


def test_lr_find_runs_a_custom_training_phase():
    calls = []

    class Counting(ft.TrainingPhase):
        def step(self, learner, batch):
            calls.append(1)
            return super().step(learner, batch)

    ft.lr_find(regression_learner(), 1e-4, 1e-2, nsteps=5, phase=Counting())
    assert len(calls) == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 1.0, "stop": 0.1}, "0 < start < stop"),
        ({"nsteps": 1}, "nsteps"),
        ({"beta": 1.0}, "beta"),
    ],
)
def test_lr_find_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ft.lr_find(regression_learner(), **kwargs)


def test_lr_find_needs_training_data():
    learner = ft.Learner(torch.nn.Linear(1, 1), F.mse_loss, callbacks=[])
    with pytest.raises(ValueError, match="needs training data"):
        ft.lr_find(learner)


def test_training_after_lr_find_is_the_same_as_without_it():
    def run(sweep):
        torch.manual_seed(2)
        X = torch.randn(64, 4)
        train = ft.DataLoader((X, X.sum(1, keepdim=True)), batchsize=16, shuffle=True, rng=4)
        model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
        )
        learner = ft.Learner(model, F.mse_loss, ft.Adam(0.01), callbacks=[], data=train)
        if sweep:
            ft.lr_find(learner, 1e-4, 1.0, nsteps=6)
        ft.fit_(learner, 2)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)
