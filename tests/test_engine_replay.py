"""The engine's replay of a ``.grad`` step: later steps run the recorded kernels on the new
gradients, with the same numbers as the full path, and anything that changed in between
(``adjust_``, ``freeze_``, a reset or replaced parameter, a missing gradient...) sends the step
back through the full path, which checks everything."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import fluxtrain as ft
from fluxtrain.optimisers import engine
from fluxtrain.optimisers.engine import ShapeChangedError
from fluxtrain.optimisers.rules import NonFiniteGradientError
from fluxtrain.optimisers.state import _collect

RULES = [
    ft.Adam(0.01),  # torch's fused Adam
    ft.Momentum(0.01, 0.9),  # torch's fused SGD
    ft.Nesterov(0.01),  # compiled
    ft.NAdam(0.01),  # compiled, with scalars in the state
    ft.Scheduler(ft.Momentum, eta=ft.Exp(0.01, 0.5)),  # fused, at the scheduled rate
    ft.Scheduler(ft.NAdam, ft.Exp(0.01, 0.9)),  # compiled, scheduled hyperparameters
    ft.OptimiserChain(ft.WeightDecay(0.1), ft.Lion(0.01)),
]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)).double()


def set_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def reference_step(state, model) -> None:
    """Each leaf's rule on its parameter's ``.grad`` alone (rules.py's maths, no engine)."""
    works = _collect(state, model, None, use_dot_grad=True)
    engine.run_reference(
        [engine.Work(w.leaf, w.x, [w.x.grad], w.path) for w in works if w.x.grad is not None]
    )


class FullSteps:
    """Counts the steps that went through the engine's full path (walk, checks, grouping)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = engine.step

        def counting(*args, **kw):
            self.count += 1
            return original(*args, **kw)

        monkeypatch.setattr(engine, "step", counting)


def assert_same(a: nn.Module, b: nn.Module, rtol: float = 1e-12) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-14, msg=name)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_replayed_steps_equal_the_per_tensor_reference(rule, compile_everything, monkeypatch):
    full = FullSteps(monkeypatch)
    fast, ref = net(), net()
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(copy.deepcopy(rule), ref)
    for step in range(5):
        set_grads(fast, step)
        set_grads(ref, step)
        ft.update_(s_fast, fast)
        reference_step(s_ref, ref)
    assert full.count == 1  # steps 2 to 5 were replays
    assert_same(fast, ref)
    for a, b in zip(ft.leaves(s_fast), ft.leaves(s_ref)):
        for x, y in zip(engine.atoms(a.state), engine.atoms(b.state)):
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
            elif y is not None:
                assert x == pytest.approx(y, rel=1e-12)
            else:
                assert x is None


def changes():
    """What a user may do between two steps, applied to a model and its state alike."""

    def replace_weight(m, s):
        m[0].weight = nn.Parameter(m[0].weight.detach().clone())
        m[0].weight.grad = torch.ones_like(m[0].weight)

    def new_memory(m, s):
        m[2].weight.data = m[2].weight.data.clone()

    return {
        "adjust_": lambda m, s: ft.adjust_(s, 0.5),
        "freeze_": lambda m, s: ft.freeze_(s[0]),
        "reset_": lambda m, s: ft.reset_(s[2]),
        "replaced parameter": replace_weight,
        "new memory": new_memory,
        "a missing .grad": lambda m, s: setattr(m[1].bias, "grad", None),
        "a transposed .grad": lambda m, s: setattr(
            m[0].weight, "grad", m[0].weight.grad.t().contiguous().t()
        ),
    }


@pytest.mark.parametrize("change", list(changes()))
@pytest.mark.parametrize("rule", [ft.Momentum(0.01, 0.9), ft.NAdam(0.01)], ids=repr)
def test_a_change_between_steps_takes_the_full_path(rule, change, compile_everything, monkeypatch):
    full = FullSteps(monkeypatch)
    fast, ref = net(), net()
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    for step in range(4):
        set_grads(fast, step)
        set_grads(ref, step)
        if step == 2:
            changes()[change](fast, s_fast)
            changes()[change](ref, s_ref)
        ft.update_(s_fast, fast)
        reference_step(s_ref, ref)
    assert_same(fast, ref)
    if change == "a missing .grad":
        assert full.count == 3  # the first step, the one without it, the one with it again
    elif change != "reset_":  # (Momentum's reset_ zeroes its velocity in place: replays fit)
        assert full.count == 2  # the first step, and the one after the change


def test_thawing_a_leaf_frozen_at_the_recorded_step_takes_the_full_path(monkeypatch):
    full = FullSteps(monkeypatch)
    fast, ref = net(), net()
    s_fast, s_ref = ft.setup(ft.Adam(0.01), fast), ft.setup(ft.Adam(0.01), ref)
    ft.freeze_(s_fast[0])
    ft.freeze_(s_ref[0])
    for step in range(3):
        set_grads(fast, step)
        set_grads(ref, step)
        if step == 1:
            ft.thaw_(s_fast)
            ft.thaw_(s_ref)
        ft.update_(s_fast, fast)
        reference_step(s_ref, ref)
    assert full.count == 2
    assert_same(fast, ref)
    # beta1^(t+1) after the two steps since thawing (the powers start at beta)
    assert s_fast[0]["weight"].state[2][0] == pytest.approx(0.9**3)


def test_a_resized_parameter_after_replays_is_refused_by_name(monkeypatch):
    model = net()
    state = ft.setup(ft.Momentum(0.01, 0.9), model)
    for step in range(3):
        set_grads(model, step)
        ft.update_(state, model)
    before = [p.detach().clone() for p in model.parameters()]
    model[2].weight.data = torch.zeros(3, 9, dtype=torch.float64)  # new memory, new shape
    model[2].weight.grad = torch.ones(3, 9, dtype=torch.float64)
    with pytest.raises(ShapeChangedError, match=r"\[2\]\.weight|2\.weight"):
        ft.update_(state, model)
    for p, q in zip(list(model.parameters())[:-2], before[:-2]):
        assert torch.equal(p, q)  # nothing was updated


def test_check_finite_on_a_replay_names_the_gradient_and_changes_nothing(compile_everything):
    model = net()
    state = ft.setup(ft.Nesterov(0.01), model)
    for step in range(2):
        set_grads(model, step)
        ft.update_(state, model, check_finite=True)
    before = [p.detach().clone() for p in model.parameters()]
    velocity = [leaf.state.clone() for leaf in ft.leaves(state)]
    set_grads(model, 3)
    model[1].bias.grad[2] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"1.*bias"):
        ft.update_(state, model, check_finite=True)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    for leaf, v in zip(ft.leaves(state), velocity):
        assert torch.equal(leaf.state, v)


@pytest.mark.parametrize("rule", [ft.Momentum(0.01, 0.9), ft.Nesterov(0.01)], ids=repr)
def test_a_replay_keeps_no_gradient_alive(rule, compile_everything):
    model = net()
    state = ft.setup(rule, model)
    for step in range(3):
        set_grads(model, step)
        ft.update_(state, model)
    grads = [weakref.ref(p.grad) for p in model.parameters()]
    for p in model.parameters():
        p.grad = None  # zero_grad(set_to_none=True)
    gc.collect()
    assert all(g() is None for g in grads)


def test_replayed_parameters_report_the_change_to_autograd(compile_everything):
    model = net()
    state = ft.setup(ft.Nesterov(0.01), model)
    set_grads(model, 0)
    ft.update_(state, model)  # the full path
    x = torch.randn(2, 4, dtype=torch.float64)
    loss = model(x).pow(2).sum()  # saves the weights for backward
    set_grads(model, 1)
    ft.update_(state, model)  # a replay changes them in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_adam_whose_beta_power_underflowed_to_zero_keeps_training():
    # beta1 = 0.5: 0.5^t is 0.0 in float64 from t = 1075 on, which has no step count for
    # torch's fused kernel; the rule's own maths takes over.
    fast, ref = net(), net()
    rule = ft.Adam(0.01, (0.5, 0.999))
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    for s in (s_fast, s_ref):
        for leaf in ft.leaves(s):
            leaf.state = (leaf.state[0], leaf.state[1], (0.0, 0.999**1100))
    for step in range(2):
        set_grads(fast, step)
        set_grads(ref, step)
        ft.update_(s_fast, fast)
        reference_step(s_ref, ref)
    assert_same(fast, ref)


def grad_tree(model: nn.Module, seed: int, dtype=None):
    """The gradient tree ``ft.gradient`` would give, holding seeded random values."""
    set_grads(model, seed)
    consts = {p: p.grad.clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = None
    tree = ft.gradient(lambda m: sum((p * consts[p]).sum() for p in m.parameters()), model)[0]
    return tree if dtype is None else ft.fmap(lambda t: t.to(dtype), tree)


def plain(tree):
    """A gradient tree as plain nested dicts (which update_ accepts too), to edit."""
    if isinstance(tree, torch.Tensor) or tree is None:
        return tree
    return {k: plain(v) for k, v in tree._children.items()}


@pytest.mark.parametrize("rule", [ft.Adam(0.01), ft.Nesterov(0.01)], ids=repr)
def test_gradient_tree_steps_are_replayed_with_the_same_numbers(
    rule, compile_everything, monkeypatch
):
    full = FullSteps(monkeypatch)
    fast, ref = net(), net()
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    for step in range(4):
        ft.update_(s_fast, fast, grad_tree(fast, step))
        set_grads(ref, step)
        reference_step(s_ref, ref)
    assert full.count == 1
    assert_same(fast, ref)


def test_a_gradient_tree_that_no_longer_fits_takes_the_full_path(compile_everything, monkeypatch):
    full = FullSteps(monkeypatch)
    fast, ref = net(), net()
    s_fast, s_ref = ft.setup(ft.Nesterov(0.01), fast), ft.setup(ft.Nesterov(0.01), ref)
    for step in range(2):
        ft.update_(s_fast, fast, grad_tree(fast, step))
        set_grads(ref, step)
        reference_step(s_ref, ref)
    # a float32 tree for the float64 model: converted, so every such step is a full one
    for step in (2, 3):
        ft.update_(s_fast, fast, grad_tree(fast, step, torch.float32))
        set_grads(ref, step)
        for p in ref.parameters():
            p.grad = p.grad.float().double()
        reference_step(s_ref, ref)
    assert full.count == 3
    # a branch left out: that layer keeps its parameters, the others are updated
    pruned = plain(grad_tree(fast, 4))
    pruned["1"]["bias"] = None
    before = fast[1].bias.detach().clone()
    ft.update_(s_fast, fast, pruned)
    assert torch.equal(fast[1].bias, before)
    assert full.count == 4
    # plain dicts with the same keys are replayed too
    ft.update_(s_fast, fast, plain(grad_tree(fast, 5)))
    ft.update_(s_fast, fast, plain(grad_tree(fast, 6)))
    assert full.count == 5
    # a gradient of the wrong shape, or a child the model does not have, is refused by name
    wrong = plain(grad_tree(fast, 7))
    wrong["2"]["weight"] = torch.zeros(3, 7, dtype=torch.float64)
    with pytest.raises(ft.GradientMismatchError, match=r"2\.weight has shape \(3, 7\)"):
        ft.update_(s_fast, fast, wrong)
    bad = plain(grad_tree(fast, 6))
    bad["0"]["extra"] = torch.zeros(1)
    with pytest.raises(ft.GradientMismatchError, match="extra"):
        ft.update_(s_fast, fast, bad)
