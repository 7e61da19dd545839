"""Metrics limited to a phase, default callbacks kept, printers, and callbacks on a terminal."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fluxtrain as ft
from fluxtrain.callbacks import Metric, Metrics


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
        torch.nn.Linear(2, 1), F.mse_loss, ft.Descent(0.01), callbacks=list(callbacks),
        data=(data, data), **kwargs,
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
    import pytest

    with pytest.raises(TypeError, match=r"phase=ValidationPhase\(\).*class"):
        Metric(F.l1_loss, phase=ft.ValidationPhase())
    with pytest.raises(TypeError, match="subclass of ft.Phase"):
        Metric(F.l1_loss, phase=int)
