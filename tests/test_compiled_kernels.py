"""The compiled kernels run each rule's own maths: same numbers as the per-tensor reference,
no recompilation when hyperparameters change, and an eager fallback when compiling fails."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fluxtrain as ft
from fluxtrain.optimisers import compiled, engine
from fluxtrain.optimisers.state import _collect

RULES = [
    ft.Descent(0.1),
    ft.Momentum(0.01, 0.0),  # rho = 0: compiled (with rho != 0, torch's fused SGD runs it)
    ft.Nesterov(0.01),
    ft.RMSProp(0.01),
    ft.RMSProp(0.01, centred=True),
    ft.Rprop(0.01),
    ft.AdaMax(0.01),
    ft.OAdam(0.01),
    ft.AdaDelta(),
    ft.AMSGrad(0.01),
    ft.NAdam(0.01),
    ft.AdamW(0.01, lambd=0.1, couple=False),
    ft.AdaBelief(0.01),
    ft.Lion(0.01),
    ft.OptimiserChain(ft.WeightDecay(0.1), ft.ClipGrad(0.5), ft.Momentum(0.01)),
    ft.OptimiserChain(ft.SignDecay(0.01), ft.Descent(0.1)),
    ft.Scheduler(ft.NAdam, ft.Exp(0.01, 0.9)),
]


def model(dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(3)
    shapes = {"w": (10, 10), "v": (80,), "b": (7,), "c": (5, 1)}
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}


def grads(m: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in m.items()}


def train_against_reference(rule, steps: int) -> None:
    """Update a model with ``rule`` for ``steps`` steps through the engine and the per-tensor
    reference side by side, and require the same parameters."""
    fast, ref = model(), model()
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    for step in range(steps):
        g = grads(fast, step)
        ft.update_(s_fast, fast, g)
        engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-12, atol=1e-12)


def count_compiled_groups(monkeypatch) -> list[bool]:
    """One entry per group update: ``True`` if a compiled kernel ran it (a runner prepared
    once runs again on every replayed step)."""
    ran: list[bool] = []
    original = compiled.runner

    def spy(g):
        run = original(g)
        if run is None:
            ran.append(False)
            return None

        def counted(dxs):
            ran.append(True)
            return run(dxs)

        return counted

    monkeypatch.setattr(compiled, "runner", spy)
    return ran


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_compiled_kernels_equal_the_per_tensor_reference(rule, compile_everything, monkeypatch):
    fast, ref = model(), model()
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    ptrs = {k: t.data_ptr() for k, t in fast.items()}
    ran = count_compiled_groups(monkeypatch)
    for step in range(6):
        g = grads(fast, step)
        ft.update_(s_fast, fast, g)
        engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    assert ran == [True] * 6  # every step went through the compiled kernel
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-6, atol=1e-12)
        assert fast[k].data_ptr() == ptrs[k]
    for a, b in zip(ft.leaves(s_fast), ft.leaves(s_ref)):
        for x, y in zip(engine.atoms(a.state), engine.atoms(b.state)):
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-12)
            elif x is None:
                assert y is None
            else:
                assert x == pytest.approx(y, rel=1e-12)


def test_adjust_and_schedules_cause_no_recompilation(compile_everything):
    m = model(torch.float32)
    state = ft.setup(ft.OptimiserChain(ft.WeightDecay(1e-3), ft.NAdam(0.01)), m)
    ft.update_(state, m, grads(m, 0))  # compiles (or reuses) the kernel
    sched_model = model(torch.float32)
    sched = ft.setup(ft.Scheduler(ft.Lion, eta=ft.Exp(1e-3, 0.5)), sched_model)
    ft.update_(sched, sched_model, grads(sched_model, 0))
    n = compiled.compile_count()
    for step in range(1, 6):
        ft.adjust_(state, eta=0.01 / step, beta=(0.8, 0.99 - step / 100))
        ft.adjust_(state["w"], lambd=step * 1e-3)  # two groups now, same structure
        ft.update_(state, m, grads(m, step))
        ft.update_(sched, sched_model, grads(sched_model, step))
    assert compiled.compile_count() == n
    assert sched["w"].state[0] == 7


def test_a_rule_that_fails_to_compile_warns_once_and_runs_eagerly(compile_everything, monkeypatch):
    class Broken:
        def __init__(self, *args):
            pass

        def prepare(self, *args):
            raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(compiled, "_kernels", {})
    monkeypatch.setattr(compiled, "_failed", set())
    monkeypatch.setattr(compiled, "_Kernel", Broken)
    fast, ref = model(), model()
    rule = ft.AdaBelief(0.01)
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        ft.update_(s_fast, fast, grads(fast, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.update_(s_fast, fast, grads(fast, 1))
    for step in range(2):
        engine.run_reference(_collect(s_ref, ref, grads(ref, step), use_dot_grad=False))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-12, atol=0)


def test_small_groups_are_not_compiled_by_default():
    m = model()
    n = compiled.compile_count()
    state = ft.setup(ft.NAdam(), m)
    ft.update_(state, m, grads(m, 0))
    assert compiled.compile_count() == n
    assert compiled.configure()["min_numel"] >= 1 << 16


def test_the_kernel_for_float32_parameters_matches_the_eager_maths(compile_everything):
    fast, ref = model(torch.float32), model(torch.float32)
    rule = ft.NAdam(0.01)
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(copy.deepcopy(rule), ref)
    for step in range(4):
        g = grads(fast, step)
        ft.update_(s_fast, fast, g)
        engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=2e-6, atol=1e-7)


def test_new_storage_or_a_reset_state_after_a_compiled_step_is_followed(compile_everything):
    fast, ref = model(), model()
    rule = ft.Nesterov(0.1)
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    g = grads(fast, 0)
    ft.update_(s_fast, fast, g)
    engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    # the user gives a parameter new memory, and resets one leaf's momentum
    fast["w"].data = fast["w"].data.clone()
    ref["w"].data = ref["w"].data.clone()
    ft.reset_(s_fast["v"])
    ft.reset_(s_ref["v"])
    for step in (1, 2):
        g = grads(fast, step)
        ft.update_(s_fast, fast, g)
        engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-12, atol=1e-12)


def test_kernels_are_compiled_on_large_stand_ins_then_called_without_dynamo(
    compile_everything, monkeypatch
):
    monkeypatch.setattr(compiled, "_kernels", {})
    seen: list[list[int]] = []
    original = compiled._Kernel._through_dynamo

    def spy(self, args):
        seen.append([a.numel() for a in args[self._start :]])
        return original(self, args)

    monkeypatch.setattr(compiled._Kernel, "_through_dynamo", spy)
    train_against_reference(ft.NAdam(0.01), steps=4)
    # one compiling call, on stand-ins of one large length (so that every loop is compiled to
    # run on all threads, whatever the sizes of the model that came first); then direct calls
    assert len(seen) == 1
    assert set(seen[0]) == {compiled._COMPILE_LENGTH}


def test_one_element_parameters_and_shared_gradient_tensors_in_a_compiled_group(
    compile_everything,
):
    def make():
        g = torch.Generator().manual_seed(5)
        shapes = {"w": (6, 4), "t": (1,), "s": (), "v": (24,)}
        return {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}

    fast, ref = make(), make()
    rule = ft.OptimiserChain(ft.WeightDecay(0.01), ft.Adam(0.05))
    s_fast, s_ref = ft.setup(rule, fast), ft.setup(rule, ref)
    for step in range(3):
        shared = torch.full((24,), 0.3 + step, dtype=torch.float64)
        g = {"w": shared.view(6, 4), "t": torch.ones(1, dtype=torch.float64),
             "s": torch.tensor(2.0, dtype=torch.float64), "v": shared}  # fmt: skip
        ft.update_(s_fast, fast, g)
        engine.run_reference(_collect(s_ref, ref, g, use_dot_grad=False))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-12, atol=1e-12)


def test_a_compiled_step_marks_the_parameters_modified_for_autograd(compile_everything):
    w = torch.nn.Parameter(torch.randn(300, dtype=torch.float64))
    model = {"w": w}
    state = ft.setup(ft.NAdam(0.01), model)
    loss = (w * w).sum()  # saves w for the backward pass
    version = w._version
    ft.update_(state, model, {"w": torch.ones_like(w)})
    assert w._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_scalar_maths_is_computed_once_outside_the_element_loops(compile_everything, monkeypatch):
    monkeypatch.setattr(compiled, "_kernels", {})
    splits = []
    original = compiled._split_scalars

    def spy(gm):
        splits.append(original(gm))
        return splits[-1]

    monkeypatch.setattr(compiled, "_split_scalars", spy)
    train_against_reference(ft.NAdam(0.01), steps=3)
    assert len(splits) == 1 and splits[0] is not None
    main, scalars, _ = splits[0]

    def divisions(gm):
        return [n for n in gm.graph.nodes if "div" in str(n.target)]

    # NAdam's bias corrections (b1 / (1 - b1 * b1t), ...) went to the scalar graph; what stays
    # in the element loops divides only the moment by its denominator, once per parameter.
    assert len(divisions(scalars)) >= 3
    assert len(divisions(main)) == compiled.configure()["chunk"]
