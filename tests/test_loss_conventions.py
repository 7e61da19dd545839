"""train_'s loss(model, x, y) and the Learner's lossfn(ŷ, y): errors that say which is expected."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fluxtrain as ft


def batches(sizes=(4, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 2, generator=g)
        out.append((x, x.sum(dim=1, keepdim=True)))
    return out


def linear():
    torch.manual_seed(0)
    return nn.Linear(2, 1)


def tree_model():
    return {"w": torch.zeros(2, 1), "b": torch.zeros(1)}


def tree_forward(m, x):
    return x @ m["w"] + m["b"]


# ---------------------------------------------------------------------------------------------
# train_ given a loss of (ŷ, y)


@pytest.mark.parametrize(
    ("loss", "shown"),
    [
        (ft.losses.mse, "ft.losses.mse"),
        (nn.CrossEntropyLoss(), "nn.CrossEntropyLoss()"),
        (F.mse_loss, "torch.nn.functional.mse_loss"),
    ],
)
def test_train_refuses_a_library_loss_of_predictions_naming_both_conventions(loss, shown):
    model = linear()
    before = model.weight.detach().clone()
    with pytest.raises(TypeError) as info:
        ft.train_(loss, model, batches(), ft.setup(ft.Descent(0.1), model))
    msg = str(info.value)
    assert "train_ calls loss(model, x, y)" in msg
    assert shown in msg and "(ŷ, y)" in msg and "ft.Learner" in msg
    assert "lambda model, x, y:" in msg  # the way to wrap it
    assert torch.equal(model.weight, before)


@pytest.mark.parametrize("model_kind", ["module", "tree"])
def test_train_with_a_two_argument_loss_says_which_signature_it_needs(model_kind):
    model = linear() if model_kind == "module" else tree_model()

    def my_loss(yhat, y):
        return ((yhat - y) ** 2).mean()

    with pytest.raises(TypeError) as info:
        ft.train_(my_loss, model, batches(), ft.setup(ft.Descent(0.1), model))
    msg = str(info.value)
    assert "train_ calls loss(model, x, y)" in msg
    assert "my_loss (its signature is (yhat, y))" in msg
    assert "cannot be called with the 3 arguments" in msg and "ft.Learner" in msg
    assert isinstance(info.value.__cause__, TypeError)  # the original error stays attached


def test_a_type_error_raised_inside_a_well_formed_loss_is_left_as_it_is():
    def loss(m, x, y):
        return m(x).sum() + None

    model = linear()
    with pytest.raises(TypeError, match="unsupported operand") as info:
        ft.train_(loss, model, batches(), ft.setup(ft.Descent(0.1), model))
    assert "train_ calls" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The Learner given train_'s loss(model, x, y)


def test_learner_with_a_loss_of_model_x_y_says_which_signature_it_needs():
    def loss(model, x, y):
        return ft.losses.mse(model(x), y)

    data = batches()
    learner = ft.Learner(linear(), loss, data=(data, data), usedefaultcallbacks=False)
    with pytest.raises(TypeError) as info:
        ft.fit_(learner, 1)
    msg = str(info.value)
    assert "the Learner calls lossfn(ŷ, y)" in msg
    assert "loss (its signature is (model, x, y))" in msg and "ft.train_" in msg
    assert "(in batch 1 (index 0) of TrainingPhase, in epoch 1 of fit_)" in info.value.__notes__


def test_learner_accepts_torch_loss_modules_and_two_argument_functions():
    data = batches()
    for lossfn in (nn.MSELoss(), F.mse_loss, lambda yp, y: ((yp - y) ** 2).mean()):
        learner = ft.Learner(linear(), lossfn, data=(data, data), usedefaultcallbacks=False)
        assert ft.fit_(learner, 1).epoch == 1


# ---------------------------------------------------------------------------------------------
# A loss that is not a scalar


@pytest.mark.parametrize("model_kind", ["module", "tree"])
def test_train_names_the_item_whose_loss_is_not_a_scalar(model_kind):
    model = linear() if model_kind == "module" else tree_model()
    forward = (lambda m, x: m(x)) if model_kind == "module" else tree_forward

    def loss(m, x, y):  # squeeze() makes a scalar of a batch of one only
        return ((forward(m, x) - y) ** 2).squeeze()

    with pytest.raises(ValueError) as info:
        ft.train_(loss, model, batches((1, 1, 4)), ft.setup(ft.Descent(0.1), model))
    msg = str(info.value)
    assert "the loss at data item 3 (index 2) is a tensor of shape (4,), not a scalar" in msg
    assert ".mean()" in msg and "reduction='none'" in msg


@pytest.mark.parametrize("phase", [ft.TrainingPhase(), ft.ValidationPhase()])
def test_learner_names_the_batch_whose_loss_is_not_a_scalar(phase):
    def per_sample(yp, y):
        return F.mse_loss(yp, y, reduction="none").squeeze(1).sum() if len(y) == 1 else (yp - y)

    learner = ft.Learner(linear(), per_sample, ft.Descent(0.1), usedefaultcallbacks=False)
    with pytest.raises(ValueError) as info:
        ft.epoch_(learner, phase, batches((1, 1, 4)))
    assert "lossfn(ŷ, y) returned is a tensor of shape (4, 1), not a scalar" in str(info.value)
    name = type(phase).__name__
    assert info.value.__notes__[-1] == f"(in batch 3 (index 2) of a {name} epoch)"


# ---------------------------------------------------------------------------------------------
# A loss that does not depend on the model (issue 15, item 12, in train_)


@pytest.mark.parametrize("model_kind", ["module", "tree"])
def test_train_warns_once_when_the_loss_does_not_depend_on_the_model(model_kind):
    model = linear() if model_kind == "module" else tree_model()
    st = ft.setup(ft.Descent(0.1), model)
    snapshot = [t.detach().clone() for t in ft.trainables(model)]

    def loss(m, x, y):  # forgot to call the model
        return ((x.sum(dim=1, keepdim=True) - y) ** 2).mean() + 1.0

    with pytest.warns(UserWarning, match=r"data item 1 \(index 0\) does not depend") as rec:
        losses = ft.train_(loss, model, batches(), st)
    assert len([w for w in rec if "does not depend" in str(w.message)]) == 1
    assert losses == pytest.approx([1.0, 1.0, 1.0])
    assert all(torch.equal(a, b) for a, b in zip(snapshot, ft.trainables(model)))


def test_train_warns_when_the_loss_needs_a_gradient_but_through_no_parameter():
    model = linear()
    other = torch.ones(1, requires_grad=True)  # not part of the model

    def loss(m, x, y):
        return (other * x).sum()

    with pytest.warns(UserWarning, match="does not depend on any trainable parameter"):
        ft.train_(loss, model, batches(), ft.setup(ft.Descent(0.1), model))


def test_train_does_not_warn_for_a_loss_that_trains_the_model():
    model = linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.train_(
            lambda m, x, y: ft.losses.mse(m(x), y), model, batches(), ft.setup(ft.Adam(), model)
        )
