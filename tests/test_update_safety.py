"""update_ refuses what would be silently wrong, names where, and changes nothing when it fails."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import fluxtrain as ft
from fluxtrain.optimisers import engine


def _snapshot(model, state):
    return copy.deepcopy(
        (
            [p.detach().clone() for p in ft.trainables(model)],
            [leaf.state for leaf in ft.leaves(state)],
        )
    )


def _assert_unchanged(model, state, before):
    params, states = before
    for p, q in zip(ft.trainables(model), params):
        assert torch.equal(p, q)
    for leaf, old in zip(ft.leaves(state), states):
        for a, b in zip(engine.atoms(leaf.state), engine.atoms(old)):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_clipnorm_after_momentum_overflowing_changes_nothing_and_names_the_path():
    model = {"enc": {"w": torch.zeros(2, 2)}, "dec": {"w": torch.zeros(2, 2), "b": torch.zeros(2)}}
    rule = ft.OptimiserChain(ft.Momentum(), ft.ClipNorm(1.0, throw=True))
    state = ft.setup(rule, model)
    ft.update_(state, model, ft.fmap(torch.ones_like, model))
    ft.adjust_(state["enc"], eta=1.0)  # two groups: a failure in one must undo the other
    before = _snapshot(model, state)
    grads = ft.fmap(torch.ones_like, model)
    grads["dec"]["w"] = torch.full((2, 2), 3e38)  # finite; Momentum's output norm overflows
    with pytest.raises(ArithmeticError, match=r"dec\.w"):
        ft.update_(state, model, grads)
    _assert_unchanged(model, state, before)


def test_head_clipnorm_with_finite_gradients_whose_norm_overflows_changes_nothing():
    model = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Momentum()), model)
    before = _snapshot(model, state)
    grads = {"a": torch.ones(3), "b": torch.full((2,), 3e38)}  # finite, norm is inf in float32
    with pytest.raises(ArithmeticError, match=r"\bb\b"):
        ft.update_(state, model, grads)
    _assert_unchanged(model, state, before)


def test_sparse_gradients_are_refused_up_front_naming_the_path():
    model = nn.ModuleDict({"emb": nn.Embedding(5, 3, sparse=True), "lin": nn.Linear(3, 1)})
    state = ft.setup(ft.Adam(0.1), model)
    model["lin"](model["emb"](torch.tensor([1, 2]))).sum().backward()
    before = _snapshot(model, state)
    with pytest.raises(TypeError, match=r"emb\.weight.*sparse"):
        ft.update_(state, model)
    _assert_unchanged(model, state, before)


@pytest.mark.parametrize(
    "grad", [torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.int64), torch.ones(2) * 1j]
)
def test_gradients_of_the_wrong_kind_are_refused_naming_the_path(grad):
    model = {"w": torch.zeros(2), "v": torch.zeros(2)}
    state = ft.setup(ft.Descent(0.1), model)
    with pytest.raises(TypeError, match=r"\bw\b"):
        ft.update_(state, model, {"w": grad, "v": torch.ones(2)})
    assert torch.equal(model["v"], torch.zeros(2))


def test_a_parameter_resized_after_setup_gets_an_error_naming_it():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    state = ft.setup(ft.Adam(), model)
    model[1].weight = nn.Parameter(torch.zeros(4, 3))
    model[1].bias = nn.Parameter(torch.zeros(4))
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match=r"1\.weight.*shape \(4, 3\).*\(2, 3\)"):
        ft.update_(state, model)
    assert torch.equal(model[1].weight, torch.zeros(4, 3))


def test_a_parameter_moved_to_another_dtype_keeps_its_momentum():
    model = nn.Linear(2, 1)
    state = ft.setup(ft.Momentum(0.1), model)
    ft.update_(state, model, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    model.double()
    ft.update_(state, model, {"weight": torch.ones(1, 2, dtype=torch.float64),
                              "bias": torch.ones(1, dtype=torch.float64)})  # fmt: skip
    assert state.weight.state.dtype == torch.float64
    assert torch.allclose(state.weight.state, torch.full((1, 2), 0.19, dtype=torch.float64))


def test_update_without_any_grad_warns_that_backward_was_forgotten():
    model = nn.Linear(2, 1)
    state = ft.setup(ft.Adam(), model)
    with pytest.warns(UserWarning, match="backward"):
        ft.update_(state, model)


def test_update_after_backward_does_not_warn():
    model = nn.Linear(2, 1)
    state = ft.setup(ft.Adam(), model)
    model(torch.ones(1, 2)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.update_(state, model)


@pytest.mark.parametrize("verb", [ft.freeze_, ft.thaw_])
def test_freeze_and_thaw_on_the_model_instead_of_the_state_raise(verb):
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"state from ft\.setup"):
        verb(model)
    with pytest.raises(TypeError, match=r"state from ft\.setup"):
        verb({"w": torch.zeros(2)})
