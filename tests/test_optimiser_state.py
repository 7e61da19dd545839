"""Tree-shaped optimiser state: setup, update_/update, adjust_, freeze_/thaw_, reset_, Leaf."""

import dataclasses
import math
from collections import namedtuple

import numpy as np
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
        self.enc = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.dec = nn.Linear(4, 2)
        self.register_buffer("running", torch.zeros(2))

    def forward(self, x):
        return self.dec(self.enc(x)) + self.running


def _snapshot(tree):
    """Deep copy of every tensor reachable in a model or state tree, for later comparison."""
    return [(str(p), t.detach().clone()) for p, t in ft.trainables(tree, path=True)]


def _states(state):
    out = []

    def flat(s):
        if isinstance(s, torch.Tensor):
            return [s.detach().clone()]
        if isinstance(s, tuple):
            return [a for x in s for a in flat(x)]
        return [s]

    for leaf in ft.leaves(state):
        out.append((leaf.rule, leaf.frozen, flat(leaf.state)))
    return out


def _same_states(a, b) -> bool:
    if len(a) != len(b):
        return False
    for (ra, fa, sa), (rb, fb, sb) in zip(a, b):
        if ra != rb or fa != fb or len(sa) != len(sb):
            return False
        for x, y in zip(sa, sb):
            if isinstance(x, torch.Tensor):
                if not torch.equal(x, y):
                    return False
            elif x != y:
                return False
    return True


# --- setup mirrors the model ------------------------------------------------------------


def test_setup_on_nested_containers_mirrors_them():
    model = {
        "t": (torch.ones(2), "name", 3),
        "l": [torch.zeros(1), math.sin],
        "dc": Affine(torch.ones(1), torch.zeros(1)),
        "nt": Point(x=torch.ones(3), y=torch.arange(2)),
    }
    st = ft.setup(ft.Momentum(), model)
    assert isinstance(st["t"][0], ft.Leaf) and st["t"][1] is None and st["t"][2] is None
    assert isinstance(st["l"][0], ft.Leaf) and st["l"][1] is None
    assert isinstance(st["dc"].scale, ft.Leaf) and st["dc"].name is None
    assert isinstance(st["nt"].x, ft.Leaf) and st["nt"].y is None  # integer tensor
    assert torch.equal(st["nt"].x.state, torch.zeros(3))


def test_setup_on_bare_tensor_is_a_bare_leaf():
    st = ft.setup(ft.Adam(), torch.ones(2))
    assert isinstance(st, ft.Leaf)
    assert st.rule == ft.Adam() and not st.frozen


def test_setup_on_sequential_and_custom_module():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    st = ft.setup(ft.Adam(), seq)
    assert isinstance(st[0].weight, ft.Leaf) and isinstance(st[2].bias, ft.Leaf)
    assert st[0].weight.state[0].shape == (3, 2)

    net = Net()
    st = ft.setup(ft.Adam(), net)
    assert isinstance(st.enc[0].weight, ft.Leaf)
    assert isinstance(st.dec.bias, ft.Leaf)
    assert st.running is None  # a buffer is not trainable
    assert len(list(ft.leaves(st))) == 4


def test_setup_needs_a_rule_instance():
    with pytest.raises(TypeError, match=r"Adam\(\)"):
        ft.setup(ft.Adam, {"w": torch.ones(1)})
    with pytest.raises(TypeError):
        ft.setup("adam", {"w": torch.ones(1)})


def test_leaf_repr_reads_like_optimisers_jl():
    assert repr(ft.setup(ft.Momentum(0.1), torch.zeros(2))) == (
        "Leaf(Momentum(eta=0.1, rho=0.9), tensor([0., 0.]))"
    )
    st = ft.setup(ft.Descent(), torch.zeros(1))
    ft.freeze_(st)
    assert repr(st) == "Leaf(Descent(eta=0.1), None, frozen=True)"
    chain = ft.setup(ft.OptimiserChain(ft.ClipGrad(), ft.Descent()), torch.zeros(1))
    assert (
        repr(chain) == "Leaf(OptimiserChain(ClipGrad(delta=10.0), Descent(eta=0.1)), (None, None))"
    )


def test_chain_state_keeps_rules_in_opts():
    rule = ft.OptimiserChain(ft.WeightDecay(0.1), ft.Adam())
    assert rule.opts == (ft.WeightDecay(0.1), ft.Adam())
    st = ft.setup(rule, torch.zeros(2))
    assert st.rule.opts[1] == ft.Adam()


# --- update_ ----------------------------------------------------------------------------


def test_update_on_module_matches_manual_descent():
    net = Net()
    x = torch.randn(5, 3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    st = ft.setup(ft.Descent(0.1), net)
    (g,) = ft.gradient(lambda m: m(x).pow(2).mean(), net)
    state, model = ft.update_(st, net, g)
    assert state is st and model is net
    torch.testing.assert_close(net.dec.weight.detach(), before["dec.weight"] - 0.1 * g.dec.weight)
    torch.testing.assert_close(net.enc[0].bias.detach(), before["enc.0.bias"] - 0.1 * g.enc[0].bias)
    assert torch.equal(net.running, torch.zeros(2))


def test_update_on_dataclass_and_namedtuple_model_with_gradient_tree():
    model = {
        "dc": Affine(torch.tensor([1.0, 2.0]), torch.tensor([0.5])),
        "nt": Point(x=torch.tensor([3.0]), y=(torch.tensor([1.0, 1.0]), math.sin)),
    }

    def loss(m):
        return (m["dc"].scale * m["nt"].x).sum() + m["nt"].y[0].sum() + 0 * m["dc"].shift.sum()

    st = ft.setup(ft.Descent(0.5), model)
    (g,) = ft.gradient(loss, model)
    ft.update_(st, model, g)
    assert isinstance(model["dc"], Affine) and isinstance(model["nt"], Point)
    torch.testing.assert_close(model["dc"].scale, torch.tensor([-0.5, 0.5]))  # - 0.5 * 3
    torch.testing.assert_close(model["nt"].x, torch.tensor([1.5]))  # - 0.5 * (1 + 2)
    torch.testing.assert_close(model["nt"].y[0], torch.tensor([0.5, 0.5]))
    assert torch.equal(model["dc"].shift, torch.tensor([0.5]))  # zero gradient, Descent
    assert model["dc"].name == "affine" and model["nt"].y[1] is math.sin


def test_update_with_plain_nested_dict_gradients():
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    w0 = seq[0].weight.detach().clone()
    st = ft.setup(ft.Descent(1.0), seq)
    ft.update_(st, seq, {"0": {"weight": torch.ones(2, 2), "bias": None}})
    torch.testing.assert_close(seq[0].weight.detach(), w0 - 1)
    # integer keys work as well as the module's string keys
    ft.update_(st, seq, {0: {"weight": torch.ones(2, 2)}})
    torch.testing.assert_close(seq[0].weight.detach(), w0 - 2)


def test_update_with_none_branch_keeps_its_state():
    model = {"a": torch.ones(2), "b": {"c": torch.ones(2)}}
    st = ft.setup(ft.Adam(0.1), model)
    ft.update_(st, model, {"a": torch.ones(2), "b": None})
    assert torch.equal(model["b"]["c"], torch.ones(2))
    mt, _, betas = st["b"]["c"].state
    assert torch.equal(mt, torch.zeros(2)) and betas == (0.9, 0.999)
    assert st["a"].state[2] == pytest.approx((0.81, 0.999**2))


def test_update_with_tensor_gradient_for_bare_tensor_model():
    x = torch.tensor([1.0, 2.0])
    st = ft.setup(ft.Descent(0.5), x)
    ft.update_(st, x, torch.tensor([2.0, 2.0]))
    assert torch.equal(x, torch.tensor([0.0, 1.0]))


def test_update_with_none_reads_dot_grad_after_backward():
    net = Net()
    x = torch.randn(4, 3)
    st = ft.setup(ft.Descent(0.1), net)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(x).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    ft.update_(st, net)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n])


def test_update_with_none_skips_parameters_without_grad():
    lin = nn.Linear(2, 2)
    st = ft.setup(ft.Momentum(0.1), lin)
    b0 = lin.bias.detach().clone()
    lin.weight.grad = torch.ones(2, 2)
    ft.update_(st, lin)
    assert torch.equal(lin.bias.detach(), b0)
    assert torch.equal(st.bias.state, torch.zeros(2))
    assert torch.equal(st.weight.state, torch.full((2, 2), 0.1))


def test_update_needs_state_not_rule():
    with pytest.raises(TypeError, match="setup"):
        ft.update_(ft.Adam(), {"w": torch.ones(1)}, {"w": torch.ones(1)})


def test_update_does_not_mutate_model_state_or_grads():
    net = Net()
    st = ft.setup(ft.Adam(0.1), net)
    (g,) = ft.gradient(lambda m: m(torch.randn(3, 3)).sum(), net)
    ft.update_(st, net, g)  # a first step, so that the state is not all zeros
    model_before = _snapshot(net)
    state_before = _states(st)
    grads_before = _snapshot(g)

    st2, net2 = ft.update(st, net, g)
    for (pa, a), (pb, b) in zip(_snapshot(net), model_before):
        assert pa == pb and torch.equal(a, b)
    assert _same_states(_states(st), state_before)
    for (_, a), (_, b) in zip(_snapshot(g), grads_before):
        assert torch.equal(a, b)
    # ...and the returned copies did move.
    assert not torch.equal(net2.dec.weight.detach(), net.dec.weight.detach())
    assert not _same_states(_states(st2), state_before)


def test_update_copy_equals_update_in_place():
    model = {"a": torch.tensor([1.0, -2.0]), "b": [torch.tensor([0.5])]}
    grads = {"a": torch.tensor([0.3, 0.1]), "b": [torch.tensor([-1.0])]}
    st = ft.setup(ft.Adam(0.1), model)
    st2, m2 = ft.update(st, model, grads)
    ft.update_(st, model, grads)
    assert torch.equal(m2["a"], model["a"]) and torch.equal(m2["b"][0], model["b"][0])
    assert _same_states(_states(st2), _states(st))


# --- tied weights -------------------------------------------------------------------------


def _tied():
    enc, dec = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    dec.weight = enc.weight
    return nn.Sequential(enc, dec)


def test_tied_weights_share_one_leaf():
    model = _tied()
    st = ft.setup(ft.Adam(), model)
    assert st[0].weight is st[1].weight
    assert len(list(ft.leaves(st))) == 1


def test_tied_weights_updated_once_with_total_gradient_from_ft_gradient():
    model = _tied()
    x = torch.randn(2, 3)
    w0 = model[0].weight.detach().clone()
    st = ft.setup(ft.Descent(0.1), model)
    (g,) = ft.gradient(lambda m: m(x).pow(2).sum(), model)
    ft.update_(st, model, g)
    # the total gradient is applied once, not once per place
    torch.testing.assert_close(model[0].weight.detach(), w0 - 0.1 * g[0].weight)
    assert model[1].weight is model[0].weight


def test_tied_plain_gradients_at_both_places_are_summed():
    t = torch.zeros(2)
    model = {"p": t, "q": [t]}
    st = ft.setup(ft.Descent(1.0), model)
    ft.update_(st, model, {"p": torch.tensor([1.0, 2.0]), "q": [torch.tensor([10.0, 20.0])]})
    assert torch.equal(t, torch.tensor([-11.0, -22.0]))
    # one place None: only the other gradient
    ft.update_(st, model, {"p": None, "q": [torch.tensor([1.0, 1.0])]})
    assert torch.equal(t, torch.tensor([-12.0, -23.0]))


# --- mismatched gradients -----------------------------------------------------------------


def _model():
    return {"layer": {"w": torch.ones(2), "b": torch.zeros(1)}, "n": 3}


@pytest.mark.parametrize(
    "grads, where",
    [
        ({"layer": {"w": torch.ones(3)}}, "layer.w"),  # wrong shape
        ({"layer": {"w": "oops"}}, "layer.w"),  # wrong type at a leaf
        ({"layer": {"w": [1.0, 2.0]}}, "layer.w"),  # a list is not a tensor
        ({"layer": {"w": torch.ones(2), "zzz": torch.ones(1)}}, "layer"),  # extra key
        ({"layer": torch.ones(2)}, "layer"),  # a tensor where the model has a subtree
        ({"extra": torch.ones(2)}, "extra"),  # extra key at the root
    ],
)
def test_mismatched_gradient_raises_naming_the_path_and_changes_nothing(grads, where):
    model = _model()
    st = ft.setup(ft.Momentum(0.1), model)
    ft.update_(st, model, {"layer": {"w": torch.ones(2), "b": torch.ones(1)}})
    before_model = _snapshot(model)
    before_state = _states(st)
    with pytest.raises((ValueError, TypeError)) as err:
        ft.update_(st, model, grads)
    assert where in str(err.value)
    for (_, a), (_, b) in zip(_snapshot(model), before_model):
        assert torch.equal(a, b)
    assert _same_states(_states(st), before_state)


def test_mismatched_gradient_error_is_gradient_mismatch_error():
    model = _model()
    st = ft.setup(ft.Descent(), model)
    with pytest.raises(ft.GradientMismatchError, match="shape"):
        ft.update_(st, model, {"layer": {"w": torch.ones(5)}})


def test_mismatch_in_sequential_names_module_path():
    seq = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    st = ft.setup(ft.Descent(), seq)
    with pytest.raises(ft.GradientMismatchError, match=r"1\.weight"):
        ft.update_(st, seq, {"1": {"weight": torch.ones(2, 2)}})


# --- frozen -----------------------------------------------------------------------------


def test_frozen_subtree_is_untouched_and_thaw_resumes():
    net = Net()
    st = ft.setup(ft.Adam(0.1), net)
    ft.freeze_(st.enc)
    enc_before = [p.detach().clone() for p in net.enc.parameters()]
    dec_before = net.dec.weight.detach().clone()
    (g,) = ft.gradient(lambda m: m(torch.randn(3, 3)).sum(), net)
    ft.update_(st, net, g)
    for p, b in zip(net.enc.parameters(), enc_before):
        assert torch.equal(p.detach(), b)
    assert torch.equal(st.enc[0].weight.state[0], torch.zeros(4, 3))
    assert st.enc[0].weight.state[2] == (0.9, 0.999)
    assert st.enc[0].weight.frozen and not st.dec.weight.frozen
    assert not torch.equal(net.dec.weight.detach(), dec_before)

    ft.thaw_(st)
    assert not st.enc[0].weight.frozen
    ft.update_(st, net, g)
    assert not torch.equal(net.enc[0].weight.detach(), enc_before[0])


# --- adjust -----------------------------------------------------------------------------


def test_adjust_on_subtree_changes_only_that_subtree():
    net = Net()
    st = ft.setup(ft.Adam(0.1), net)
    ft.adjust_(st.dec, 0.01)
    assert st.dec.weight.rule.eta == 0.01 and st.dec.bias.rule.eta == 0.01
    assert st.enc[0].weight.rule.eta == 0.1


def test_adjust_keeps_stored_momenta_and_uses_new_eta():
    x = torch.zeros(1, dtype=torch.float64)
    st = ft.setup(ft.Momentum(0.1, 0.5), x)
    ft.update_(st, x, torch.ones(1, dtype=torch.float64))  # v = 0.1, x = -0.1
    ft.adjust_(st, lr=1.0)
    assert st.state.item() == pytest.approx(0.1)
    ft.update_(st, x, torch.ones(1, dtype=torch.float64))  # v = 0.05 + 1.0
    assert x.item() == pytest.approx(-0.1 - 1.05)


def test_adjust_by_hyperparameter_keyword():
    st = ft.setup(ft.Adam(), {"w": torch.zeros(1)})
    ft.adjust_(st, beta=(0.8, 0.99), epsilon=1e-6)
    assert st["w"].rule == ft.Adam(0.001, (0.8, 0.99), 1e-6)


@pytest.mark.parametrize("call", [ft.adjust_, ft.adjust])
def test_adjust_unknown_keyword_raises(call):
    st = ft.setup(ft.Momentum(), {"w": torch.zeros(1)})
    with pytest.raises((ValueError, TypeError), match="nosuch"):
        call(st, nosuch=1.0)
    assert st["w"].rule == ft.Momentum()


def test_adjust_keyword_known_to_one_rule_of_chain_is_accepted():
    st = ft.setup(ft.OptimiserChain(ft.ClipGrad(), ft.Descent()), torch.zeros(1))
    ft.adjust_(st, delta=1.0)
    assert st.rule.opts[0] == ft.ClipGrad(1.0) and st.rule.opts[1] == ft.Descent()


def test_adjust_rule_copy_and_lr_alias():
    r = ft.Adam(0.1)
    r2 = ft.adjust(r, lr=0.5)
    assert r2 == ft.Adam(0.5) and r == ft.Adam(0.1)
    assert ft.adjust(ft.Momentum(), 0.3) == ft.Momentum(0.3)


def test_adjust_to_negative_eta_raises():
    st = ft.setup(ft.Adam(), torch.zeros(1))
    with pytest.raises(ValueError, match="negative"):
        ft.adjust_(st, -0.1)
    assert st.rule == ft.Adam()


def test_adjust_cannot_switch_rmsprop_centred():
    st = ft.setup(ft.RMSProp(), torch.zeros(1))
    with pytest.raises(ValueError, match="centred"):
        ft.adjust_(st, centred=True)


# --- reset ------------------------------------------------------------------------------


def test_reset_zeroes_state_and_keeps_rules():
    model = {"a": torch.ones(2), "b": torch.ones(2)}
    rule = ft.OptimiserChain(ft.AccumGrad(2), ft.Adam(0.1))
    st = ft.setup(rule, model)
    ft.update_(st, model, {"a": torch.ones(2), "b": torch.ones(2)})
    ft.update_(st, model, {"a": torch.ones(2), "b": torch.ones(2)})
    ft.update_(st, model, {"a": torch.ones(2), "b": torch.ones(2)})
    (_, counter), (_, _, betas) = st["a"].state
    assert counter == 2 and betas != (0.9, 0.999)

    ft.reset_(st["a"])
    (acc, counter), (mt, _, betas) = st["a"].state
    assert counter == 1 and betas == (0.9, 0.999)
    assert torch.equal(acc, torch.zeros(2)) and torch.equal(mt, torch.zeros(2))
    assert st["a"].rule == rule
    # the other subtree keeps its state
    assert st["b"].state[0][1] == 2


def test_reset_restores_rprop_and_adagrad_initial_fill():
    st = ft.setup(ft.Rprop(0.01), torch.zeros(2))
    ft.update_(st, torch.zeros(2), torch.ones(2))
    ft.reset_(st)
    g, step = st.state
    assert torch.equal(g, torch.zeros(2)) and torch.equal(step, torch.full((2,), 0.01))
    st = ft.setup(ft.AdaGrad(epsilon=1e-3), torch.zeros(2))
    ft.update_(st, torch.zeros(2), torch.ones(2))
    ft.reset_(st)
    assert torch.equal(st.state, torch.full((2,), 1e-3))


def test_after_reset_updates_equal_a_fresh_setup():
    x1 = torch.tensor([1.0, 2.0])
    st1 = ft.setup(ft.Adam(0.1), x1)
    ft.update_(st1, x1, torch.tensor([5.0, -5.0]))
    ft.reset_(st1)
    x2 = x1.clone()
    st2 = ft.setup(ft.Adam(0.1), x2)
    ft.update_(st1, x1, torch.tensor([1.0, 3.0]))
    ft.update_(st2, x2, torch.tensor([1.0, 3.0]))
    assert torch.equal(x1, x2)


# --- construction -----------------------------------------------------------------------

ETA_RULES = [
    ft.Descent,
    ft.Momentum,
    ft.Nesterov,
    ft.RMSProp,
    ft.Rprop,
    ft.Adam,
    ft.RAdam,
    ft.AdaMax,
    ft.OAdam,
    ft.AdaGrad,
    ft.AMSGrad,
    ft.NAdam,
    ft.AdamW,
    ft.AdaBelief,
    ft.Lion,
]


@pytest.mark.parametrize("cls", ETA_RULES, ids=lambda c: c.__name__)
def test_negative_eta_raises_at_construction(cls):
    with pytest.raises(ValueError, match="negative"):
        cls(-0.1)
    with pytest.raises(ValueError, match="negative"):
        cls(eta=-1e-3)
    assert cls(0.0).eta == 0.0


@pytest.mark.parametrize("cls", ETA_RULES, ids=lambda c: c.__name__)
def test_non_number_eta_raises_type_error(cls):
    with pytest.raises(TypeError, match="eta"):
        cls("0.1")
    with pytest.raises(TypeError, match="eta"):
        cls(None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ft.Adam(0.1, 0.9),  # beta must be a pair
        lambda: ft.Adam(0.1, (0.9, "x")),
        lambda: ft.RMSProp(centred=1),
        lambda: ft.AdamW(couple="yes"),
        lambda: ft.ClipNorm(throw=None),
        lambda: ft.AccumGrad(2.5),
        lambda: ft.OptimiserChain(ft.Adam(), "descent"),
        lambda: ft.WeightDecay("1"),
    ],
)
def test_wrong_hyperparameter_types_raise_type_error(make):
    with pytest.raises(TypeError):
        make()


def test_other_invalid_hyperparameters_raise_value_error():
    with pytest.raises(ValueError):
        ft.AccumGrad(0)
    with pytest.raises(ValueError):
        ft.ClipGrad(-1.0)
    with pytest.raises(ValueError):
        ft.ClipNorm(-1.0)
    with pytest.raises(ValueError):
        ft.ClipNorm(scope="layer")
    with pytest.raises(ValueError):
        ft.Adam(float("nan"))


def test_first_field_is_positional_and_all_by_keyword():
    assert ft.Adam(0.01) == ft.Adam(eta=0.01)
    assert ft.Momentum(0.01, 0.9) == ft.Momentum(eta=0.01, rho=0.9)
    assert ft.WeightDecay(0.42).lambd == 0.42
    assert ft.AdamW(lambd=0.1, couple=False).couple is False
    assert ft.Rprop(ell=(0.4, 1.1)).ell == (0.4, 1.1)


def test_global_clipnorm_must_come_first_in_a_chain():
    with pytest.raises(ValueError, match="first"):
        ft.setup(ft.OptimiserChain(ft.Descent(), ft.ClipNorm(scope="global")), torch.zeros(1))


# --- dtypes -------------------------------------------------------------------------------

ALL_RULES = [cls() for cls in ETA_RULES] + [
    ft.AdaDelta(),
    ft.WeightDecay(),
    ft.SignDecay(),
    ft.ClipGrad(),
    ft.ClipNorm(),
    ft.OptimiserChain(ft.ClipNorm(), ft.WeightDecay(), ft.Adam()),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Momentum()),
    ft.RMSProp(centred=True),
]


def _tensor_dtypes(s):
    if isinstance(s, torch.Tensor):
        return [s.dtype]
    if isinstance(s, tuple):
        return [d for x in s for d in _tensor_dtypes(x)]
    return []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_parameter_and_state_dtype_are_kept(rule, dtype):
    x = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    st = ft.setup(rule, x)
    for _ in range(3):
        # a float32 gradient for a low-precision parameter is cast, not promoted
        ft.update_(st, x, torch.tensor([0.25, 0.5, -0.75]))
    assert x.dtype == dtype
    assert all(d == dtype for d in _tensor_dtypes(st.state))
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_update_follows_float64_within_dtype_resolution(dtype):
    x64 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x = x64.to(dtype)
    st64 = ft.setup(ft.Momentum(0.1, 0.9), x64)
    st = ft.setup(ft.Momentum(0.1, 0.9), x)
    g = torch.tensor([0.25, 0.5, -0.75], dtype=torch.float64)
    for _ in range(3):
        ft.update_(st64, x64, g)
        ft.update_(st, x, g.to(dtype))
    tol = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(x.double(), x64, rtol=tol, atol=tol)


def test_float16_epsilon_floor_matches_optimisers_jl():
    # Optimisers.jl test/rules.jl "Float16 epsilon" (issue #167): with Float16, epsilon 1e-8
    # would round to 0; _eps floors it at Float16(1e-7), so a tiny v gives a large finite step.
    x = torch.tensor([0.579, -0.729, 0.5493], dtype=torch.float16)
    dx = torch.tensor([-0.001497, 0.0001875, -0.013176], dtype=torch.float16)
    st = ft.setup(ft.Adam(1e-4), x)
    _, x2 = ft.update(st, x, dx)
    expected = torch.tensor([1.835, -0.886, 0.5493], dtype=torch.float16)
    torch.testing.assert_close(x2, expected, rtol=1e-3, atol=0)


def test_float16_epsilon_floor_in_rmsprop():
    # dx^2 underflows to 0 in float16, so the step is eta * dx / floor, not dx / 0.
    x = torch.zeros(1, dtype=torch.float16)
    st = ft.setup(ft.RMSProp(1e-3, epsilon=1e-8), x)
    ft.update_(st, x, torch.tensor([1e-4], dtype=torch.float16))
    floor = float(torch.tensor(1e-7, dtype=torch.float16))
    expected = -1e-3 * float(torch.tensor(1e-4, dtype=torch.float16)) / floor
    assert math.isfinite(x.item())
    assert x.item() == pytest.approx(expected, rel=2e-3)


def test_hyperparameters_are_cast_to_the_parameter_dtype():
    # Optimisers.jl computes in the parameter's type: T(eta) * dx, then x - that, each rounded
    # to T.  For float32 that is exactly NumPy's float32 arithmetic (no float64 detour).
    x = torch.tensor([1.0, -2.0, 0.3], dtype=torch.float32)
    g = torch.tensor([3.0, 0.7, -1.1], dtype=torch.float32)
    st = ft.setup(ft.Descent(0.1), x)
    ft.update_(st, x, g)
    eta = np.float32(0.1)
    expected = np.array([1.0, -2.0, 0.3], np.float32) - eta * np.array([3.0, 0.7, -1.1], np.float32)
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(x.numpy(), expected)
    # the same arithmetic in float64 differs: the float32 result is not a float64 one rounded
    x64 = np.array([1.0, -2.0, 0.3], np.float32).astype(np.float64) - 0.1 * np.array(
        [3.0, 0.7, -1.1], np.float32
    ).astype(np.float64)
    assert not np.array_equal(x64, x.numpy().astype(np.float64))
