"""Seed 000's two scheduling loops (zip over a schedule; Stateful with next_) and Stateful."""

import math

import pytest
import torch

import fluxtrain as ft


def seed_cosine(epoch):
    # Cos(λ0 = 1e-4, λ1 = 1e-2, period = 10), written out: starts at 1e-2, restarts every 10
    return 1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * ((epoch - 1) % 10) / 10)) / 2


def test_seed_zip_loop_sets_eta_in_the_state_each_epoch():
    model = {"enc": torch.randn(4, 3), "dec": torch.randn(2, 4)}
    opt_state = ft.setup(ft.Momentum(), model)
    schedule = ft.Cos(λ0=1e-4, λ1=1e-2, period=10)
    seen = []
    for eta, _epoch in zip(schedule, range(1, 101)):
        ft.adjust_(opt_state, eta)
        seen.append((opt_state["enc"].rule.eta, opt_state["dec"].rule.eta))
        grads = {"enc": torch.ones(4, 3), "dec": torch.ones(2, 4)}
        ft.update_(opt_state, model, grads)  # "your training code here"
    assert len(seen) == 100
    assert [a for a, _ in seen] == pytest.approx([seed_cosine(e) for e in range(1, 101)])
    assert [b for _, b in seen] == [a for a, _ in seen]
    assert opt_state["enc"].rule.rho == 0.9  # only eta was adjusted
    assert opt_state["enc"].state.abs().sum() > 0  # momenta were kept across adjustments


def test_seed_stateful_loop_advances_with_next_():
    model = {"w": torch.randn(2, 3)}
    opt_state = ft.setup(ft.Momentum(), model)
    schedule = ft.Stateful(ft.Cos(λ0=1e-4, λ1=1e-2, period=10))
    etas = []
    for _epoch in range(1, 101):
        ft.adjust_(opt_state, ft.next_(schedule))
        etas.append(opt_state["w"].rule.eta)
    assert etas == pytest.approx([seed_cosine(e) for e in range(1, 101)])
    assert schedule.state == 101


def test_stateful_reset_starts_again_at_the_first_iteration():
    st = ft.Stateful(math.log)
    assert all(ft.next_(st) == math.log(i) for i in range(1, 101))
    ft.reset_(st)
    assert st.state == 1 and ft.next_(st) == math.log(1)


def test_stateful_advance_predicate_controls_iteration():
    st = ft.Stateful(math.log, advance=lambda s: s == 1)
    assert [ft.next_(st) for _ in range(3)] == [math.log(1), math.log(2), math.log(2)]


def test_stateful_is_a_python_iterator_that_stops_with_a_finite_schedule():
    st = ft.Stateful(ft.Poly(1.0, 1, 4))
    assert next(st) == 1.0
    assert list(st) == [0.75, 0.5, 0.25]
    assert repr(st) == "Stateful(Poly(start=1.0, degree=1, max_iter=4), state=5)"


def test_next_needs_a_stateful():
    with pytest.raises(TypeError, match=r"ft\.Stateful\(schedule\)"):
        ft.next_(ft.Exp(0.1, 0.5))
    with pytest.raises(TypeError, match="advance must be a function"):
        ft.Stateful(ft.Exp(0.1, 0.5), advance=3)
