"""The update engine gives the per-tensor reference maths, one kernel per group, and leaves the
user's tensors where they are."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fluxtrain as ft
from fluxtrain.optimisers import engine
from fluxtrain.optimisers.state import _collect

ALL_RULES = [
    ft.Descent(0.1),
    ft.Momentum(0.01, 0.9),
    ft.Nesterov(0.01),
    ft.RMSProp(0.01),
    ft.RMSProp(0.01, centred=True),
    ft.Rprop(0.01),
    ft.Adam(0.01),
    ft.RAdam(0.01),
    ft.AdaMax(0.01),
    ft.OAdam(0.01),
    ft.AdaGrad(0.1),
    ft.AdaDelta(),
    ft.AMSGrad(0.01),
    ft.NAdam(0.01),
    ft.AdamW(0.01, lambd=0.1),
    ft.AdamW(0.01, lambd=0.1, couple=False),
    ft.AdaBelief(0.01),
    ft.Lion(0.01),
    ft.OptimiserChain(ft.WeightDecay(0.1), ft.Adam(0.01)),
    ft.OptimiserChain(ft.SignDecay(0.1), ft.Descent(0.1)),
    ft.OptimiserChain(ft.ClipGrad(0.5), ft.Momentum(0.01)),
    ft.OptimiserChain(ft.ClipNorm(0.7), ft.Descent(0.1)),
    ft.OptimiserChain(ft.ClipNorm(0.7, 1.0), ft.Descent(0.1)),
    ft.OptimiserChain(ft.ClipNorm(0.7, scope="global"), ft.Adam(0.01)),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Adam(0.01)),
    ft.Scheduler(ft.Adam, ft.Exp(0.01, 0.9)),
    ft.Scheduler(ft.Momentum, eta=ft.Exp(0.01, 0.5), rho=0.8),
]


def make_model(dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "a": torch.randn(3, 4, generator=g, dtype=dtype),
        "b": torch.randn(4, generator=g, dtype=dtype),
        "c": {
            "d": torch.randn(2, 2, 2, generator=g, dtype=dtype),
            "e": torch.randn(5, generator=g, dtype=dtype),
        },
        "n": 3,
    }


def random_grads(model: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return ft.fmap(lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype), model)


def reference_update_(state, model, grads) -> None:
    """Each leaf's rule applied to that tensor alone: the maths of rules.py, no grouping."""
    engine.run_reference(_collect(state, model, grads, use_dot_grad=False))


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> None:
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) / scale <= rtol, (a, b)


def flat_tensors(tree) -> list[torch.Tensor]:
    return [t for _, t in ft.trainables(tree, path=True)]


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_every_rule_through_the_grouped_engine_equals_per_tensor_maths(rule):
    fused_model, ref_model = make_model(), make_model()
    fused_state, ref_state = ft.setup(rule, fused_model), ft.setup(rule, ref_model)
    for step in range(8):  # RAdam switches to its adaptive step at t = 5
        grads = random_grads(fused_model, seed=step)
        ft.update_(fused_state, fused_model, grads)
        reference_update_(ref_state, ref_model, grads)
    for a, b in zip(flat_tensors(fused_model), flat_tensors(ref_model)):
        assert_close_rel(a, b)
    # the state of each Leaf matches too
    for la, lb in zip(ft.leaves(fused_state), ft.leaves(ref_state)):
        sa = [s for s in engine.atoms(la.state) if isinstance(s, torch.Tensor)]
        sb = [s for s in engine.atoms(lb.state) if isinstance(s, torch.Tensor)]
        for x, y in zip(sa, sb):
            assert_close_rel(x, y)


class CountingSteps:
    """Records every group update the engine performs (one call = one kernel/maths pass),
    replayed steps included."""

    def __init__(self, monkeypatch):
        self.calls: list[engine.Group] = []
        original = engine._run_group

        def counting(g):
            self.calls.append(g)
            run = original(g)
            if run is None:
                return None

            def counted(dxs):  # the same group again, in a replayed step
                self.calls.append(g)
                return run(dxs)

            return counted

        monkeypatch.setattr(engine, "_run_group", counting)


def storages(tensors) -> list[int]:
    return [t.untyped_storage().data_ptr() for t in tensors]


def _run_both(fused_model, ref_model, fused_state, ref_state, steps=3):
    for step in range(steps):
        grads = random_grads(fused_model, seed=10 + step)
        ft.update_(fused_state, fused_model, grads)
        reference_update_(ref_state, ref_model, grads)
    for a, b in zip(flat_tensors(fused_model), flat_tensors(ref_model)):
        assert_close_rel(a, b)


def test_all_leaves_of_one_rule_are_updated_in_one_kernel(monkeypatch):
    counter = CountingSteps(monkeypatch)
    model = make_model()
    state = ft.setup(ft.Adam(0.01), model)
    ft.update_(state, model, random_grads(model, 0))
    assert len(counter.calls) == 1
    assert len(counter.calls[0].items) == 4


def test_freezing_half_the_model_still_updates_the_rest_in_one_kernel(monkeypatch):
    fused_model, ref_model = make_model(), make_model()
    fused_state, ref_state = (
        ft.setup(ft.Adam(0.01), fused_model),
        ft.setup(ft.Adam(0.01), ref_model),
    )
    ft.freeze_(fused_state["c"])
    ft.freeze_(ref_state["c"])
    frozen_before = copy.deepcopy(fused_model["c"])
    counter = CountingSteps(monkeypatch)
    _run_both(fused_model, ref_model, fused_state, ref_state)
    assert len(counter.calls) == 3  # one group per step: the unfrozen half
    assert all(len(g.items) == 2 for g in counter.calls)
    assert torch.equal(fused_model["c"]["d"], frozen_before["d"])
    assert torch.equal(fused_model["c"]["e"], frozen_before["e"])


def test_adjusting_one_subtree_gives_two_groups_matching_the_reference(monkeypatch):
    fused_model, ref_model = make_model(), make_model()
    fused_state, ref_state = (
        ft.setup(ft.Adam(0.01), fused_model),
        ft.setup(ft.Adam(0.01), ref_model),
    )
    _run_both(fused_model, ref_model, fused_state, ref_state, steps=2)
    ft.adjust_(fused_state["c"], 0.05)
    ft.adjust_(ref_state["c"], 0.05)
    counter = CountingSteps(monkeypatch)
    _run_both(fused_model, ref_model, fused_state, ref_state)
    assert len(counter.calls) == 6  # two groups per step
    assert sorted({g.rule.eta for g in counter.calls}) == [0.01, 0.05]


def test_mixed_float32_and_float64_leaves_form_one_group_per_dtype(monkeypatch):
    def mixed():
        m = make_model()
        m["c"] = ft.fmap(lambda t: t.float(), m["c"])
        return m

    fused_model, ref_model = mixed(), mixed()
    fused_state, ref_state = (
        ft.setup(ft.Adam(0.01), fused_model),
        ft.setup(ft.Adam(0.01), ref_model),
    )
    counter = CountingSteps(monkeypatch)
    _run_both(fused_model, ref_model, fused_state, ref_state)
    assert {g.items[0].x.dtype for g in counter.calls} == {torch.float32, torch.float64}
    assert len(counter.calls) == 6
    assert fused_model["c"]["d"].dtype == torch.float32


def test_a_scheduled_adam_uses_the_fused_kernel_with_the_scheduled_rate(monkeypatch):
    calls = []
    original = torch._fused_adam_

    def spy(*args, **kw):
        calls.append(kw["lr"])
        return original(*args, **kw)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    model = make_model()
    state = ft.setup(ft.Scheduler(ft.Adam, ft.Exp(0.01, 0.5)), model)
    for step in range(3):
        ft.update_(state, model, random_grads(model, step))
    assert calls == [0.01, 0.005, 0.0025]
    assert state["a"].state[0] == 4


def fused_sgd_calls(monkeypatch) -> list:
    calls = []
    original = torch._fused_sgd_

    def spy(*args, **kw):
        calls.append((kw["lr"], kw["dampening"], len(args[0])))
        return original(*args, **kw)

    monkeypatch.setattr(torch, "_fused_sgd_", spy)
    return calls


@pytest.mark.parametrize(
    "dtype, etas", [(torch.float32, (0.01, 0.02)), (torch.float64, (0.25, 0.125))]
)
def test_momentum_runs_in_torchs_fused_sgd_with_optimisers_jl_velocity(monkeypatch, dtype, etas):
    calls = fused_sgd_calls(monkeypatch)
    fused_model, ref_model = make_model(dtype), make_model(dtype)
    fused_state = ft.setup(ft.Momentum(etas[0], 0.9), fused_model)
    ref_state = ft.setup(ft.Momentum(etas[0], 0.9), ref_model)
    for step in range(3):
        grads = random_grads(fused_model, seed=step)
        ft.update_(fused_state, fused_model, grads)
        reference_update_(ref_state, ref_model, grads)
        if step == 1:  # adjust_ changes eta: the same kernel, a new dampening
            ft.adjust_(fused_state, eta=etas[1])
            ft.adjust_(ref_state, eta=etas[1])
    d0, d1 = 1.0 - etas[0], 1.0 - etas[1]
    assert calls == [(1.0, d0, 4), (1.0, d0, 4), (1.0, d1, 4)]
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for a, b in zip(flat_tensors(fused_model), flat_tensors(ref_model)):
        assert_close_rel(a, b, rtol)
    # the state is Optimisers.jl's velocity (eta included), not torch's buffer
    for la, lb in zip(ft.leaves(fused_state), ft.leaves(ref_state)):
        assert_close_rel(la.state, lb.state, rtol)


def test_float64_momentum_whose_rate_torch_cannot_reproduce_takes_the_rules_maths(monkeypatch):
    # 1 - (1 - 0.01) is 0.010000000000000009 in float64: torch's fused SGD would be off.
    calls = fused_sgd_calls(monkeypatch)
    model, ref = make_model(torch.float64), make_model(torch.float64)
    state, ref_state = ft.setup(ft.Momentum(0.01), model), ft.setup(ft.Momentum(0.01), ref)
    grads = random_grads(model, seed=0)
    ft.update_(state, model, grads)
    reference_update_(ref_state, ref, grads)
    assert calls == []
    for a, b in zip(flat_tensors(model), flat_tensors(ref)):
        assert torch.equal(a, b)


def test_adjusting_eta_keeps_every_parameters_storage():
    model = make_model()
    state = ft.setup(ft.Adam(0.01), model)
    ptr = model["a"].data_ptr()
    ft.update_(state, model, random_grads(model, 0))
    ft.adjust_(state, 0.001)
    ft.update_(state, model, random_grads(model, 1))
    assert model["a"].data_ptr() == ptr
    assert state["a"].rule.eta == 0.001


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_parameters_keep_their_own_storage_through_setup_and_updates(rule):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 4)).double()
    net[3].weight = net[2].weight  # tied
    params = list(net.parameters())
    ptrs = [p.data_ptr() for p in params]
    objs = [id(p) for p in params]
    state = ft.setup(rule, net)
    for _ in range(3):
        net.zero_grad()
        net(torch.randn(5, 3, dtype=torch.float64)).pow(2).sum().backward()
        ft.update_(state, net)
    after = list(net.parameters())
    assert [p.data_ptr() for p in after] == ptrs and [id(p) for p in after] == objs
    assert net[3].weight is net[2].weight
    # each parameter owns its storage: no two share one, none lives in a buffer of ours
    assert len(set(storages(after))) == len(after)
    for p in after:
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()


def test_dot_grad_path_equals_torch_adam_and_leaves_grads_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    ref = copy.deepcopy(net)
    state = ft.setup(ft.Adam(0.01), net)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(4):
        x = torch.randn(5, 3, dtype=torch.float64)
        for m in (net, ref):
            m.zero_grad(set_to_none=False)
            m(x).pow(2).sum().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        ft.update_(state, net)
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))
    for a, b in zip(net.parameters(), ref.parameters()):
        assert_close_rel(a, b, 1e-12)
    assert len(set(storages(p.grad for p in net.parameters()))) == 4


def test_a_parameter_given_new_storage_after_setup_is_updated_in_place():
    model = nn.Linear(3, 2).double()
    ref = copy.deepcopy(model)
    state, ref_state = ft.setup(ft.Momentum(0.1), model), ft.setup(ft.Momentum(0.1), ref)
    grads = {
        "weight": torch.ones(2, 3, dtype=torch.float64),
        "bias": torch.ones(2, dtype=torch.float64),
    }
    ft.update_(state, model, grads)
    reference_update_(ref_state, ref, grads)
    with torch.no_grad():
        model.weight.data = model.weight.data.clone()  # new storage, same Parameter
        model.weight.add_(1.0)
        ref.weight.add_(1.0)
    ft.update_(state, model, grads)
    reference_update_(ref_state, ref, grads)
    assert torch.allclose(model.weight, ref.weight) and torch.allclose(model.bias, ref.bias)


def test_a_none_gradient_branch_leaves_its_part_of_a_group_untouched():
    fused_model, ref_model = make_model(), make_model()
    fused_state, ref_state = (
        ft.setup(ft.Adam(0.01), fused_model),
        ft.setup(ft.Adam(0.01), ref_model),
    )
    _run_both(fused_model, ref_model, fused_state, ref_state, steps=1)
    before = fused_model["b"].clone()
    grads = random_grads(fused_model, 99)
    grads["b"] = None
    ft.update_(fused_state, fused_model, grads)
    reference_update_(ref_state, ref_model, grads)
    assert torch.equal(fused_model["b"], before)
    _run_both(fused_model, ref_model, fused_state, ref_state, steps=2)  # regrouped, still right


def test_clipnorm_per_array_inside_a_group_uses_each_arrays_norm():
    model = {"a": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Descent(1.0)), model)
    grads = {
        "a": torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64),
        "b": torch.tensor([0.3, 0.4], dtype=torch.float64),
    }
    ft.update_(state, model, grads)
    assert torch.allclose(model["a"], torch.tensor([-0.6, -0.8, 0.0], dtype=torch.float64))
    assert torch.allclose(model["b"], torch.tensor([-0.3, -0.4], dtype=torch.float64))


def test_failed_update_with_nonfinite_gradient_changes_nothing():
    model = make_model()
    state = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01)), model)
    ft.update_(state, model, random_grads(model, 0))
    before = copy.deepcopy((model, [leaf.state for leaf in ft.leaves(state)]))
    grads = random_grads(model, 1)
    grads["c"]["e"][0] = float("nan")
    with pytest.raises(ArithmeticError, match=r"c\.e"):
        ft.update_(state, model, grads)
    for a, b in zip(flat_tensors(model), flat_tensors(before[0])):
        assert torch.equal(a, b)
    for leaf, old in zip(ft.leaves(state), before[1]):
        for x, y in zip(engine.atoms(leaf.state), engine.atoms(old)):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
