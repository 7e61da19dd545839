"""The four worked examples of seed 003 (Flux's training API reference), with its printed numbers.

Each example is reproduced with the Python names of API.md; the expected values are the seed's
printed output, checked here to the digits it prints (or exactly where it prints all of them).
"""

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import fluxtrain as ft


def _dense_2_1_leakyrelu() -> nn.Module:
    # Flux's Dense(2 => 1, leakyrelu; init=ones): weight ones (out, in) = (1, 2), bias zero,
    # leakyrelu with Flux's default slope 0.01; Julia's literals are Float64.
    linear = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.zero_()
    return nn.Sequential(linear, nn.LeakyReLU(0.01))


def test_momentum_train_example_reproduces_printed_state():
    model = _dense_2_1_leakyrelu()
    opt_state = ft.setup(ft.Momentum(0.1), model)
    assert torch.equal(opt_state[0].weight.state, torch.zeros(1, 2, dtype=torch.float64))
    assert torch.equal(opt_state[0].bias.state, torch.zeros(1, dtype=torch.float64))
    assert opt_state[0].weight.rule == ft.Momentum(0.1, 0.9)

    x1 = torch.tensor([0.2, -0.3], dtype=torch.float64)
    y1 = torch.tensor([0.4], dtype=torch.float64)

    def loss(m, x, y):
        return (m(x) - y).abs().sum() * 100

    # Flux.train!(loss, model, [(x1, y1), (x1, y1)], opt_state), written out as its loop.
    for x, y in [(x1, y1), (x1, y1)]:
        grads = ft.gradient(loss, model, x, y)[0]
        ft.update_(opt_state, model, grads)

    # Seed: weight = Leaf(Momentum(0.1, 0.9), [-2.018 3.027]), bias = Leaf(..., [-10.09])
    torch.testing.assert_close(
        opt_state[0].weight.state,
        torch.tensor([[-2.018, 3.027]], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(
        opt_state[0].bias.state, torch.tensor([-10.09], dtype=torch.float64), rtol=0, atol=1e-12
    )
    # The bias was zero and is mutated in place: 0 - (-0.1) - (-10.09).
    torch.testing.assert_close(
        model[0].bias.detach(), torch.tensor([10.19], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_momentum_train_example_with_fluxtrain_dense_and_train_():
    # The same example in the seed's own words: Dense(2 => 1, leakyrelu; init=ones), train!.
    model = ft.Dense(2, 1, ft.leakyrelu, init=lambda *size: torch.ones(*size, dtype=torch.float64))
    assert torch.equal(model.bias.detach(), torch.zeros(1, dtype=torch.float64))
    opt_state = ft.setup(ft.Momentum(0.1), model)
    x1 = torch.tensor([0.2, -0.3], dtype=torch.float64)
    y1 = torch.tensor([0.4], dtype=torch.float64)
    losses = ft.train_(
        lambda m, x, y: (m(x) - y).abs().sum() * 100, model, [(x1, y1), (x1, y1)], opt_state,
        progress=False,
    )  # fmt: skip
    assert len(losses) == 2
    torch.testing.assert_close(
        opt_state.weight.state,
        torch.tensor([[-2.018, 3.027]], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(
        opt_state.bias.state, torch.tensor([-10.09], dtype=torch.float64), rtol=0, atol=1e-12
    )


def _nesterov_example():
    m = {"vec": torch.rand(2, dtype=torch.float32), "fun": math.sin}
    st = ft.setup(ft.Nesterov(), m)
    return m, st


def test_nesterov_adjust_example_keeps_momentum_and_changes_eta():
    m, st = _nesterov_example()
    vec0 = m["vec"].clone()
    assert st["vec"].rule == ft.Nesterov(0.001, 0.9)
    assert torch.equal(st["vec"].state, torch.zeros(2))
    assert st["fun"] is None

    st, m = ft.update(st, m, {"vec": torch.tensor([16.0, 88.0]), "fun": None})
    expected_momentum = torch.tensor([-0.016, -0.088], dtype=torch.float32)
    torch.testing.assert_close(st["vec"].state, expected_momentum, rtol=1e-6, atol=0)
    # Nesterov's step from zero velocity is (1 + rho) * eta * dx.
    torch.testing.assert_close(
        m["vec"], vec0 - 1.9 * 0.001 * torch.tensor([16.0, 88.0]), rtol=1e-6, atol=1e-7
    )

    momentum_before = st["vec"].state.clone()
    assert ft.adjust_(st, 0.123) is None
    assert st["vec"].rule == ft.Nesterov(0.123, 0.9)
    assert torch.equal(st["vec"].state, momentum_before)
    assert st["vec"].state.dtype == torch.float32


def test_nesterov_adjust_accepts_lr_alias():
    _, st = _nesterov_example()
    ft.adjust_(st, lr=0.123)
    assert st["vec"].rule.eta == 0.123


def test_adjust_chain_by_keywords_reaches_each_rule_and_keeps_state():
    m, _ = _nesterov_example()
    st2 = ft.setup(ft.OptimiserChain(ft.ClipGrad(), ft.Adam()), m)
    chain = st2["vec"].rule
    assert chain == ft.OptimiserChain(ft.ClipGrad(10.0), ft.Adam(0.001, (0.9, 0.999), 1e-8))
    clip_state, (_, _, betas) = st2["vec"].state
    assert clip_state is None and betas == (0.9, 0.999)

    new = ft.adjust(st2, beta=(0.777, 0.909), delta=11.1)  # delta acts on ClipGrad
    assert new["vec"].rule == ft.OptimiserChain(
        ft.ClipGrad(11.1), ft.Adam(0.001, (0.777, 0.909), 1e-8)
    )
    # The stored state, including Adam's running beta powers, is untouched by adjust.
    _, (mt2, vt2, betas2) = new["vec"].state
    assert betas2 == (0.9, 0.999)
    assert torch.equal(mt2, torch.zeros(2)) and torch.equal(vt2, torch.zeros(2))
    # adjust copies: the original state tree still has the old rule.
    assert st2["vec"].rule == chain


def test_adjust_with_unknown_keyword_raises_instead_of_ignoring():
    # Optimisers.jl prints the tree unchanged ("silently ignored!"); API.md makes it an error.
    _, st = _nesterov_example()
    with pytest.raises((TypeError, ValueError), match="beta"):
        ft.adjust(st, beta="no such field")
    with pytest.raises((TypeError, ValueError), match="beta"):
        ft.adjust_(st, beta="no such field")
    assert st["vec"].rule == ft.Nesterov()


def _freeze_example(eta: float):
    M = namedtuple("M", ["x", "y"])
    f64 = torch.float64  # Julia's literals [1.0], [3.0], pi are Float64
    m = M(x=(torch.tensor([1.0], dtype=f64), 2.0), y=torch.tensor([3.0], dtype=f64))
    s = ft.setup(ft.Momentum(eta), m)
    ft.freeze_(s.x)
    ft.update_(
        s,
        m,
        {
            "x": (torch.tensor([math.pi], dtype=f64), 10 * math.pi),
            "y": torch.tensor([100 * math.pi], dtype=f64),
        },
    )
    return m, s


def test_freeze_example_reproduces_printed_value_with_float32_eta():
    # The seed printed the rule as Momentum{Float32}(0.01, 0.9): its eta was the Float32 0.01,
    # which applied to Float64 arrays is 0.009999999776482582.  That is where the printed
    # -0.14159258336972558 comes from (3 - 100*pi*eta, eta as Float32).
    eta32 = float(np.float32(0.01))
    m, s = _freeze_example(eta32)
    assert m.y.item() == -0.14159258336972558
    assert torch.equal(m.x[0], torch.tensor([1.0], dtype=torch.float64))
    assert m.x[1] == 2.0
    assert s.x[0].frozen and torch.equal(s.x[0].state, torch.zeros(1, dtype=torch.float64))
    assert s.x[1] is None
    torch.testing.assert_close(s.y.state, torch.tensor([3.14159]).double(), rtol=0, atol=5e-6)

    ft.thaw_(s)
    assert not s.x[0].frozen
    assert not s.y.frozen


def test_freeze_example_with_float64_eta_gives_three_minus_pi():
    # With a Float64 eta of exactly 0.01 the same step is 3 - 0.01 * 100pi = 3 - pi.
    m, _ = _freeze_example(0.01)
    assert m.y.item() == pytest.approx(3 - math.pi, rel=0, abs=1e-15)
    assert m.y.item() != -0.14159258336972558


def test_update_example_float32_and_reuses_arrays():
    m = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([4.0, 5.0])}
    t = ft.setup(ft.Momentum(1 / 30, 0.9), m)
    g = ft.gradient(lambda m: ((m["x"] + m["y"]) ** 2).sum(), m)[0]
    torch.testing.assert_close(g["x"], torch.tensor([10.0, 14.0]), rtol=0, atol=0)
    torch.testing.assert_close(g["y"], torch.tensor([10.0, 14.0]), rtol=0, atol=0)

    x_before = m["x"]
    t2, m2 = ft.update_(t, m, g)
    # Float32 results as printed: x = Float32[0.6666666, 1.5333333].  (Here y is an ordinary
    # mutable tensor, unlike the seed's StaticArray, so it is updated too.)
    expected_x = torch.tensor([0.6666666, 1.5333333], dtype=torch.float32)
    expected_y = torch.tensor([3.6666667, 4.5333333], dtype=torch.float32)
    assert m2["x"].dtype == torch.float32
    torch.testing.assert_close(m2["x"], expected_x, rtol=0, atol=1.2e-7)
    torch.testing.assert_close(m2["y"], expected_y, rtol=0, atol=4.8e-7)
    assert m2["x"] is x_before  # update_ re-used the array
    assert t2 is t  # and the state is the one that was mutated
