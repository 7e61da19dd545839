"""Every rule, at its defaults, makes progress on a simple least-squares problem.

The idea of Optimisers.jl's own test/rules.jl ("independence"): learn ``w`` so that ``w x``
matches ``w' x``.  Its rule list (all rules at default settings, a few chains, and the
non-default variants) is used here, over 300 steps instead of 10^5 so the file stays fast:
the loss must fall by at least 5% and stay finite.  (The slowest rules at defaults, AdaDelta
and RAdam, still cut it by more than 10% in that time.)
"""

import math

import pytest
import torch

import fluxtrain as ft

RULES = [
    # Every rule of API.md at its default settings.
    ft.Descent(),
    ft.Momentum(),
    ft.Nesterov(),
    ft.RMSProp(),
    ft.Rprop(),
    ft.Adam(),
    ft.RAdam(),
    ft.AdaMax(),
    ft.OAdam(),
    ft.AdaGrad(),
    ft.AdaDelta(),
    ft.AMSGrad(),
    ft.NAdam(),
    ft.AdamW(),
    ft.AdaBelief(),
    ft.Lion(),
    ft.WeightDecay(),
    ft.SignDecay(),
    ft.ClipGrad(),
    ft.ClipNorm(),
    ft.OptimiserChain(),
    ft.AccumGrad(),
    # Chains from Optimisers.jl's list.
    ft.OptimiserChain(ft.SignDecay(0.001), ft.Adam(0.001)),
    ft.OptimiserChain(ft.ClipNorm(), ft.Adam(0.001)),
    ft.OptimiserChain(ft.ClipGrad(0.5), ft.Momentum()),
    ft.OptimiserChain(ft.WeightDecay(), ft.OAdam(), ft.ClipGrad(1)),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Descent()),
    # Not the defaults.
    ft.RMSProp(centred=True),
    ft.AdamW(couple=False),
    ft.ClipNorm(scope="global"),
    ft.OptimiserChain(ft.ClipNorm(1.0, scope="global"), ft.Adam()),
]

STEPS = 300


def _problem():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    w_true = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    x = torch.rand(6, 20, generator=gen, dtype=torch.float64)
    return w0, w_true, x


@pytest.mark.parametrize("rule", RULES, ids=[repr(r) for r in RULES])
def test_rule_at_defaults_reduces_least_squares_loss(rule):
    w0, w_true, x = _problem()
    model = {"w": w0.clone(), "b": torch.zeros(6, 1, dtype=torch.float64)}

    def loss(m):
        return ((m["w"] @ x + m["b"] - w_true @ x) ** 2).mean()

    state = ft.setup(rule, model)
    initial = loss(model).item()
    assert initial > 1
    for _ in range(STEPS):
        grads = ft.gradient(loss, model)[0]
        ft.update_(state, model, grads)
    final = loss(model).item()
    assert math.isfinite(final)
    assert final < 0.95 * initial, f"{rule!r}: loss {initial:.4g} -> {final:.4g}"
