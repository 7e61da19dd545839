"""ReduceLROnPlateau on scripted metric sequences: hand-derived values, and torch as reference."""

import math

import pytest
import torch

import fluxtrain as ft


def run(plateau, metrics):
    return [plateau.step(m) for m in metrics]


def test_min_mode_with_relative_threshold_hand_derived():
    p = ft.ReduceLROnPlateau(1.0, patience=2, factor=0.5, threshold=0.1)
    metrics = [10, 9, 8.5, 8.2, 8.0, 7.0, 7.0, 7.0, 7.0, 7.0]
    # 9 is not below 10 * 0.9; 8.5 is; 7.0 is below 8.5 * 0.9; then three bad steps > patience
    assert run(p, metrics) == [1, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.5]
    assert p.best == 7.0 and p.num_bad_steps == 1


def test_max_mode_with_absolute_threshold_cooldown_and_floor_hand_derived():
    p = ft.ReduceLROnPlateau(
        0.1, mode="max", threshold=0.01, threshold_mode="abs", patience=0, cooldown=1,
        factor=0.1, min_value=0.005,
    )  # fmt: skip
    got = run(p, [0.5, 0.505, 0.6, 0.6, 0.6, 0.6, 0.6])
    # 0.505 is not above 0.5 + 0.01: reduce to 0.01, cool down one step; 0.6 improves; the
    # next bad step reduces to max(0.001, 0.005); later reductions are stuck at the floor
    assert got == pytest.approx([0.1, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005])


def test_nan_metric_never_improves():
    p = ft.ReduceLROnPlateau(1.0, patience=1, factor=0.5)
    assert run(p, [1.0, math.nan, math.nan, math.nan]) == [1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="min", patience=2, factor=0.5),
        dict(mode="min", patience=1, factor=0.3, threshold=0.05, cooldown=2, min_value=1e-3),
        dict(mode="max", patience=3, factor=0.1, threshold=0.02, threshold_mode="abs"),
        dict(mode="max", patience=0, factor=0.5, cooldown=1),
    ],
)
def test_agrees_with_torch_reduce_lr_on_plateau(kw):
    g = torch.Generator().manual_seed(1)
    metrics = (torch.linspace(1, 0.3, 80) + 0.08 * torch.randn(80, generator=g)).tolist()
    if kw["mode"] == "max":
        metrics = [-m for m in metrics]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tkw = {k: v for k, v in kw.items() if k != "min_value"}
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=kw.get("min_value", 0), **tkw)
    ours = ft.ReduceLROnPlateau(0.1, **kw)
    expected = []
    for m in metrics:
        sched.step(m)
        expected.append(opt.param_groups[0]["lr"])
    got = run(ours, metrics)
    assert got == pytest.approx(expected, rel=1e-12)
    assert len(set(got)) > 1  # the script does trigger reductions


def test_drives_eta_in_an_optimiser_state_keeping_momenta():
    model = {"enc": torch.randn(3), "dec": torch.randn(2)}
    st = ft.setup(ft.Momentum(0.1), model)
    ft.update_(st, model, {"enc": torch.ones(3), "dec": torch.ones(2)})
    mom = st["enc"].state.clone()
    p = ft.ReduceLROnPlateau(opt_state=st, patience=0, factor=0.5)
    assert p.value == 0.1  # read from the state
    run(p, [1.0, 2.0])
    assert st["enc"].rule.eta == st["dec"].rule.eta == 0.05
    assert torch.equal(st["enc"].state, mom)


def test_explicit_value_is_applied_to_the_subtree_at_once():
    st = ft.setup(ft.OptimiserChain(ft.WeightDecay(), ft.Adam(0.1)), {"a": torch.zeros(2)})
    p = ft.ReduceLROnPlateau(0.02, opt_state=st["a"])
    assert st["a"].rule.opts[1].eta == 0.02 and p.value == 0.02


def test_other_hyperparameters_can_be_driven():
    st = ft.setup(ft.WeightDecay(0.1), torch.zeros(2))
    p = ft.ReduceLROnPlateau(opt_state=st, field="lambd", patience=0, factor=0.5)
    run(p, [1.0, 1.0])
    assert st.rule.lambd == 0.05


def test_reset_restores_the_starting_value_and_counters():
    st = ft.setup(ft.Descent(0.1), torch.zeros(2))
    p = ft.ReduceLROnPlateau(opt_state=st, patience=0, factor=0.5)
    run(p, [1.0, 1.0, 1.0])
    assert st.rule.eta == 0.025
    ft.reset_(p)
    assert p.value == 0.1 and st.rule.eta == 0.1 and p.best == math.inf
    assert p.num_bad_steps == 0 and p.nsteps == 0


def test_state_dict_round_trip_continues_identically():
    metrics = [1.0, 0.9, 0.95, 0.95, 0.94, 0.96, 0.8, 0.85, 0.85, 0.85]
    a = ft.ReduceLROnPlateau(1.0, patience=1, cooldown=1)
    run(a, metrics[:5])
    b = ft.ReduceLROnPlateau(1.0, patience=1, cooldown=1)
    b.load_state_dict(a.state_dict())
    assert run(a, metrics[5:]) == run(b, metrics[5:])


def test_accepts_a_scalar_tensor_metric():
    p = ft.ReduceLROnPlateau(1.0, patience=0)
    assert p.step(torch.tensor(1.0)) == 1.0 and p.best == 1.0


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: ft.ReduceLROnPlateau(0.1, mode="lowest"), ValueError, "mode"),
        (lambda: ft.ReduceLROnPlateau(0.1, threshold_mode="pct"), ValueError, "threshold_mode"),
        (lambda: ft.ReduceLROnPlateau(0.1, factor=1.0), ValueError, "factor"),
        (lambda: ft.ReduceLROnPlateau(0.1, patience=-1), ValueError, "patience"),
        (lambda: ft.ReduceLROnPlateau(), TypeError, "starting value"),
        (
            lambda: ft.ReduceLROnPlateau(opt_state=ft.setup(ft.AdaDelta(), torch.zeros(1))),
            ValueError,
            "no rule in opt_state has a hyperparameter 'eta'",
        ),
        (lambda: ft.ReduceLROnPlateau(0.1).step("low"), TypeError, "needs a number"),
        (lambda: ft.ReduceLROnPlateau(0.1).step(torch.ones(2)), TypeError, "needs a number"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_drives_a_fixed_field_of_a_scheduler_rule_and_keeps_its_schedules():
    rule = ft.Scheduler(ft.Momentum, eta=0.05, rho=ft.Exp(0.9, 1.0))
    st = ft.setup(rule, torch.zeros(2))
    p = ft.ReduceLROnPlateau(opt_state=st, patience=0, factor=0.5)
    assert p.value == 0.05
    run(p, [1.0, 1.0])
    assert st.rule == ft.Scheduler(ft.Momentum, eta=0.025, rho=ft.Exp(0.9, 1.0))
