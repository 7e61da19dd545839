"""ft.TorchOptimizer with torch alone: steps, param_groups, LR schedulers, state_dict."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

import fluxtrain as ft


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, generator=g), torch.randn(6, 2, generator=g)) for _ in range(n)]


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean()


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_step_equals_update_from_dot_grad_with_the_same_rule():
    a, b = _model(), _model()
    opt = ft.TorchOptimizer(a, ft.AdamW(0.01, lambd=0.1))
    st = ft.setup(ft.AdamW(0.01, lambd=0.1), b)
    for x, y in _batches(5):
        opt.zero_grad()
        _loss(a, x, y).backward()
        opt.step()
        b.zero_grad()
        _loss(b, x, y).backward()
        ft.update_(st, b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.opt_state[0].weight.state[0].abs().sum() > 0  # the tree holds Adam's momenta


def test_step_calls_the_closure_with_grad_enabled_and_returns_its_loss():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Descent(0.1))
    x, y = _batches(1)[0]
    before = _params(model)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_param_groups_are_the_sets_of_leaves_sharing_a_rule_with_lr_as_eta():
    model = _model()
    st = ft.setup(ft.Adam(0.01), model)
    ft.adjust_(st[2], 0.5)  # the last layer gets its own rule
    opt = ft.TorchOptimizer(model, st)
    assert len(opt.param_groups) == 2
    g0, g1 = opt.param_groups
    assert [p is q for p, q in zip(g0["params"], model[0].parameters())] == [True, True]
    assert [p is q for p, q in zip(g1["params"], model[2].parameters())] == [True, True]
    assert (g0["lr"], g1["lr"]) == (0.01, 0.5)
    assert g0["betas"] == (0.9, 0.999)
    assert opt.defaults == {"lr": 0.01, "betas": (0.9, 0.999)}


def test_writing_group_lr_and_betas_adjusts_the_leaves_and_keeps_momenta():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    x, y = _batches(1)[0]
    _loss(model, x, y).backward()
    opt.step()
    m_before = opt.opt_state[0].weight.state[0].clone()
    opt.param_groups[0]["lr"] = 0.25
    opt.param_groups[0]["betas"] = (0.8, 0.99)
    for leaf in ft.leaves(opt.opt_state):
        assert leaf.rule == ft.Adam(0.25, (0.8, 0.99))
    assert torch.equal(opt.opt_state[0].weight.state[0], m_before)
    # and the tree side is seen from torch's side
    ft.adjust_(opt.opt_state, 0.125)
    assert opt.param_groups[0]["lr"] == 0.125


def test_writing_lr_of_a_group_whose_rule_has_no_eta_names_the_rule():
    opt = ft.TorchOptimizer(_model(), ft.ClipNorm(1.0))
    assert "lr" not in opt.param_groups[0]
    with pytest.raises(KeyError, match=r"ClipNorm.*has no 'eta'"):
        opt.param_groups[0]["lr"] = 0.1


def _step_both(model, opt, sched, ref, ref_sched, x, y) -> None:
    """One step of fluxtrain's optimiser and its scheduler, and of the torch optimiser and its
    scheduler, which only carry the reference learning rates (their parameters get no gradients)."""
    opt.zero_grad()
    _loss(model, x, y).backward()
    opt.step()
    sched.step()
    ref.step()
    ref_sched.step()


def test_cosine_annealing_lr_gives_torchs_learning_rates_on_the_leaves():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Momentum(0.1, 0.9))
    ref = torch.optim.SGD(_model().parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.001)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=10, eta_min=0.001)
    seen = []
    for x, y in _batches(10):
        _step_both(model, opt, sched, ref, ref_sched, x, y)
        torch_lr = ref.param_groups[0]["lr"]
        etas = {leaf.rule.eta for leaf in ft.leaves(opt.opt_state)}
        assert etas == {torch_lr}  # exactly, not approximately
        assert sched.get_last_lr() == ref_sched.get_last_lr()
        seen.append(torch_lr)
    assert len(set(seen)) == 10 and seen[-1] == pytest.approx(0.001)


def test_onecycle_lr_cycles_adam_beta1_as_for_torch_adam():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    ref = torch.optim.Adam(_model().parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.1, total_steps=8)
    for x, y in _batches(7):
        _step_both(model, opt, sched, ref, ref_sched, x, y)
        leaf = opt.opt_state[0].weight
        assert leaf.rule.eta == ref.param_groups[0]["lr"]
        assert leaf.rule.beta == tuple(ref.param_groups[0]["betas"])
    assert opt.param_groups[0]["max_lr"] == 0.1  # the scheduler's own keys persist


def test_onecycle_lr_with_a_rule_without_beta_or_momentum_is_refused():
    opt = ft.TorchOptimizer(_model(), ft.Descent(0.1))
    with pytest.raises(ValueError, match="momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8, cycle_momentum=False)


def test_state_dict_round_trip_into_a_fresh_optimizer_gives_the_same_next_step():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.01, lambd=0.1)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    batches = _batches(4)
    for x, y in batches[:3]:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    twin = copy.deepcopy(model)
    fresh = ft.TorchOptimizer(twin, ft.Descent(1.0))  # another rule: the state dict brings its own
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.01 * 0.5**3
    assert fresh.param_groups[0]["initial_lr"] == 0.01
    for a, b in zip(ft.leaves(opt.opt_state), ft.leaves(fresh.opt_state)):
        assert a.rule == b.rule

    x, y = batches[3]
    for m, o in ((model, opt), (twin, fresh)):
        o.zero_grad()
        _loss(m, x, y).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_state_dict_is_plain_data_and_numbers_parameters_in_tree_order():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam())
    sd = opt.state_dict()
    allowed = (dict, list, str, int, float, bool, torch.Tensor, type(None))

    def check(v):
        assert isinstance(v, allowed), type(v)
        if isinstance(v, dict):
            for k, w in v.items():
                assert isinstance(k, (str, int))
                check(w)
        elif isinstance(v, list):
            for w in v:
                check(w)

    check(sd)
    assert [sd["state"][i]["path"] for i in range(4)] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    ]
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]


def test_load_state_dict_keeps_the_group_dicts_and_their_scheduler_keys():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    sd = opt.state_dict()
    group = opt.param_groups[0]
    group["initial_lr"] = 123.0
    group["stray"] = 1
    opt.load_state_dict(sd)
    assert opt.param_groups[0] is group
    assert group["initial_lr"] == 0.01 and "stray" not in group


def test_load_state_dict_of_a_torch_optimizer_is_a_clear_error():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam())
    with pytest.raises(ValueError, match="not made by TorchOptimizer"):
        opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


def test_load_state_dict_of_another_model_names_the_parameter():
    opt = ft.TorchOptimizer(_model(), ft.Adam())
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"'1.weight' but here it is '2.weight'"):
        opt.load_state_dict(ft.TorchOptimizer(other, ft.Adam()).state_dict())
    small = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"covers 2 parameter\(s\) but this optimiser has 4"):
        opt.load_state_dict(ft.TorchOptimizer(small, ft.Adam()).state_dict())


def test_adjust_of_a_subtree_splits_the_group_with_a_warning_and_merging_back_reuses_it():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    group = opt.param_groups[0]
    group["initial_lr"] = 0.01
    ft.adjust_(opt.opt_state[2], 0.5)
    with pytest.warns(UserWarning, match="changed from 1 to 2"):
        groups = list(opt.param_groups)
    assert [g["lr"] for g in groups] == [0.01, 0.5]
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert groups[1]["initial_lr"] == 0.01  # inherited from the group it split from
    ft.adjust_(opt.opt_state[2], 0.01)
    with pytest.warns(UserWarning, match="changed from 2 to 1"):
        assert len(opt.param_groups) == 1
    assert opt.param_groups[0] is not group  # a merged group is a new dict
    assert opt.param_groups[0]["initial_lr"] == 0.01


def test_freeze_keeps_the_groups_and_step_skips_frozen_leaves():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.01))
    group = opt.param_groups[0]
    ft.freeze_(opt.opt_state[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert opt.param_groups == [group]
    before = _params(model)
    x, y = _batches(1)[0]
    _loss(model, x, y).backward()
    opt.step()
    after = list(model.parameters())
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.equal(before[2], after[2])


def test_zero_grad_clears_to_none_or_to_zeros():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam())
    _loss(model, *_batches(1)[0]).backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_train_and_eval_do_nothing_and_add_param_group_is_refused():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam())
    before = opt.state_dict()["param_groups"]
    assert opt.train() is None and opt.eval() is None
    assert opt.state_dict()["param_groups"] == before
    with pytest.raises(TypeError, match="parameters come from the state tree"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})
    with pytest.raises(AttributeError, match="cannot be replaced"):
        opt.param_groups = []


def test_a_model_without_parameters_or_a_non_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="no trainable parameters"):
        ft.TorchOptimizer(torch.nn.ReLU(), ft.Adam())
    with pytest.raises(TypeError, match="needs a rule"):
        ft.TorchOptimizer(_model(), "adam")


def test_a_deep_copy_is_an_independent_optimizer_over_the_copied_model():
    model = _model()
    opt = ft.TorchOptimizer(model, ft.Adam(0.1))
    twin = copy.deepcopy(opt)
    twin.param_groups[0]["lr"] = 0.5
    assert opt.opt_state[0].weight.rule.eta == 0.1
    assert twin.opt_state[0].weight.rule.eta == 0.5
    assert twin.model is not model and twin.param_groups[0]["params"][0] is twin.model[0].weight


def test_state_dict_carries_frozen_flags_and_split_groups_into_a_fresh_optimizer():
    model = _model()
    st = ft.setup(ft.Momentum(0.1), model)
    ft.adjust_(st[2], 0.5)
    ft.freeze_(st[0].bias)
    opt = ft.TorchOptimizer(model, st)
    fresh = ft.TorchOptimizer(copy.deepcopy(model), ft.Momentum(0.1))
    with pytest.warns(UserWarning, match="changed from 1 to 2"):
        fresh.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in fresh.param_groups] == [0.1, 0.5]
    assert [leaf.frozen for leaf in ft.leaves(fresh.opt_state)] == [False, True, False, False]
