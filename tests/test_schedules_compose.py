"""Composition of schedules (ParameterSchedulers.jl ``src/complex.jl``) and the warm-up helper."""

import copy
import itertools
import math
import tracemalloc

import numpy as np
import pytest

import fluxtrain as ft


def values(s, ts):
    return [s(t) for t in ts]


def test_sequence_example_of_parameterschedulers():
    # Julia: Sequence(1 => 1, Step(0.1, 0.5, 10) => 50)
    s = ft.Sequence((1, 1), (ft.Step(0.1, 0.5, 10), 50))
    assert s(1) == 1
    assert s(2) == 0.1
    assert s(42) == 0.00625
    assert s(52) == 0.003125  # past the end the last schedule continues


def test_sequence_from_two_lists_and_from_pairs_agree():
    pairs = ft.Sequence((math.log, 3), (math.sqrt, 4))
    lists = ft.Sequence(schedules=[math.log, math.sqrt], step_sizes=[3, 4])
    assert pairs == lists
    expected = [math.log(t) if t <= 3 else math.sqrt(t - 3) for t in range(1, 51)]
    assert values(pairs, range(1, 51)) == pytest.approx(expected)
    assert [v for v, _ in zip(pairs, range(50))] == pytest.approx(expected)


def test_sequence_of_numbers_is_piecewise_constant():
    s = ft.Sequence(schedules=[0.5, 0.2, 0.1], step_sizes=[2, 3, 1])
    assert values(s, range(1, 9)) == [0.5, 0.5, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1]


def test_sequence_length_follows_a_finite_last_schedule():
    s = ft.Sequence((0.5, 2), (ft.Poly(1.0, 1, 4), 4))
    assert len(s) == 6 and list(s) == [0.5, 0.5, 1.0, 0.75, 0.5, 0.25]
    with pytest.raises(TypeError, match="infinite"):
        len(ft.Sequence((0.5, 2), (ft.Exp(1.0, 0.5), 4)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ft.Sequence((1.0, 2), 3.0), "argument 1 must be a .schedule, length. pair"),
        (lambda: ft.Sequence(schedules=[1.0, 2.0], step_sizes=[1]), "2 schedules but 1"),
        (lambda: ft.Sequence((1.0, 0)), "step_sizes.0. must be >= 1"),
        (lambda: ft.Sequence(("fast", 3)), r"schedules\[0\] must be a schedule"),
        (lambda: ft.Sequence(), "needs"),
    ],
)
def test_sequence_rejects_malformed_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_loop_repeats_every_period():
    s = ft.Loop(math.log, 7)
    assert values(s, range(1, 101)) == pytest.approx(
        [math.log((t - 1) % 7 + 1) for t in range(1, 101)]
    )
    s = ft.Loop(ft.Poly(1.0, 1, 5), 5)  # a finite schedule looped becomes infinite
    assert values(s, range(1, 11)) == pytest.approx([1, 0.8, 0.6, 0.4, 0.2] * 2)


def test_interpolator_reads_an_epoch_schedule_per_batch():
    # ParameterSchedulers' test: values [1, 2, 3] for [10, 10, 30] epochs, 5 batches each
    epochs, nbatches = [10, 10, 30], 5
    s = ft.Interpolator(ft.Sequence(schedules=[1, 2, 3], step_sizes=epochs), nbatches)
    expected = np.repeat([1, 2, 3], [e * nbatches for e in epochs]).tolist()
    assert values(s, range(1, sum(epochs) * nbatches + 1)) == expected


def test_interpolator_with_identity_reads_real_valued_time():
    dt = 1e-3
    s = ft.Interpolator(math.sin, dt, "identity")
    ts = [k * dt for k in range(1, 101)]
    assert values(s, ts) == pytest.approx([math.sin(k) for k in range(1, 101)], rel=1e-9)


def test_shifted_starts_the_schedule_at_offset():
    s = ft.Triangle(l0=0.0, l1=1.0, period=10)
    assert values(ft.Shifted(s, 5), range(1, 51)) == values(s, range(5, 55))
    assert len(ft.Shifted(ft.Poly(1.0, 1, 10), 4)) == 7


def test_composed_schedule_rebuilds_the_schedule_from_parameters_each_step():
    # v0.4 builds TriangleDecay2 exactly like this: the range halves every period
    r, o, p = 2.0, 0.5, 4
    composed = ft.ComposedSchedule(ft.Triangle(r, o, p), (ft.Interpolator(ft.Exp(r, 0.5), p), o, p))
    direct = ft.TriangleDecay2(r, o, p)
    assert values(composed, range(1, 101)) == pytest.approx(values(direct, range(1, 101)))


def test_composed_schedule_accepts_a_compose_function_in_either_position():
    def build(s, ps):
        return ft.Exp(ps[0], s.decay)

    a = ft.ComposedSchedule(ft.Exp(1.0, 0.5), (ft.Step(1.0, 0.1, 2),), build)
    b = ft.ComposedSchedule(build, ft.Exp(1.0, 0.5), (ft.Step(1.0, 0.1, 2),))
    assert a == b
    assert values(a, [1, 2, 3]) == pytest.approx([1.0, 0.5, 0.1 * 0.25])


def test_reverse_and_symmetric():
    f, period = math.log, 8
    r = ft.schedules.reverse(f, period)
    assert all(r(period - t) == f(t) for t in range(1, period))
    s = ft.schedules.symmetric(f, period)
    assert all(s(t) == (f(t) if t < period / 2 else f(period - t)) for t in range(1, period))


def test_shortened_is_a_finite_prefix():
    s = ft.Shortened(ft.Exp(0.9, 10.0), 5)
    assert list(s) == values(ft.Exp(0.9, 10.0), range(1, 6))
    with pytest.raises(IndexError):
        s(6)


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule():
    base = ft.CosAnneal(l0=1e-4, l1=1e-2, period=20)
    s = ft.warmup(base, 10, start=1e-6)
    ramp = [1e-6 + (1e-2 - 1e-6) * (t - 1) / 10 for t in range(1, 11)]
    assert values(s, range(1, 11)) == pytest.approx(ramp)
    assert values(s, range(11, 101)) == pytest.approx(values(base, range(1, 91)))
    assert s == ft.Warmup(base, 10, 1e-6)
    assert len(ft.warmup(ft.Poly(1.0, 1, 5), 3)) == 8


def test_warmup_of_a_number_warms_up_to_that_constant():
    s = ft.warmup(0.1, 4)
    assert values(s, range(1, 8)) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def _guarded(items, most):
    """An infinite iterator over ``items`` (cycled) that fails loudly if pulled more than
    ``most`` times (an eager Sequence would try to pull it forever)."""
    pulled = 0
    for item in itertools.cycle(items) if isinstance(items, list) else items:
        pulled += 1
        if pulled > most:
            raise AssertionError(f"pulled more than {most} items: not lazy")
        yield item


def test_sequence_of_infinite_iterables_is_lazy_and_pulls_only_what_t_needs():
    s = ft.Sequence(schedules=_guarded([1.0, 0.5], 6), step_sizes=_guarded([2], 6))
    # t = 10 lies in the fifth segment of two steps: five pairs pulled, the sixth never
    assert values(s, range(1, 11)) == [1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0]
    assert values(s, [3, 1, 9]) == [0.5, 1.0, 1.0]  # backwards too, from what was pulled
    assert [v for v, _ in zip(s, range(4))] == [1.0, 1.0, 0.5, 0.5]


def test_sequence_of_infinite_iterables_reaches_a_million_steps_in_bounded_memory():
    warm_restarts = ft.Sequence(
        schedules=_guarded([ft.Exp(1.0, 0.5), ft.Constant(0.1)], 250_000),
        step_sizes=_guarded([4], 250_000),
    )
    tracemalloc.start()
    try:
        value = warm_restarts(10**6)  # segment 250000, a Constant, whose local t is 4
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value == 0.1 and warm_restarts(10**6 - 4) == 0.125
    assert peak < 16 * 250_000 * 2  # two 8-byte entries per segment, with slack for growth


def test_sequence_with_a_generator_of_schedules_and_a_list_of_step_sizes():
    # Julia: Sequence(Exp(1.0, 0.5) for _ in ...) with step sizes; the shorter one ends it
    exps = _guarded((ft.Exp(k, 0.5) for k in itertools.count(1.0)), 3)
    s = ft.Sequence(schedules=exps, step_sizes=[2, 3])
    assert values(s, range(1, 8)) == [1.0, 0.5, 2.0, 1.0, 0.5, 0.25, 0.125]
    with pytest.raises(TypeError, match="has no length"):
        len(s)
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        s.to_dict()
    rule = ft.Scheduler(ft.Momentum, eta=s)
    assert dict(copy.deepcopy(rule).schedules)["eta"] is s


def test_lazy_sequence_checks_each_pair_as_it_is_pulled():
    s = ft.Sequence(schedules=_guarded([0.1], 3), step_sizes=iter([2, 0, 1]))
    assert s(2) == 0.1
    with pytest.raises(ValueError, match=r"step_sizes\[1\] must be >= 1"):
        s(3)
    with pytest.raises(ValueError, match="at least one schedule and one step size"):
        ft.Sequence(schedules=iter([]), step_sizes=_guarded([1], 1))
    with pytest.raises(TypeError, match="step_sizes must be a list, a tuple or another iterable"):
        ft.Sequence(schedules=[1.0], step_sizes=3)
