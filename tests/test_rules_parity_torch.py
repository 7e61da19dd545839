"""Parity of fluxtrain's rules with ``torch.optim`` where the two define the same maths.

20 steps of a least-squares fit on random float64 data, once with ``ft.gradient`` +
``ft.update_`` and once with ``loss.backward()`` + ``torch.optim``; parameters must agree to
1e-6 relative.  Where the stored state means the same thing it is compared too.

Rules left out on purpose (their maths differ from torch's, so they are checked against
hand-derived values in test_rules_hand_derived.py):
- NAdam: torch's NAdam schedules its momentum (``momentum_decay``, mu_t = b1 (1 - 0.96^(t psi)/2));
  Optimisers.jl uses a constant b1.
- RAdam: torch switches to the adaptive step at rho_t > 5 and places epsilon outside the bias
  correction (sqrt(bc2) / (sqrt(v) + eps)); Optimisers.jl uses rho_t > 4 and sqrt(v / bc2) + eps.
- AMSGrad: torch's Adam(amsgrad=True) bias-corrects and starts from zeros; Optimisers.jl's
  AMSGrad has no bias correction and starts all three arrays at epsilon.
"""

from collections.abc import Callable

import pytest
import torch

import fluxtrain as ft

STEPS = 20
F64 = torch.float64


def _data():
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(16, 5, generator=gen, dtype=F64)
    y = torch.randn(16, 3, generator=gen, dtype=F64)
    w = torch.randn(3, 5, generator=gen, dtype=F64)
    b = torch.randn(3, generator=gen, dtype=F64)
    return x, y, w, b


def _loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ p["weight"].T + p["bias"] - y) ** 2).mean()


def _run_fluxtrain(rule: ft.Rule):
    x, y, w, b = _data()
    model = {"weight": w.clone(), "bias": b.clone()}
    state = ft.setup(rule, model)
    for _ in range(STEPS):
        grads = ft.gradient(_loss, model, x, y)[0]
        ft.update_(state, model, grads)
    return model, state


def _run_torch(make_opt: Callable):
    x, y, w, b = _data()
    params = {"weight": w.clone().requires_grad_(), "bias": b.clone().requires_grad_()}
    opt = make_opt([params["weight"], params["bias"]])
    for _ in range(STEPS):
        opt.zero_grad()
        _loss(params, x, y).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}, opt


CASES = {
    "Descent_vs_SGD": (
        ft.Descent(0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05),
    ),
    "Descent_default_vs_SGD": (
        ft.Descent(),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ),
    "Momentum_vs_SGD_momentum": (
        ft.Momentum(0.02, 0.85),
        lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.85),
    ),
    "Nesterov_vs_SGD_nesterov": (
        ft.Nesterov(0.02, 0.85),
        lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.85, nesterov=True),
    ),
    "RMSProp_vs_RMSprop": (
        ft.RMSProp(0.01, 0.95, 1e-7),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.95, eps=1e-7),
    ),
    "RMSProp_centred_vs_RMSprop_centered": (
        ft.RMSProp(0.01, 0.95, 1e-7, centred=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.95, eps=1e-7, centered=True),
    ),
    "Adam_vs_Adam": (
        ft.Adam(0.05, (0.8, 0.99), 1e-7),
        lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-7),
    ),
    "Adam_default_vs_Adam": (
        ft.Adam(),
        lambda ps: torch.optim.Adam(ps, lr=0.001, betas=(0.9, 0.999), eps=1e-8),
    ),
    "AdamW_coupled_vs_AdamW": (
        ft.AdamW(0.05, (0.8, 0.99), lambd=0.1, epsilon=1e-7, couple=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1),
    ),
    "AdaGrad_vs_Adagrad": (
        ft.AdaGrad(0.1, 1e-6),
        lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=1e-6, eps=1e-6),
    ),
    "AdaDelta_vs_Adadelta_lr1": (
        ft.AdaDelta(0.9, 1e-6),
        lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.9, eps=1e-6),
    ),
    "Rprop_vs_Rprop": (
        ft.Rprop(0.01, (0.4, 1.3), (1e-5, 0.5)),
        lambda ps: torch.optim.Rprop(ps, lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 0.5)),
    ),
    "Rprop_default_vs_Rprop": (
        ft.Rprop(),
        lambda ps: torch.optim.Rprop(ps, lr=1e-3, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_parameters_match_torch_optim_over_20_steps(case):
    rule, make_opt = CASES[case]
    ours, _ = _run_fluxtrain(rule)
    theirs, _ = _run_torch(make_opt)
    w = _data()[2]
    # The run must actually have moved the parameters, or agreement would prove nothing.
    assert not torch.allclose(ours["weight"], w, rtol=1e-3, atol=0)
    for k in ("weight", "bias"):
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-6, atol=1e-12)


def test_momentum_state_is_eta_times_torch_momentum_buffer():
    # Optimisers.jl stores v = rho v + eta g; torch stores b = mu b + g, so v == eta * b.
    _, st = _run_fluxtrain(ft.Momentum(0.02, 0.85))
    _, opt = _run_torch(lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.85))
    bufs = [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]
    torch.testing.assert_close(st["weight"].state, 0.02 * bufs[0], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(st["bias"].state, 0.02 * bufs[1], rtol=1e-6, atol=1e-12)


def test_nesterov_state_is_minus_eta_times_torch_momentum_buffer():
    # Optimisers.jl's Nesterov keeps vel = rho vel - eta g, the negative of Momentum's.
    _, st = _run_fluxtrain(ft.Nesterov(0.02, 0.85))
    _, opt = _run_torch(lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.85, nesterov=True))
    bufs = [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]
    torch.testing.assert_close(st["weight"].state, -0.02 * bufs[0], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(st["bias"].state, -0.02 * bufs[1], rtol=1e-6, atol=1e-12)


def test_adam_moments_and_beta_powers_match_torch():
    _, st = _run_fluxtrain(ft.Adam(0.05, (0.8, 0.99), 1e-7))
    _, opt = _run_torch(lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-7))
    w = opt.param_groups[0]["params"][0]
    mt, vt, (b1t, b2t) = st["weight"].state
    torch.testing.assert_close(mt, opt.state[w]["exp_avg"], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(vt, opt.state[w]["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    # Optimisers.jl keeps beta^(t+1) after t steps (it starts at beta, used before multiplying).
    assert b1t == pytest.approx(0.8 ** (STEPS + 1), rel=1e-12)
    assert b2t == pytest.approx(0.99 ** (STEPS + 1), rel=1e-12)


def test_adagrad_accumulator_matches_torch_state_sum():
    _, st = _run_fluxtrain(ft.AdaGrad(0.1, 1e-6))
    _, opt = _run_torch(
        lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=1e-6, eps=1e-6)
    )
    w = opt.param_groups[0]["params"][0]
    torch.testing.assert_close(st["weight"].state, opt.state[w]["sum"], rtol=1e-6, atol=1e-12)


def test_rprop_step_sizes_match_torch():
    _, st = _run_fluxtrain(ft.Rprop(0.01, (0.4, 1.3), (1e-5, 0.5)))
    _, opt = _run_torch(
        lambda ps: torch.optim.Rprop(ps, lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 0.5))
    )
    w = opt.param_groups[0]["params"][0]
    _, step = st["weight"].state
    torch.testing.assert_close(step, opt.state[w]["step_size"], rtol=1e-6, atol=1e-12)


def test_global_clipnorm_matches_clip_grad_norm_():
    # ClipNorm(scope="global") then Descent(1) subtracts exactly the clipped gradients.
    gen = torch.Generator().manual_seed(7)
    model = {"a": torch.randn(4, 3, generator=gen, dtype=F64), "b": torch.randn(5, dtype=F64)}
    grads = {"a": 3 * torch.randn(4, 3, dtype=F64), "b": 3 * torch.randn(5, dtype=F64)}
    ref = {k: v.clone().requires_grad_() for k, v in model.items()}
    for k in ref:
        ref[k].grad = grads[k].clone()
    total = torch.nn.utils.clip_grad_norm_(list(ref.values()), max_norm=1.5, norm_type=2.0)
    assert total > 1.5  # clipping is active
    expected = {k: (v - v.grad).detach() for k, v in ref.items()}

    rule = ft.OptimiserChain(ft.ClipNorm(1.5, scope="global"), ft.Descent(1.0))
    state = ft.setup(rule, model)
    ft.update_(state, model, grads)
    # torch divides by (norm + 1e-6); the relative difference is ~1e-6 / norm, below 1e-6.
    for k in model:
        torch.testing.assert_close(model[k], expected[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p", [1.0, float("inf")])
def test_global_clipnorm_other_norms_match_clip_grad_norm_(p):
    gen = torch.Generator().manual_seed(8)
    model = {"a": torch.randn(6, generator=gen, dtype=F64), "b": torch.randn(2, 2, dtype=F64)}
    grads = {"a": 4 * torch.randn(6, dtype=F64), "b": 4 * torch.randn(2, 2, dtype=F64)}
    ref = {k: v.clone().requires_grad_() for k, v in model.items()}
    for k in ref:
        ref[k].grad = grads[k].clone()
    torch.nn.utils.clip_grad_norm_(list(ref.values()), max_norm=0.5, norm_type=p)
    state = ft.setup(ft.ClipNorm(0.5, p, scope="global"), model)
    ft.update_(state, model, grads)
    for k in model:
        torch.testing.assert_close(model[k], (ref[k] - ref[k].grad).detach(), rtol=1e-5, atol=1e-9)
