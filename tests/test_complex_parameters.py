"""Complex parameters follow Optimisers.jl: second moments are built from ``abs2(dx)``."""

from __future__ import annotations

import pytest
import torch

import fluxtrain as ft

COMPLEX_RULES = [
    ft.Descent(0.05),
    ft.Momentum(0.01),
    ft.Nesterov(0.01),
    ft.RMSProp(0.01),
    ft.RMSProp(0.01, centred=True),
    ft.Adam(0.01),
    ft.RAdam(0.01),
    ft.OAdam(0.01),
    ft.AdaGrad(0.1),
    ft.AdaDelta(),
    ft.NAdam(0.01),
    ft.AdamW(0.01),
    ft.AdaBelief(0.01),
    ft.Lion(0.01),
    ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(1e-3), ft.Adam(0.01)),
]


def test_adam_on_a_complex_parameter_moves_along_the_gradient_with_a_real_second_moment():
    # The worked example: w = 0, gradient 4i, Adam(0.01):
    # m = 0.1 * 4i, v = 0.001 * |4i|^2 = 0.016, step = 0.01 * (4i) / sqrt(16) = 0.01i.
    w = torch.zeros(1, dtype=torch.complex128)
    state = ft.setup(ft.Adam(0.01), w)
    ft.update_(state, w, torch.tensor([4j], dtype=torch.complex128))
    assert torch.allclose(w, torch.tensor([-0.01j], dtype=torch.complex128), atol=1e-12)
    assert torch.allclose(state.state[1], torch.tensor([0.016 + 0j], dtype=torch.complex128))


@pytest.mark.parametrize("rule", COMPLEX_RULES, ids=repr)
def test_every_complex_capable_rule_reduces_a_complex_loss(rule):
    target = torch.tensor([1 + 2j, -0.5 + 0.25j, 3j], dtype=torch.complex128)
    w = torch.zeros(3, dtype=torch.complex128, requires_grad=True)
    state = ft.setup(rule, w)

    def loss(w):
        return (w - target).abs().pow(2).sum()

    first = float(loss(w.detach()))
    for _ in range(300):
        g = ft.gradient(loss, w)[0]
        ft.update_(state, w, g)
    assert float(loss(w.detach())) < first


@pytest.mark.parametrize("rule", [ft.AdaMax(), ft.AMSGrad(), ft.Rprop(), ft.ClipGrad()], ids=repr)
def test_rules_that_order_values_refuse_complex_parameters_naming_them(rule):
    model = {"re": torch.zeros(2), "z": torch.zeros(2, dtype=torch.complex64)}
    with pytest.raises(TypeError, match=r"\bz\b.*complex"):
        ft.setup(ft.OptimiserChain(rule, ft.Descent()), model)
