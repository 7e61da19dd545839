"""Every ParameterSchedulers.jl v0.4 schedule against its closed-form formula, computed here
independently with NumPy (vectorised, different expressions where possible)."""

import dataclasses
import math

import numpy as np
import pytest

import fluxtrain as ft

T = np.arange(1, 101, dtype=np.float64)


def values(s, n=100):
    return np.array([s(t) for t in range(1, n + 1)], dtype=np.float64)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# independent forms: a triangle wave is twice the distance to the nearest integer
def tri(t, period):
    x = (t - 1) / period
    return 2 * np.abs(x - np.round(x))


def sine(t, period):
    return np.abs(np.sin(np.pi * (t - 1) / period))


def test_step_with_one_size_decays_every_step_size_iterations():
    close(values(ft.Step(0.1, 0.5, 10)), 0.1 * 0.5 ** ((T - 1) // 10))


def test_step_with_a_list_of_sizes_counts_completed_steps_then_stays():
    sizes = [3, 5, 10]
    done = np.searchsorted(np.cumsum(sizes), T, side="left")  # cumulative sums below t
    close(values(ft.Step(start=2.0, decay=0.3, step_sizes=sizes)), 2.0 * 0.3**done)
    assert ft.Step(2.0, 0.3, sizes)(100) == pytest.approx(2.0 * 0.3**3)


def test_exp_is_start_times_decay_to_t_minus_one():
    close(values(ft.Exp(0.1, 0.9)), 0.1 * np.exp((T - 1) * np.log(0.9)))


def test_poly_decays_to_zero_over_max_iter():
    close(values(ft.Poly(0.5, 2, 100)), 0.5 * ((100 - (T - 1)) / 100) ** 2)
    assert len(ft.Poly(0.5, 2, 100)) == 100
    assert len(list(ft.Poly(0.5, 2, 7))) == 7


def test_poly_past_its_length_raises_index_error():
    s = ft.Poly(1.0, 1, 10)
    s(10)
    with pytest.raises(IndexError, match=r"Poly.*10 iterations.*t=11"):
        s(11)


def test_inv_is_inverse_polynomial_decay():
    close(values(ft.Inv(1.0, 0.1, 3)), 1.0 / (1 + (T - 1) * 0.1) ** 3)


@pytest.mark.parametrize("l0,l1,period", [(0.1, 0.8, 7), (1e-2, 1e-4, 10), (0.3, 0.3, 1)])
def test_triangle_wave_between_endpoints(l0, l1, period):
    r, o = abs(l0 - l1), min(l0, l1)
    close(values(ft.Triangle(l0=l0, l1=l1, period=period)), r * tri(T, period) + o)


def test_triangle_decay2_halves_amplitude_every_period():
    s = ft.TriangleDecay2(l0=0.0, l1=2.0, period=6)
    close(values(s), 2.0 * tri(T, 6) * 0.5 ** np.floor((T - 1) / 6))


def test_triangle_exp_decays_amplitude_exponentially():
    s = ft.TriangleExp(l0=0.5, l1=0.1, period=4, decay=0.97)
    close(values(s), 0.4 * tri(T, 4) * 0.97 ** (T - 1) + 0.1)


def test_sin_wave_between_endpoints():
    close(values(ft.Sin(l0=0.2, l1=1.0, period=9)), 0.8 * sine(T, 9) + 0.2)


def test_sin_decay2_halves_amplitude_every_period():
    s = ft.SinDecay2(l0=1.0, l1=3.0, period=5)
    close(values(s), 2.0 * sine(T, 5) / 2 ** np.floor((T - 1) / 5) + 1.0)


def test_sin_exp_decays_amplitude_exponentially():
    s = ft.SinExp(l0=0.0, l1=1.0, period=8, decay=0.95)
    close(values(s), sine(T, 8) * 0.95 ** (T - 1))


@pytest.mark.parametrize("restart", [True, False])
def test_cos_anneal_with_and_without_restart(restart):
    s = ft.CosAnneal(l0=1e-4, l1=1e-2, period=10, restart=restart)
    th = (T - 1) % 10 if restart else T - 1
    close(values(s), (1e-2 - 1e-4) * (1 + np.cos(np.pi * th / 10)) / 2 + 1e-4)


def test_cos_anneal_restarts_by_default_and_starts_at_the_larger_endpoint():
    s = ft.CosAnneal(l0=1e-4, l1=1e-2, period=10)
    assert s.restart is True
    assert s(1) == pytest.approx(1e-2) and s(11) == pytest.approx(1e-2)
    assert s(6) == pytest.approx((1e-2 + 1e-4) / 2)


def test_cyclic_positional_arguments_are_range_and_offset_as_in_v04():
    assert ft.Triangle(l0=0.5, l1=1.5, period=10) == ft.Triangle(1.0, 0.5, 10)
    assert ft.CosAnneal(l0=0.5, l1=1.5, period=10) == ft.CosAnneal(1.0, 0.5, 10, True)
    assert ft.SinExp(l0=0.5, l1=1.5, period=3, decay=0.9) == ft.SinExp(1.0, 0.5, 3, 0.9)


def test_cos_is_the_seed_cosine_schedule_with_greek_keywords():
    s = ft.Cos(λ0=1e-4, λ1=1e-2, period=10)
    assert s == ft.Cos(l0=1e-4, l1=1e-2, period=10) == ft.Cos(1e-4, 1e-2, 10)
    assert s == ft.CosAnneal(l0=1e-4, l1=1e-2, period=10, restart=True)
    th = (T - 1) % 10
    close(values(s), (1e-2 - 1e-4) * (1 + np.cos(np.pi * th / 10)) / 2 + 1e-4)


def test_old_keyword_names_are_accepted():
    assert ft.Exp(λ=0.1, γ=0.5) == ft.Exp(start=0.1, decay=0.5)
    assert ft.Inv(λ=1.0, γ=0.1, p=2) == ft.Inv(1.0, 0.1, 2)
    assert ft.Poly(λ=1.0, p=2, max_iter=5) == ft.Poly(1.0, 2, 5)
    assert ft.Sin(λ0=0.0, λ1=1.0, period=2) == ft.Sin(l0=0.0, l1=1.0, period=2)


def test_one_cycle_warms_up_then_anneals_with_half_cosines():
    def reference(t, nsteps, startval, maxval, endval, pct):
        w = math.ceil(pct * nsteps)
        if t <= w:  # rising half cosine from startval to maxval
            return startval + (maxval - startval) * (1 - math.cos(math.pi * (t - 1) / w)) / 2
        d = nsteps - w
        return endval + (maxval - endval) * (1 + math.cos(math.pi * (t - w - 1) / d)) / 2

    s = ft.OneCycle(100, 0.1)
    close(values(s), [reference(t, 100, 0.1 / 25, 0.1, 0.1 / 1e5, 0.25) for t in range(1, 101)])
    s = ft.OneCycle(100, 0.1, startval=1e-4, endval=1e-2, percent_start=0.3)
    close(values(s), [reference(t, 100, 1e-4, 0.1, 1e-2, 0.3) for t in range(1, 101)])
    assert s(31) == pytest.approx(0.1)  # the peak right after 30 warm-up iterations


def test_one_cycle_past_nsteps_raises_index_error():
    s = ft.OneCycle(50, 0.1)
    assert len(s) == 50 and len(list(s)) == 50
    with pytest.raises(IndexError, match=r"OneCycle.*50 iterations.*t=51"):
        s(51)


def test_constant_is_always_its_value():
    assert all(v == 0.3 for v in values(ft.Constant(0.3)))


def test_schedules_are_immutable_hashable_and_equal_by_value():
    a, b = ft.Exp(0.1, 0.5), ft.Exp(0.1, 0.5)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != ft.Exp(0.1, 0.6)
    assert len({a: 1, b: 2}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.start = 1.0
    s = ft.Sequence((1.0, 1), (ft.Step(0.1, 0.5, [2, 3]), 5))
    assert hash(s) == hash(ft.Sequence((1.0, 1), (ft.Step(0.1, 0.5, (2, 3)), 5)))


def test_schedules_print_their_parameters():
    assert repr(ft.Exp(0.1, 0.5)) == "Exp(start=0.1, decay=0.5)"
    assert repr(ft.Poly(1.0, 2, 10)) == "Poly(start=1.0, degree=2, max_iter=10)"
    assert repr(ft.CosAnneal(l0=0.0, l1=1.0, period=4)) == (
        "CosAnneal(range=1.0, offset=0.0, period=4, restart=True)"
    )
    assert "step_sizes=10" in repr(ft.Step(1.0, 0.5, 10))


def test_infinite_schedules_iterate_forever_and_have_no_length():
    s = ft.Exp(1.0, 0.5)
    assert [v for v, _ in zip(s, range(3))] == [1.0, 0.5, 0.25]
    with pytest.raises(TypeError, match="infinite"):
        len(s)
    assert bool(s)


def test_fields_list_every_parameter_and_to_dict_round_trips():
    s = ft.Sequence(
        (ft.Warmup(ft.Constant(0.1), 3), 10),
        (ft.Loop(ft.Triangle(l0=0.0, l1=1.0, period=4), 8), 20),
        (ft.Interpolator(ft.Step(1.0, 0.5, [1, 2]), 3, "floor"), 5),
        (ft.Shifted(ft.OneCycle(10, 1.0), 2), 4),
        (ft.ComposedSchedule(ft.Exp(1.0, 0.5), (ft.Exp(1.0, 0.9), 0.5)), 100),
    )
    assert list(ft.Exp(0.1, 0.5).fields()) == ["start", "decay"]
    assert list(ft.OneCycle(10, 1.0).fields()) == [
        "nsteps", "maxval", "startval", "endval", "percent_start",
    ]  # fmt: skip
    d = s.to_dict()
    import json

    back = ft.Schedule.from_dict(json.loads(json.dumps(d)))
    assert back == s
    close(values(back), values(s))


def test_to_dict_names_a_python_function_that_cannot_be_serialised():
    with pytest.raises(TypeError, match=r"Loop\.f holds"):
        ft.Loop(math.log, 3).to_dict()


@pytest.mark.parametrize(
    "make, err, match",
    [
        (lambda: ft.Exp("0.1", 0.5), TypeError, "Exp: start must be a real number"),
        (lambda: ft.Step(1.0, 0.5, 0), ValueError, "step_sizes must be >= 1"),
        (lambda: ft.Step(1.0, 0.5, [2, 0]), ValueError, r"step_sizes\[1\]"),
        (lambda: ft.Poly(1.0, 2, 2.5), TypeError, "max_iter must be an integer"),
        (lambda: ft.Triangle(l0=0.0, period=3), TypeError, "both endpoints"),
        (lambda: ft.Triangle(1.0, 0.0, 3, l0=0.0, l1=1.0), TypeError, "not both"),
        (lambda: ft.Sin(l0=0.0, l1=1.0, period=0), ValueError, "period must be >= 1"),
        (lambda: ft.CosAnneal(l0=0, l1=1, period=3, restart=1), TypeError, "restart"),
        (lambda: ft.Cos(l0=0.0, l1=1.0, λ0=0.0, period=2), TypeError, "give l0 once"),
        (lambda: ft.OneCycle(10, 1.0, percent_start=1.5), ValueError, "percent_start"),
        (lambda: ft.Exp(0.1, 0.5)(None), TypeError, "iteration number"),
    ],
)
def test_bad_arguments_raise_errors_naming_the_argument(make, err, match):
    with pytest.raises(err, match=match):
        make()
