"""Edge cases of the flat-buffer engine that a user can run into (found by property testing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fluxtrain as ft


@pytest.mark.parametrize("bad", ["oops", 3.0])
def test_non_container_gradient_where_model_has_subtree_raises_naming_path(bad):
    model = {"layer": {"w": torch.ones(2)}, "n": 3}
    st = ft.setup(ft.Descent(1.0), model)
    with pytest.raises(ft.GradientMismatchError, match="layer"):
        ft.update_(st, model, {"layer": bad})


def test_parameter_replaced_in_dict_after_first_update_is_trained():
    m = {"a": torch.ones(2), "b": torch.ones(2)}
    st = ft.setup(ft.Descent(0.5), m)
    ft.update_(st, m, {"a": torch.ones(2), "b": torch.ones(2)})
    m["a"] = torch.full((2,), 10.0)
    ft.update_(st, m, {"a": torch.ones(2), "b": torch.ones(2)})
    assert torch.equal(m["a"], torch.full((2,), 9.5))
    assert torch.equal(m["b"], torch.zeros(2))


def test_parameter_replaced_in_module_after_first_update_is_trained():
    lin = nn.Linear(2, 1)
    st = ft.setup(ft.Descent(0.5), lin)
    ft.update_(st, lin, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    lin.weight = nn.Parameter(torch.zeros(1, 2))
    ft.update_(st, lin, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    assert torch.equal(lin.weight.detach(), torch.full((1, 2), -0.5))


def test_explicit_gradients_that_are_the_parameters_own_grad_views():
    m = nn.Linear(2, 1)
    st = ft.setup(ft.Descent(0.1), m)
    m(torch.ones(1, 2)).sum().backward()
    ft.update_(st, m)
    m.zero_grad(set_to_none=False)
    m(torch.ones(1, 2)).sum().backward()
    w0 = m.weight.detach().clone()
    ft.update_(st, m, {"weight": m.weight.grad, "bias": m.bias.grad})
    torch.testing.assert_close(m.weight.detach(), w0 - 0.1)


def test_explicit_update_does_not_overwrite_dot_grad():
    m = nn.Linear(2, 1)
    st = ft.setup(ft.Descent(0.1), m)
    m(torch.ones(1, 2)).sum().backward()
    ft.update_(st, m)
    before = m.weight.grad.clone()
    ft.update_(st, m, {"weight": torch.full((1, 2), 7.0), "bias": torch.zeros(1)})
    assert torch.equal(m.weight.grad, before)


def test_global_clipnorm_with_dot_grad_clips_when_some_parameter_has_no_grad():
    rule = ft.OptimiserChain(ft.ClipNorm(1.0, scope="global"), ft.Descent(1.0))
    m = {"a": torch.zeros(2, requires_grad=True), "b": torch.zeros(2, requires_grad=True)}
    st = ft.setup(rule, m)
    m["a"].grad = torch.tensor([3.0, 4.0])
    ft.update_(st, m)
    torch.testing.assert_close(m["a"].detach(), torch.tensor([-0.6, -0.8]))
    assert torch.equal(m["b"].detach(), torch.zeros(2))


def test_parameters_that_are_views_of_a_base_tensor_update_the_base():
    base = torch.zeros(4)
    m = {"a": base[:2], "b": base[2:]}
    st = ft.setup(ft.Descent(1.0), m)
    for _ in range(2):
        ft.update_(st, m, {"a": torch.ones(2), "b": torch.ones(2)})
    assert torch.equal(base, torch.full((4,), -2.0))


def test_moving_the_model_to_float64_after_setup_moves_the_state_too():
    m = nn.Linear(2, 1)
    st = ft.setup(ft.Adam(0.1), m)
    ft.update_(st, m, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    m.double()
    ft.update_(st, m, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    assert m.weight.dtype == torch.float64
    assert st.weight.state[0].dtype == torch.float64
    assert st.weight.state[0].abs().sum() > 0  # the momentum survived the move


def test_replaced_parameter_is_trained_when_gradients_come_from_dot_grad():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    st = ft.setup(ft.Descent(0.5), model)
    model(torch.ones(1, 2)).sum().backward()
    ft.update_(st, model)
    model[1] = nn.Linear(2, 1)  # a whole new submodule...
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    model.zero_grad()
    model(torch.ones(1, 2)).sum().backward()
    grad = model[1].weight.grad.clone()
    ft.update_(st, model)  # ...is what gets trained
    torch.testing.assert_close(model[1].weight.detach(), 1.0 - 0.5 * grad)


def test_replaced_parameter_in_a_dict_is_trained_when_gradients_come_from_dot_grad():
    m = {"a": torch.ones(2, requires_grad=True)}
    st = ft.setup(ft.Descent(0.5), m)
    m["a"].grad = torch.ones(2)
    ft.update_(st, m)
    m["a"] = torch.full((2,), 10.0, requires_grad=True)
    m["a"].grad = torch.ones(2)
    ft.update_(st, m)
    assert torch.equal(m["a"].detach(), torch.full((2,), 9.5))


def test_the_cached_plan_goes_with_the_state():
    import gc
    import weakref

    x = torch.ones(3)
    st = ft.setup(ft.Adam(0.1), x)  # a bare Leaf as the whole state
    ft.update_(st, x, torch.ones(3))
    ref = weakref.ref(st)
    del st
    gc.collect()
    assert ref() is None  # nothing global keeps the state (or its buffers) alive
