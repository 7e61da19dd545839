"""Explicit gradients (Zygote's gradient / withgradient / pullback) on torch.autograd."""

import dataclasses
import math
from collections import namedtuple

import pytest
import torch
from torch import nn

import fluxtrain as ft

Point = namedtuple("Point", ["x", "y"])


@dataclasses.dataclass
class Affine:
    scale: torch.Tensor
    shift: torch.Tensor
    name: str = "affine"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 2)])
        self.unused = nn.Linear(2, 2)
        self.register_buffer("offset", torch.full((2,), 0.5))

    def forward(self, x):
        return self.layers[1](torch.tanh(self.layers[0](x))) + self.offset


def _autograd_reference(model: nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_gradient_of_tensor_argument():
    (g,) = ft.gradient(lambda x: (x**3).sum(), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(g, torch.tensor([3.0, 12.0]))


def test_gradient_of_several_arguments_at_once():
    a = torch.tensor([1.0, 2.0])
    b = torch.tensor([3.0, 5.0])
    ga, gb, gc, gs = ft.gradient(lambda a, b, c, s: (a * b).sum() * c + len(s), a, b, 2.0, "ab")
    torch.testing.assert_close(ga, 2 * b)
    torch.testing.assert_close(gb, 2 * a)
    assert gc is None and gs is None  # plain numbers and strings are not differentiated


def test_gradient_of_integer_tensor_is_none():
    ga, gi = ft.gradient(lambda a, i: (a * i).sum(), torch.ones(2), torch.tensor([1, 2]))
    torch.testing.assert_close(ga, torch.tensor([1.0, 2.0]))
    assert gi is None


def test_gradient_does_not_touch_the_arguments():
    x = torch.tensor([1.0, 2.0])
    model = {"w": x}
    ft.gradient(lambda m: (m["w"] ** 2).sum(), model)
    assert model["w"] is x and not x.requires_grad and x.grad is None


def test_gradient_of_nested_dict_tuple_mirrors_it_with_none_for_the_rest():
    model = {"a": torch.ones(2), "b": (torch.tensor([2.0, 3.0]), "s", math.sin), "c": torch.ones(1)}
    (g,) = ft.gradient(lambda m: (m["a"] * m["b"][0]).sum(), model)
    assert isinstance(g, ft.Node)
    torch.testing.assert_close(g["a"], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(g["b"][0], torch.ones(2))
    assert g["b"][1] is None and g["b"][2] is None
    assert g["c"] is None  # nothing depended on it


def test_gradient_of_namedtuple_and_dataclass_by_field():
    model = Point(x=Affine(torch.tensor([2.0]), torch.tensor([1.0])), y=torch.tensor([4.0]))
    (g,) = ft.gradient(lambda m: (m.x.scale * m.y + m.x.shift).sum(), model)
    torch.testing.assert_close(g.x.scale, torch.tensor([4.0]))
    torch.testing.assert_close(g.x.shift, torch.tensor([1.0]))
    torch.testing.assert_close(g.y, torch.tensor([2.0]))
    torch.testing.assert_close(g[1], torch.tensor([2.0]))
    assert g.x.name is None


def test_gradient_of_module_matches_autograd_and_skips_buffers():
    net = Net()
    x = torch.randn(5, 3)

    def loss(m):
        return (m(x) ** 2).mean()

    (g,) = ft.gradient(loss, net)
    ref = _autograd_reference(net, loss)
    torch.testing.assert_close(g.layers[0].weight, ref["layers.0.weight"])
    torch.testing.assert_close(g.layers[1].bias, ref["layers.1.bias"])
    torch.testing.assert_close(g["layers"]["0"]["bias"], ref["layers.0.bias"])
    assert g.offset is None  # buffers are not trainable
    assert g.unused is None  # nothing depended on it
    assert all(p.grad is None for p in net.parameters())  # .grad is left alone


def test_gradient_of_plain_sequential():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(4, 2)
    (g,) = ft.gradient(lambda m: m(x).sum(), seq)
    ref = _autograd_reference(seq, lambda m: m(x).sum())
    torch.testing.assert_close(g[0].weight, ref["0.weight"])
    torch.testing.assert_close(g[2].bias, ref["2.bias"])
    assert g[1] is None


def test_gradient_of_tied_weights_is_the_total_at_each_place():
    enc, dec = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    dec.weight = enc.weight
    model = nn.Sequential(enc, dec)
    x = torch.randn(2, 3)
    (g,) = ft.gradient(lambda m: m(x).pow(2).sum(), model)
    ref = _autograd_reference(model, lambda m: m(x).pow(2).sum())
    torch.testing.assert_close(g[0].weight, ref["0.weight"])
    assert g[1].weight is g[0].weight


def test_gradient_of_shared_plain_tensor_is_the_total_at_each_place():
    t = torch.tensor([1.0, 2.0])
    (g,) = ft.gradient(lambda m: (m["a"] * 3).sum() + (m["b"][0] ** 2).sum(), {"a": t, "b": [t]})
    torch.testing.assert_close(g["a"], torch.tensor([5.0, 7.0]))
    assert g["b"][0] is g["a"]


def test_gradient_with_model_and_data_arguments():
    lin = nn.Linear(2, 1)
    x, y = torch.randn(3, 2), torch.randn(3, 1)
    gm, gx, gy = ft.gradient(lambda m, x, y: ((m(x) - y) ** 2).sum(), lin, x, y)
    torch.testing.assert_close(gx, 2 * (lin(x) - y).detach() @ lin.weight.detach())
    torch.testing.assert_close(gy, -2 * (lin(x) - y).detach())
    assert gm.weight.shape == (1, 2)


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda x: x * 2, ValueError),  # not a scalar
        (lambda x: x.sum(dim=0, keepdim=True), ValueError),  # shape (1,) is not 0-d
        (lambda x: "loss", TypeError),
        (lambda x: None, TypeError),
        (lambda x: torch.tensor(3), TypeError),  # integer tensor
        (lambda x: x.sum() * 1j, TypeError),  # complex
        (lambda x: True, TypeError),
    ],
)
def test_non_scalar_or_non_real_return_is_a_clear_error(bad, error):
    with pytest.raises(error, match="scalar"):
        ft.gradient(bad, torch.ones(2))


def test_float_return_that_ignores_the_argument_gives_none():
    assert ft.gradient(lambda x: 3.0, torch.ones(2)) == (None,)


def test_withgradient_returns_value_and_gradients():
    val, (g,) = ft.withgradient(lambda x: (x**2).sum(), torch.tensor([3.0, 4.0]))
    assert val == 25.0
    torch.testing.assert_close(g, torch.tensor([6.0, 8.0]))


def test_withgradient_with_tuple_returning_function_differentiates_the_first():
    x = torch.tensor([1.0, 2.0])
    val, (g,) = ft.withgradient(lambda x: ((x**2).sum(), x * 10, "aux"), x)
    assert val[0] == 5.0
    torch.testing.assert_close(val[1].detach(), torch.tensor([10.0, 20.0]))
    assert val[2] == "aux"
    torch.testing.assert_close(g, torch.tensor([2.0, 4.0]))


def test_withgradient_tuple_whose_first_element_is_not_scalar_is_an_error():
    with pytest.raises(ValueError, match="scalar"):
        ft.withgradient(lambda x: (x * 2, 1.0), torch.ones(2))


def test_pullback_back_one_equals_gradient_and_scales():
    model = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}

    def f(m):
        return (m["w"] ** 2).sum() + 3 * m["b"].sum()

    val, back = ft.pullback(f, model)
    assert val == pytest.approx(5 + 1.5)
    (g1,) = back(1.0)
    (g_ref,) = ft.gradient(f, model)
    assert g1 == g_ref
    (g2,) = back(2.0)  # callable again, scaled by the seed
    torch.testing.assert_close(g2["w"], 2 * g_ref["w"])
    torch.testing.assert_close(g2["b"], 2 * g_ref["b"])


def test_pullback_rejects_non_finite_seed():
    _, back = ft.pullback(lambda x: x.sum(), torch.ones(1))
    with pytest.raises(ValueError, match="finite"):
        back(float("nan"))


def test_gradient_enables_grad_inside_no_grad():
    with torch.no_grad():
        (g,) = ft.gradient(lambda x: (x * x).sum(), torch.tensor([3.0]))
    torch.testing.assert_close(g, torch.tensor([6.0]))


def test_gradient_of_a_gradient_is_8x_as_in_zygote():
    x = torch.tensor([1.0, -2.0, 3.0])
    (g,) = ft.gradient(lambda x: (ft.gradient(lambda y: (y**2).sum(), x)[0] ** 2).sum(), x)
    assert torch.equal(g, 8 * x)


def test_nested_gradients_go_three_deep_and_through_withgradient_and_pullback():
    x = torch.tensor([0.5, 2.0], dtype=torch.float64)

    def d(f):  # derivative of a scalar-sum function, as a function
        return lambda z: ft.gradient(lambda y: f(y).sum(), z)[0]

    # d3/dx3 of x^4 = 24x
    assert torch.allclose(d(d(d(lambda y: y**4)))(x), 24 * x)

    def via_withgradient(z):
        _, (g,) = ft.withgradient(lambda y: (y**3).sum(), z)
        return (g * z).sum()  # 3 z^3 -> 9 z^2

    assert torch.allclose(ft.gradient(via_withgradient, x)[0], 9 * x**2)

    def via_pullback(z):
        _, back = ft.pullback(lambda y: (y**3).sum(), z)
        return back(2.0)[0].sum()  # 6 z^2 -> 12 z

    assert torch.allclose(ft.gradient(via_pullback, x)[0], 12 * x)


def test_inner_gradient_of_a_tensor_computed_from_the_outer_argument_is_not_detached():
    x = torch.tensor([1.0, 3.0])
    # inner: d/dz sum(z^2) = 2z with z = 3x, so the outer function is sum(2 * 3x) and its
    # gradient is 6 everywhere
    (g,) = ft.gradient(lambda x: ft.gradient(lambda z: (z**2).sum(), 3 * x)[0].sum(), x)
    assert torch.equal(g, torch.full((2,), 6.0))


def test_gradient_penalty_on_the_input_reaches_the_model_parameters():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)

    def penalty(m):
        (gx,) = ft.gradient(lambda x: m(x).sum(), x)  # each row is m.weight
        return (gx**2).sum()  # 4 * |w|^2

    (g,) = ft.gradient(penalty, model)
    assert torch.allclose(g.weight, 8 * model.weight.detach())
    assert g.bias is None


def test_a_top_level_gradient_keeps_no_graph():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = ft.gradient(lambda y: (y**2).sum(), x)
    assert g.grad_fn is None and not g.requires_grad
    with torch.no_grad():
        inner_only = ft.gradient(lambda x: (x**3).sum(), torch.tensor([1.0]))
    assert not inner_only[0].requires_grad


def test_a_nested_gradient_through_ddp_is_an_error_not_a_silent_none(monkeypatch):
    import sys

    gradient_module = sys.modules["fluxtrain.gradient"]  # ft.gradient is the function

    class FakeDDP(nn.Module):  # stands in for DistributedDataParallel (needs a process group)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    monkeypatch.setattr(gradient_module, "_DDP", FakeDDP)
    ddp = FakeDDP(nn.Linear(2, 1))
    x = torch.ones(1, 2)

    def outer(x):
        (g,) = ft.gradient(lambda m: m(x).sum(), ddp)
        return (g.weight * x).sum()

    with pytest.raises(NotImplementedError, match=r"inside another gradient.*ddp.module"):
        ft.gradient(outer, x)
