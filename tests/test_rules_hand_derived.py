"""Rules checked against references written here from Optimisers.jl's formulas (src/rules.jl, v0.4).

Each reference below is an independent NumPy transcription of the formula in its docstring, run
step by step on a fixed sequence of fake gradients; fluxtrain's ``setup``/``update_`` must give
the same parameters (float64, 1e-12 relative) after every step.  Hyperparameters are mostly
non-default so that swapped fields would show.
"""

import math

import numpy as np
import pytest
import torch

import fluxtrain as ft

STEPS = 8
SHAPES = {"a": (3, 2), "b": (4,)}


def _grads_sequence(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s) * 2.0 for k, s in SHAPES.items()} for _ in range(STEPS)]


def _start(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s) for k, s in SHAPES.items()}


# --- references: init(x) -> state; step(state, x, g) -> (state, update); x -= update ---------


class RefRAdam:
    """m, v as Adam; rho_t = rho_inf - 2 t b2^t / (1 - b2^t); adaptive step only if rho_t > 4."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-8):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2, 1]

    def step(self, s, x, g):
        m, v, b1t, b2t, t = s
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g**2
        rho_inf = 2 / (1 - self.b2) - 1
        rho = rho_inf - 2 * t * b2t / (1 - b2t)
        if rho > 4:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            upd = m / (1 - b1t) / (np.sqrt(v / (1 - b2t)) + self.eps) * self.eta * r
        else:
            upd = m / (1 - b1t) * self.eta
        return [m, v, b1t * self.b1, b2t * self.b2, t + 1], upd


class RefAdaMax:
    """u = max(b2 u, |g|); update = eta / (1 - b1^t) * m / (u + eps)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-8):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2]

    def step(self, s, x, g):
        m, u, b1t, b2t = s
        m = self.b1 * m + (1 - self.b1) * g
        u = np.maximum(self.b2 * u, np.abs(g))
        upd = self.eta / (1 - b1t) * m / (u + self.eps)
        return [m, u, b1t * self.b1, b2t * self.b2], upd


class RefOAdam:
    """term = eta m_hat / (sqrt(v_hat) + eps); update = 2 term - previous term."""

    def __init__(self, eta=0.001, beta=(0.5, 0.9), eps=1e-8):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2, np.zeros_like(x)]

    def step(self, s, x, g):
        m, v, b1t, b2t, prev = s
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g**2
        term = self.eta * m / (1 - b1t) / (np.sqrt(v / (1 - b2t)) + self.eps)
        return [m, v, b1t * self.b1, b2t * self.b2, term], 2 * term - prev


class RefAMSGrad:
    """All three arrays start at eps; vhat = max(vhat, v); update = eta m / (sqrt(vhat) + eps)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-8):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.full_like(x, self.eps) for _ in range(3)]

    def step(self, s, x, g):
        m, v, vhat = s
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g**2
        vhat = np.maximum(vhat, v)
        return [m, v, vhat], self.eta * m / (np.sqrt(vhat) + self.eps)


class RefNAdam:
    """update = eta (b1 m/(1 - b1 b1^t) + (1-b1) g/(1 - b1^t)) / (sqrt(b2 v/(1 - b2^t)) + eps)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-8):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2]

    def step(self, s, x, g):
        m, v, b1t, b2t = s
        b1, b2 = self.b1, self.b2
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        num = b1 * m / (1 - b1 * b1t) + (1 - b1) * g / (1 - b1t)
        upd = num / (np.sqrt(v * b2 / (1 - b2t)) + self.eps) * self.eta
        return [m, v, b1t * b1, b2t * b2], upd


class RefAdaBelief:
    """s = b2 s + (1-b2)(g - m)^2 + eps; update = eta m_hat / (sqrt(s_hat) + eps)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999), eps=1e-16):
        self.eta, self.b1, self.b2, self.eps = eta, *beta, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2]

    def step(self, st, x, g):
        m, s, b1t, b2t = st
        m = self.b1 * m + (1 - self.b1) * g
        s = self.b2 * s + (1 - self.b2) * (g - m) ** 2 + self.eps
        upd = self.eta * m / (1 - b1t) / (np.sqrt(s / (1 - b2t)) + self.eps)
        return [m, s, b1t * self.b1, b2t * self.b2], upd


class RefLion:
    """m = b2 g + (1-b2) m; update = eta sign((b2 - b1) g + b1 m)."""

    def __init__(self, eta=0.001, beta=(0.9, 0.999)):
        self.eta, self.b1, self.b2 = eta, *beta

    def init(self, x):
        return np.zeros_like(x)

    def step(self, m, x, g):
        m = self.b2 * g + (1 - self.b2) * m
        return m, self.eta * np.sign((self.b2 - self.b1) * g + self.b1 * m)


class RefAdamWDecoupled:
    """couple=false: update = eta * adam_step(rate 1) + lambda x."""

    def __init__(self, eta, beta, lambd, eps):
        self.eta, self.b1, self.b2, self.lambd, self.eps = eta, *beta, lambd, eps

    def init(self, x):
        return [np.zeros_like(x), np.zeros_like(x), self.b1, self.b2]

    def step(self, s, x, g):
        m, v, b1t, b2t = s
        m = self.b1 * m + (1 - self.b1) * g
        v = self.b2 * v + (1 - self.b2) * g**2
        adam = m / (1 - b1t) / (np.sqrt(v / (1 - b2t)) + self.eps)
        return [m, v, b1t * self.b1, b2t * self.b2], self.eta * adam + self.lambd * x


class RefStateless:
    def __init__(self, f):
        self.f = f

    def init(self, x):
        return None

    def step(self, s, x, g):
        return None, self.f(x, g)


def _clipnorm(omega, p):
    def f(x, g):
        n = np.linalg.norm(g.ravel(), ord=p)
        return g * min(omega / n, 1.0)

    return f


CASES = {
    "RAdam_default": (ft.RAdam(), RefRAdam()),
    "RAdam_custom": (ft.RAdam(0.01, (0.8, 0.95), 1e-6), RefRAdam(0.01, (0.8, 0.95), 1e-6)),
    "AdaMax_default": (ft.AdaMax(), RefAdaMax()),
    "AdaMax_custom": (ft.AdaMax(0.02, (0.7, 0.9), 1e-5), RefAdaMax(0.02, (0.7, 0.9), 1e-5)),
    "OAdam_default": (ft.OAdam(), RefOAdam()),
    "OAdam_custom": (ft.OAdam(0.02, (0.6, 0.95), 1e-5), RefOAdam(0.02, (0.6, 0.95), 1e-5)),
    "AMSGrad_default": (ft.AMSGrad(), RefAMSGrad()),
    "AMSGrad_custom": (ft.AMSGrad(0.02, (0.7, 0.9), 1e-4), RefAMSGrad(0.02, (0.7, 0.9), 1e-4)),
    "NAdam_default": (ft.NAdam(), RefNAdam()),
    "NAdam_custom": (ft.NAdam(0.02, (0.8, 0.95), 1e-5), RefNAdam(0.02, (0.8, 0.95), 1e-5)),
    "AdaBelief_default": (ft.AdaBelief(), RefAdaBelief()),
    "AdaBelief_custom": (
        ft.AdaBelief(0.02, (0.8, 0.95), 1e-6),
        RefAdaBelief(0.02, (0.8, 0.95), 1e-6),
    ),
    "Lion_default": (ft.Lion(), RefLion()),
    "Lion_custom": (ft.Lion(0.03, (0.5, 0.7)), RefLion(0.03, (0.5, 0.7))),
    "AdamW_decoupled": (
        ft.AdamW(0.01, (0.8, 0.95), lambd=0.2, epsilon=1e-6, couple=False),
        RefAdamWDecoupled(0.01, (0.8, 0.95), 0.2, 1e-6),
    ),
    "WeightDecay": (ft.WeightDecay(0.3), RefStateless(lambda x, g: g + 0.3 * x)),
    "WeightDecay_default": (ft.WeightDecay(), RefStateless(lambda x, g: g + 5e-4 * x)),
    "SignDecay": (ft.SignDecay(0.3), RefStateless(lambda x, g: g + 0.3 * np.sign(x))),
    "SignDecay_default": (ft.SignDecay(), RefStateless(lambda x, g: g + 1e-3 * np.sign(x))),
    "ClipGrad": (ft.ClipGrad(0.7), RefStateless(lambda x, g: np.clip(g, -0.7, 0.7))),
    "ClipGrad_default": (ft.ClipGrad(), RefStateless(lambda x, g: np.clip(g, -10.0, 10.0))),
    "ClipNorm_p2": (ft.ClipNorm(1.5), RefStateless(_clipnorm(1.5, 2))),
    "ClipNorm_p1": (ft.ClipNorm(2.0, 1.0), RefStateless(_clipnorm(2.0, 1))),
    "ClipNorm_pInf": (ft.ClipNorm(1.0, float("inf")), RefStateless(_clipnorm(1.0, np.inf))),
    "ClipNorm_default_no_clip": (ft.ClipNorm(), RefStateless(_clipnorm(10.0, 2))),
}


def _run(rule: ft.Rule, ref, steps: int = STEPS):
    x0 = _start()
    gs = _grads_sequence()
    model = {k: torch.tensor(v) for k, v in x0.items()}
    state = ft.setup(rule, model)
    ref_x = {k: v.copy() for k, v in x0.items()}
    ref_state = {k: ref.init(v) for k, v in ref_x.items()}
    for t in range(steps):
        ft.update_(state, model, {k: torch.tensor(v) for k, v in gs[t].items()})
        for k in ref_x:
            ref_state[k], upd = ref.step(ref_state[k], ref_x[k], gs[t][k])
            ref_x[k] = ref_x[k] - upd
        for k in model:
            np.testing.assert_allclose(
                model[k].numpy(), ref_x[k], rtol=1e-12, atol=1e-14, err_msg=f"step {t + 1}, {k}"
            )
    return model, ref_x


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_rule_matches_formula_step_by_step(case):
    rule, ref = CASES[case]
    model, _ = _run(rule, ref)
    x0 = _start()
    assert any(not np.allclose(model[k].numpy(), x0[k]) for k in model)


def test_radam_covers_both_regimes():
    # With beta2 = 0.999, rho_t is 1 at t=1 (plain momentum) and exceeds 4 from t=5 on:
    # eight steps exercise both branches of the reference above.
    b2 = 0.999
    rho_inf = 2 / (1 - b2) - 1
    rhos = [rho_inf - 2 * t * b2**t / (1 - b2**t) for t in range(1, STEPS + 1)]
    assert rhos[0] <= 4 < rhos[-1]


def test_clipnorm_only_rescales_arrays_above_omega():
    model = {"small": torch.tensor([0.3, 0.4]), "big": torch.tensor([3.0, 4.0])}
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Descent(1.0)), model)
    ft.update_(st, model, {"small": torch.tensor([0.3, 0.4]), "big": torch.tensor([3.0, 4.0])})
    # |small| = 0.5 stays; |big| = 5 is scaled to norm 1: [0.6, 0.8].
    torch.testing.assert_close(model["small"], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(model["big"], torch.tensor([2.4, 3.2]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_clipnorm_throw_raises_on_nonfinite_and_changes_nothing(bad):
    model = {"ok": torch.tensor([1.0, 2.0]), "bad": torch.tensor([1.0, 2.0])}
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Momentum(0.1)), model)
    with pytest.raises(ArithmeticError):
        ft.update_(st, model, {"ok": torch.tensor([1.0, 1.0]), "bad": torch.tensor([bad, 1.0])})
    assert torch.equal(model["ok"], torch.tensor([1.0, 2.0]))
    assert torch.equal(model["bad"], torch.tensor([1.0, 2.0]))
    assert torch.equal(st["ok"].state[1], torch.zeros(2))
    assert torch.equal(st["bad"].state[1], torch.zeros(2))


def test_clipnorm_throw_error_is_fluxtrain_nonfinite_gradient_error():
    st = ft.setup(ft.ClipNorm(), torch.zeros(2))
    with pytest.raises(ft.NonFiniteGradientError):
        ft.update_(st, torch.zeros(2), torch.tensor([float("inf"), 0.0]))


def test_clipnorm_without_throw_does_not_raise_on_nonfinite():
    x = torch.tensor([1.0, 2.0])
    st = ft.setup(ft.ClipNorm(1.0, throw=False), x)
    ft.update_(st, x, torch.tensor([float("inf"), 1.0]))
    ft.update_(st, x, torch.tensor([float("nan"), 1.0]))


def test_clipnorm_zero_gradient_passes_unchanged():
    x = torch.tensor([1.0, 2.0])
    st = ft.setup(ft.ClipNorm(1.0), x)
    ft.update_(st, x, torch.zeros(2))
    assert torch.equal(x, torch.tensor([1.0, 2.0]))


def test_chain_applies_rules_in_order():
    # ClipGrad then Descent: clip before discounting (Optimisers.jl's OptimiserChain docstring).
    x = torch.zeros(3, dtype=torch.float64)
    st = ft.setup(ft.OptimiserChain(ft.ClipGrad(1.0), ft.Descent(0.1)), x)
    ft.update_(st, x, torch.tensor([0.3, 1.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([-0.03, -0.1, -0.1], dtype=torch.float64))
    # The other order discounts first: 0.7 is then below delta = 1.
    y = torch.zeros(3, dtype=torch.float64)
    st = ft.setup(ft.OptimiserChain(ft.Descent(0.1), ft.ClipGrad(1.0)), y)
    ft.update_(st, y, torch.tensor([0.3, 1.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([-0.03, -0.1, -0.7], dtype=torch.float64))


def test_empty_chain_subtracts_the_full_gradient():
    x = torch.tensor([1.0, 2.0])
    st = ft.setup(ft.OptimiserChain(), x)
    ft.update_(st, x, torch.tensor([0.5, 0.25]))
    assert torch.equal(x, torch.tensor([0.5, 1.75]))


def test_chain_with_weightdecay_then_adam_matches_composed_reference():
    # WeightDecay's output feeds Adam: reference composes the two formulas by hand.
    x0 = np.array([0.5, -1.5, 2.0])
    gs = [np.array([0.1, -0.2, 0.3]), np.array([-0.4, 0.2, 0.1]), np.array([0.3, 0.3, -0.3])]
    x = torch.tensor(x0)
    st = ft.setup(ft.OptimiserChain(ft.WeightDecay(0.1), ft.Adam(0.01, (0.8, 0.9), 1e-8)), x)
    ref = x0.copy()
    m = np.zeros(3)
    v = np.zeros(3)
    for t, g in enumerate(gs, start=1):
        ft.update_(st, x, torch.tensor(g))
        d = g + 0.1 * ref
        m = 0.8 * m + 0.2 * d
        v = 0.9 * v + 0.1 * d**2
        ref = ref - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-8)
        np.testing.assert_allclose(x.numpy(), ref, rtol=1e-12)


def test_chain_skips_the_rest_while_accumgrad_returns_none():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64)
    st = ft.setup(ft.OptimiserChain(ft.AccumGrad(3), ft.Momentum(0.1, 0.5)), x)
    for g in ([3.0, 0.0], [0.0, 6.0]):
        ft.update_(st, x, torch.tensor(g, dtype=torch.float64))
        assert torch.equal(x, torch.tensor([1.0, 1.0], dtype=torch.float64))
        # The rule after AccumGrad has not run: its momentum is still zero.
        assert torch.equal(st.state[1], torch.zeros(2, dtype=torch.float64))
    ft.update_(st, x, torch.tensor([0.0, 3.0], dtype=torch.float64))
    # Mean of three gradients = [1, 3]; momentum from zero = 0.1 * [1, 3].
    torch.testing.assert_close(st.state[1], torch.tensor([0.1, 0.3], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([0.9, 0.7], dtype=torch.float64))
    # A new accumulation window starts: again no change for two steps.
    ft.update_(st, x, torch.tensor([5.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([0.9, 0.7], dtype=torch.float64))


def test_accumgrad_documented_example():
    # Optimisers.jl's AccumGrad docstring: after two updates x = [-0.651], y = [-20.202002].
    m = {"x": torch.tensor([1.0]), "y": torch.tensor([2.0])}
    r = ft.OptimiserChain(ft.AccumGrad(2), ft.WeightDecay(0.01), ft.Descent(0.1))
    s = ft.setup(r, m)
    ft.update_(s, m, {"x": torch.tensor([33.0]), "y": torch.tensor([0.0])})
    assert torch.equal(m["x"], torch.tensor([1.0])) and torch.equal(m["y"], torch.tensor([2.0]))
    ft.update_(s, m, {"x": torch.tensor([0.0]), "y": torch.tensor([444.0])})
    assert m["x"].dtype == torch.float32
    torch.testing.assert_close(m["x"], torch.tensor([-0.651]), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["y"], torch.tensor([-20.202002]), rtol=0, atol=2e-6)


def test_accumgrad_one_passes_every_gradient_through():
    x = torch.tensor([1.0])
    st = ft.setup(ft.OptimiserChain(ft.AccumGrad(1), ft.Descent(0.5)), x)
    ft.update_(st, x, torch.tensor([1.0]))
    ft.update_(st, x, torch.tensor([1.0]))
    assert torch.equal(x, torch.tensor([0.0]))


def test_global_clipnorm_takes_one_norm_over_the_gradients_of_the_call():
    rule = ft.OptimiserChain(ft.ClipNorm(1.0, scope="global"), ft.Descent(1.0))
    m = {"a": torch.zeros(2), "b": torch.zeros(1), "c": torch.zeros(1)}
    st = ft.setup(rule, m)
    # |[3, 0] ++ [4]| = 5: every array scaled by 1/5; None branches take no part in the norm.
    ft.update_(st, m, {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0]), "c": None})
    torch.testing.assert_close(m["a"], torch.tensor([-0.6, 0.0]))
    torch.testing.assert_close(m["b"], torch.tensor([-0.8]))
    assert torch.equal(m["c"], torch.zeros(1))
    # a frozen leaf takes no part either
    ft.freeze_(st["b"])
    ft.update_(st, m, {"a": torch.tensor([0.0, 2.0]), "b": torch.tensor([100.0]), "c": None})
    torch.testing.assert_close(m["a"], torch.tensor([-0.6, -1.0]))
    torch.testing.assert_close(m["b"], torch.tensor([-0.8]))


def test_global_clipnorm_throw_raises_before_any_update():
    m = {"a": torch.zeros(2), "b": torch.zeros(1)}
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0, scope="global"), ft.Momentum(0.1)), m)
    with pytest.raises(ft.NonFiniteGradientError):
        ft.update_(st, m, {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([float("inf")])})
    assert torch.equal(m["a"], torch.zeros(2)) and torch.equal(st["a"].state[1], torch.zeros(2))


@pytest.mark.parametrize("others", [None, torch.tensor([3.0, 4.0])], ids=["alone", "grouped"])
def test_clipnorm_without_throw_nan_norm_gives_nan_however_leaves_are_grouped(others):
    # Optimisers.jl: lambda = min(omega / NaN, 1) = NaN, so the whole array becomes NaN; the
    # result must not depend on whether the engine updates the leaf alone or in a flat group.
    rule = ft.OptimiserChain(ft.ClipNorm(1.0, throw=False), ft.Descent(1.0))
    m = {"a": torch.zeros(2), "b": torch.zeros(2)}
    st = ft.setup(rule, m)
    ft.update_(st, m, {"a": torch.tensor([float("nan"), 1.0]), "b": others})
    assert bool(torch.isnan(m["a"]).all())
    if others is not None:
        torch.testing.assert_close(m["b"], torch.tensor([-0.6, -0.8]))


def test_clipnorm_without_throw_infinite_norm_scales_finite_entries_to_zero():
    x = torch.zeros(3)
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0, throw=False), ft.Descent(1.0)), x)
    ft.update_(st, x, torch.tensor([float("inf"), 2.0, -3.0]))
    assert math.isnan(x[0].item())  # inf * 0
    assert torch.equal(x[1:], torch.zeros(2))
