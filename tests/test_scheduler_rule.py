"""The ``Scheduler`` rule: hyperparameters following schedules, counter in the optimiser state."""

import copy

import pytest
import torch

import fluxtrain as ft


def test_descent_update_is_gradient_times_schedule_value():
    s = ft.Exp(0.1, 0.5)
    x = torch.randn(5, dtype=torch.float64)
    st = ft.setup(ft.Scheduler(ft.Descent, s), x)
    for t in range(1, 8):
        g = torch.randn(5, dtype=torch.float64)
        before = x.clone()
        ft.update_(st, x, g)
        torch.testing.assert_close(before - x, g * (0.1 * 0.5 ** (t - 1)), rtol=1e-12, atol=0)
        assert st.state[0] == t + 1


def test_scheduled_momentum_equals_momentum_adjusted_by_hand():
    eta, rho = ft.CosAnneal(l0=0.01, l1=0.1, period=5), ft.Exp(0.9, 0.99)
    x1 = torch.randn(3, 4)
    x2 = x1.clone()
    st1 = ft.setup(ft.Scheduler(ft.Momentum, eta, rho), x1)
    st2 = ft.setup(ft.Momentum(), x2)
    for t in range(1, 12):
        g = torch.randn(3, 4)
        ft.update_(st1, x1, g)
        ft.adjust_(st2, eta=eta(t), rho=rho(t))
        ft.update_(st2, x2, g)
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    torch.testing.assert_close(st1.state[1], st2.state, rtol=0, atol=0)


def test_frozen_leaf_counter_does_not_advance():
    model = {"a": torch.zeros(2), "b": torch.zeros(2)}
    st = ft.setup(ft.Scheduler(ft.Descent, ft.Exp(1.0, 0.5)), model)
    ft.freeze_(st["a"])
    g = {"a": torch.ones(2), "b": torch.ones(2)}
    for _ in range(3):
        ft.update_(st, model, g)
    assert st["a"].state[0] == 1 and st["b"].state[0] == 4
    assert torch.equal(model["a"], torch.zeros(2))
    ft.thaw_(st)
    ft.update_(st, model, g)
    # a takes its first step (eta = 1.0), b its fourth (eta = 0.125)
    assert torch.equal(model["a"], torch.full((2,), -1.0))
    torch.testing.assert_close(model["b"], torch.full((2,), -(1 + 0.5 + 0.25 + 0.125)))
    assert st["a"].state[0] == 2 and st["b"].state[0] == 5


def test_leaf_without_gradient_keeps_its_counter():
    model = {"a": torch.zeros(2), "b": torch.zeros(2)}
    st = ft.setup(ft.Scheduler(ft.Descent, ft.Exp(1.0, 0.5)), model)
    ft.update_(st, model, {"a": None, "b": torch.ones(2)})
    assert st["a"].state[0] == 1 and st["b"].state[0] == 2


def test_usable_inside_optimiser_chain():
    rule = ft.OptimiserChain(ft.ClipGrad(0.5), ft.Scheduler(ft.Descent, ft.Step(1.0, 0.1, 2)))
    x = torch.zeros(3)
    st = ft.setup(rule, x)
    g = torch.tensor([2.0, -0.2, 0.1])
    total = torch.zeros(3)
    for t in range(1, 6):
        ft.update_(st, x, g)
        total += g.clamp(-0.5, 0.5) * (1.0 * 0.1 ** ((t - 1) // 2))
    torch.testing.assert_close(x, -total)
    assert st.state[1][0] == 6


def test_rule_is_hashable_and_equal_by_value():
    a = ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5))
    b = ft.Scheduler(ft.Descent, eta=ft.Exp(0.1, 0.5))
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.6))
    # keyword order does not matter: fields are kept in the rule's order
    m1 = ft.Scheduler(ft.Momentum, eta=ft.Exp(0.1, 0.5), rho=0.8)
    m2 = ft.Scheduler(ft.Momentum, rho=0.8, eta=ft.Exp(0.1, 0.5))
    assert m1 == m2 and repr(m1) == "Scheduler(Momentum, eta=Exp(start=0.1, decay=0.5), rho=0.8)"
    assert copy.deepcopy(a) == a


def test_apply_on_a_flat_buffer_equals_apply_per_parameter():
    # the fused engine hands one flat buffer holding many parameters to a single apply call
    rule = ft.Scheduler(ft.Adam, eta=ft.Exp(0.01, 0.9), beta=(ft.Constant(0.8), 0.99))
    xs = [torch.randn(3, 2), torch.randn(4)]
    gs = [[torch.randn_like(x) for x in xs] for _ in range(3)]
    per = [rule.init(x) for x in xs]
    flat = rule.init(torch.cat([x.flatten() for x in xs]))
    for step in gs:
        ups = []
        for i, (x, g) in enumerate(zip(xs, step)):
            per[i], u = rule.apply(per[i], x, g)
            ups.append(u.flatten())
        x_flat = torch.cat([x.flatten() for x in xs])
        flat, u_flat = rule.apply(flat, x_flat, torch.cat([g.flatten() for g in step]))
        torch.testing.assert_close(u_flat, torch.cat(ups))
    assert flat[0] == per[0][0] == 4


def test_leaves_with_equal_schedules_and_counters_share_one_apply_call(monkeypatch):
    calls = []
    apply = ft.Scheduler.apply

    def counting(self, state, x, dx):
        calls.append(x.numel())
        return apply(self, state, x, dx)

    monkeypatch.setattr(ft.Scheduler, "apply", counting)
    model = {"a": torch.randn(3, 2), "b": torch.randn(4), "c": torch.randn(5)}
    start = {k: v.clone() for k, v in model.items()}
    st = ft.setup(ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5)), model)
    g = {k: torch.ones_like(v) for k, v in model.items()}
    ft.update_(st, model, g)
    ft.freeze_(st["a"])
    ft.update_(st, model, g)
    ft.thaw_(st)
    ft.update_(st, model, g)
    # one call for all three; then b and c alone; then a (t=2) and b, c (t=3) apart
    assert calls[:2] == [15, 9] and sorted(calls[2:]) == [6, 9]
    torch.testing.assert_close(model["a"], start["a"] - (0.1 + 0.05))
    torch.testing.assert_close(model["b"], start["b"] - (0.1 + 0.05 + 0.025))


def test_global_clipnorm_cannot_be_scheduled():
    def make(omega):
        return ft.OptimiserChain(ft.ClipNorm(omega, scope="global"), ft.Descent())

    with pytest.raises(ValueError, match="first in an OptimiserChain around the Scheduler"):
        ft.Scheduler(make, ft.Exp(1.0, 0.5))


@pytest.mark.parametrize("bad", ["a", "b"])
def test_engine_sees_a_throwing_clipnorm_inside_a_scheduler(bad):
    def make(eta):
        return ft.OptimiserChain(ft.ClipNorm(1.0), ft.Descent(eta))

    model = {"a": torch.zeros(2), "b": torch.zeros(2)}
    st = ft.setup(ft.Scheduler(make, ft.Exp(1.0, 0.5)), model)
    ft.freeze_(st["a"])
    ft.update_(st, model, {"a": torch.ones(2), "b": torch.ones(2)})
    ft.thaw_(st)  # now two groups (counters 1 and 2), whichever the engine runs first
    before = {k: v.clone() for k, v in model.items()}
    g = {"a": torch.ones(2), "b": torch.ones(2)}
    g[bad] = torch.tensor([1.0, float("nan")])
    with pytest.raises(ft.NonFiniteGradientError):
        ft.update_(st, model, g)
    assert all(torch.equal(model[k], before[k]) for k in model)
    assert (st["a"].state[0], st["b"].state[0]) == (1, 2)


def test_tuple_hyperparameters_can_hold_schedules():
    rule = ft.Scheduler(ft.Adam, eta=0.01, beta=(ft.Exp(0.9, 1.0), 0.999))
    assert rule.rule_at(7) == ft.Adam(0.01, (0.9, 0.999))


def test_any_function_returning_a_rule_can_be_the_constructor():
    def make(eta):
        return ft.OptimiserChain(ft.WeightDecay(0.1), ft.Descent(eta))

    rule = ft.Scheduler(make, ft.Exp(1.0, 0.5))
    assert rule.rule_at(2) == make(0.5)
    x = torch.ones(2)
    st = ft.setup(rule, x)
    ft.update_(st, x, torch.zeros(2))
    torch.testing.assert_close(x, torch.full((2,), 0.9))


def test_adjust_with_a_number_fixes_a_scheduled_field_and_keeps_the_counter():
    x = torch.zeros(2)
    st = ft.setup(ft.Scheduler(ft.Momentum, eta=ft.Exp(1.0, 0.5)), x)
    ft.update_(st, x, torch.ones(2))
    ft.adjust_(st, 0.01)
    assert st.rule == ft.Scheduler(ft.Momentum, eta=0.01)
    assert st.state[0] == 2
    ft.adjust_(st, eta=ft.Exp(0.2, 0.1), rho=0.5)  # a new schedule; an unscheduled field
    assert st.rule == ft.Scheduler(ft.Momentum, eta=ft.Exp(0.2, 0.1), rho=0.5)
    assert st.rule.rule_at(st.state[0]) == ft.Momentum(0.2 * 0.1, 0.5)


def test_adjust_errors_name_the_problem():
    st = ft.setup(ft.Scheduler(ft.RMSProp, eta=ft.Exp(1.0, 0.5)), torch.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        ft.adjust_(st, momentum=0.1)
    with pytest.raises(ValueError, match=r"RMSProp\.centred"):
        ft.adjust_(st, centred=True)
    with pytest.raises(ValueError, match="cannot be negative"):
        ft.adjust_(st, eta=-1.0)
    assert st.rule == ft.Scheduler(ft.RMSProp, eta=ft.Exp(1.0, 0.5))  # unchanged


def test_reset_sets_the_counter_back_to_one():
    x = torch.zeros(2)
    st = ft.setup(ft.Scheduler(ft.Momentum, eta=ft.Exp(1.0, 0.5)), x)
    for _ in range(3):
        ft.update_(st, x, torch.ones(2))
    ft.reset_(st)
    assert st.state[0] == 1 and torch.equal(st.state[1], torch.zeros(2))


def test_copying_update_leaves_the_original_counter_alone():
    x = torch.zeros(2)
    st = ft.setup(ft.Scheduler(ft.Descent, ft.Exp(1.0, 0.5)), x)
    st2, x2 = ft.update(st, x, torch.ones(2))
    assert st.state[0] == 1 and st2.state[0] == 2
    assert torch.equal(x, torch.zeros(2)) and torch.equal(x2, -torch.ones(2))


def test_to_dict_round_trips():
    rule = ft.Scheduler(
        ft.Adam, eta=ft.warmup(ft.Cos(l0=1e-4, l1=1e-3, period=10), 5), beta=(0.8, 0.9)
    )
    import json

    back = ft.Scheduler.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert back == rule


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: ft.Scheduler(ft.Descent(), ft.Exp(0.1, 0.5)), TypeError, "rule class"),
        (lambda: ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5), 1.0), TypeError, "only 1 fields"),
        (lambda: ft.Scheduler(ft.Descent, lr=ft.Exp(0.1, 0.5)), TypeError, "no field 'lr'"),
        (lambda: ft.Scheduler(ft.Descent, ft.Exp(-0.1, 0.5)), ValueError, "cannot be negative"),
        (lambda: ft.Scheduler(ft.OptimiserChain, ft.Exp(0.1, 0.5)), TypeError, "inside the chain"),
        (lambda: ft.Scheduler(ft.Descent), TypeError, "at least one schedule"),
        (lambda: ft.Scheduler(ft.Descent, [0.1]), TypeError, r"Descent\(eta=\(0\.1,\)\) at t=1"),
        (lambda: ft.Scheduler(lambda eta: eta, 0.1), TypeError, "must return a rule"),
    ],
)
def test_bad_construction_fails_at_once_with_a_clear_error(make, err, match):
    with pytest.raises(err, match=match):
        make()
