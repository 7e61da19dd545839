"""The implicit (Flux <= 0.13) style: params, Params, Grads, update_(rule, ps, gs), train_ with
callbacks, throttle, stop, skip and epochs."""

import copy
import logging
import pickle
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fluxtrain as ft
from fluxtrain.mode import is_differentiating

# --- params (seed 003's examples) -------------------------------------------------------------


def test_params_unpacks_a_model_into_its_weight_and_bias():
    # params(Chain(Dense(ones(2,3)), softmax))
    dense = nn.Linear(3, 2)
    with torch.no_grad():
        dense.weight.fill_(1.0)
        dense.bias.zero_()
    model = nn.Sequential(dense, nn.Softmax(dim=-1))
    ps = ft.params(model)
    assert list(ps) == [dense.weight, dense.bias]
    assert ps[0] is dense.weight and ps[1] is dense.bias


def test_params_of_batchnorm_are_only_its_trainable_parameters():
    bn = nn.BatchNorm1d(2)
    ps = ft.params(bn)
    assert len(ps) == 2
    assert ps[0] is bn.weight and ps[1] is bn.bias
    assert bn.running_mean not in ps and bn.running_var not in ps


def test_params_of_several_arrays_and_of_a_list_of_arrays_agree():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0])
    assert list(ft.params(a, b)) == [a, b]
    assert list(ft.params([a, b])) == [a, b]


def test_params_ignores_scalars_and_functions_and_unpacks_named_tuples():
    # params(1, [2 2], (alpha=[3,3,3], beta=Ref(4), gamma=sin))
    NT = namedtuple("NT", "alpha beta gamma")
    two = torch.tensor([[2.0, 2.0]])
    alpha = torch.tensor([3.0, 3.0, 3.0])
    ps = ft.params(1, two, NT(alpha=alpha, beta=[4], gamma=torch.sin))
    assert list(ps) == [two, alpha]
    assert repr(ps) == "Params([tensor([[2., 2.]]), tensor([3., 3., 3.])])"


def test_params_holds_the_tensors_themselves_once_each():
    w = torch.zeros(2)
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, shared)
    ps = ft.params(model, w, w)
    assert len(ps) == 3
    assert ps[2] is w
    assert w in ps and w.clone() not in ps
    assert ft.params(ps) == ps  # a Params is unpacked too
    assert ft.Params(ps) == ps


def test_params_set_operations():
    a, b = torch.zeros(1), torch.ones(1)
    ps = ft.Params([a])
    ps.add(b)
    ps.add(a)
    assert list(ps) == [a, b]
    ps.discard(a)
    assert list(ps) == [b]
    with pytest.raises(TypeError, match="iterable of tensors"):
        ft.Params(a)
    with pytest.raises(TypeError, match="holds tensors"):
        ft.Params([1.0])


def test_params_repr_abbreviates_large_tensors():
    assert repr(ft.params(torch.zeros(3, 4))) == "Params([<tensor (3, 4) float32>])"


# --- gradient / withgradient / pullback with Params -------------------------------------------


def test_implicit_gradient_is_indexed_by_the_parameter():
    model = nn.Linear(3, 1)
    x = torch.randn(5, 3)
    ps = ft.params(model)
    gs = ft.gradient(lambda: model(x).sum(), ps)
    assert isinstance(gs, ft.Grads)
    torch.testing.assert_close(gs[model.weight], x.sum(0, keepdim=True))
    torch.testing.assert_close(gs[model.bias], torch.tensor([5.0]))
    assert list(gs) == [model.weight, model.bias]
    assert model.weight.grad is None  # .grad is not used
    with pytest.raises(KeyError, match="not one of the 2 parameters"):
        gs[torch.zeros(1)]


def test_implicit_gradient_tracks_plain_tensors_and_puts_requires_grad_back():
    W = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([0.5])
    x = torch.tensor([3.0, 4.0])
    gs = ft.gradient(lambda: (W @ x + b).pow(2).sum(), ft.params(W, b))
    # d/dW (Wx+b)^2 = 2 (Wx+b) x with Wx+b = 11.5
    torch.testing.assert_close(gs[W], 23.0 * x.unsqueeze(0))
    torch.testing.assert_close(gs[b], torch.tensor([23.0]))
    assert not W.requires_grad and not b.requires_grad


def test_implicit_gradient_is_none_for_unused_parameters_and_ignores_others():
    used, unused = torch.ones(2), torch.ones(3)
    other = torch.ones(2, requires_grad=True)  # not in ps: gets no gradient
    gs = ft.gradient(lambda: (used * other).sum(), ft.params(used, unused))
    assert gs[unused] is None
    torch.testing.assert_close(gs[used], torch.ones(2))
    assert other.grad is None
    assert gs.get(torch.ones(1), "absent") == "absent"


def test_grads_of_two_batches_add_up_to_the_gradient_of_the_summed_loss():
    w, unused = torch.tensor([1.0, -1.0]), torch.ones(1)
    ps = ft.params(w, unused)
    x1, x2 = torch.tensor([2.0, 3.0]), torch.tensor([-1.0, 5.0])
    g1 = ft.gradient(lambda: (w * x1).sum() ** 2, ps)
    g2 = ft.gradient(lambda: (w * x2).sum() ** 2, ps)
    both = ft.gradient(lambda: (w * x1).sum() ** 2 + (w * x2).sum() ** 2, ps)
    mean = 0.5 * (g1 + g2)
    torch.testing.assert_close((g1 + g2)[w], both[w])
    torch.testing.assert_close(mean[w], both[w] / 2)
    assert mean[unused] is None
    with pytest.raises(ValueError, match="same Params"):
        g1 + ft.gradient(lambda: w.sum(), ft.params(w))


def test_integer_tensors_in_params_get_no_gradient():
    w, counts = torch.ones(2), torch.tensor([1, 2])
    ps = ft.Params([w, counts])
    gs = ft.gradient(lambda: (w * counts).sum(), ps)
    torch.testing.assert_close(gs[w], torch.tensor([1.0, 2.0]))
    assert gs[counts] is None


def test_implicit_withgradient_returns_value_and_aux():
    w = torch.tensor([2.0])
    val, gs = ft.withgradient(lambda: ((w**2).sum(), "aux"), ft.params(w))
    assert val == (4.0, "aux")
    torch.testing.assert_close(gs[w], torch.tensor([4.0]))


def test_implicit_pullback_scales_by_the_seed_and_can_be_called_twice():
    w = torch.tensor([1.0, -2.0])
    val, back = ft.pullback(lambda: (3 * w).sum(), ft.params(w))
    assert val == pytest.approx(-3.0)
    torch.testing.assert_close(back(1.0)[w], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(back(2.0)[w], torch.tensor([6.0, 6.0]))
    assert not w.requires_grad


def test_automatic_train_mode_is_on_inside_the_implicit_gradient_only():
    w = torch.ones(1000)
    seen = []

    def loss():
        out = F.dropout(w, 0.5, training=is_differentiating())
        seen.append(int((out == 0).sum()))
        return out.sum()

    ft.gradient(loss, ft.params(w))
    loss()
    assert seen[0] > 300 and seen[1] == 0


# --- update_(rule, ps, gs): the state lives with the rule -------------------------------------


def test_implicit_update_matches_explicit_update_over_several_steps():
    torch.manual_seed(4)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    xs = [torch.randn(4, 3) for _ in range(4)]

    rule = ft.Adam(0.05)
    ps = ft.params(a)
    for x in xs:
        gs = ft.gradient(lambda: a(x).pow(2).mean(), ps)  # noqa: B023
        ft.update_(rule, ps, gs)

    st = ft.setup(ft.Adam(0.05), b)
    for x in xs:
        g = ft.gradient(lambda m: m(x).pow(2).mean(), b)  # noqa: B023
        ft.update_(st, b, g[0])
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)


def test_equal_rules_keep_separate_state_and_the_rule_stays_equal():
    w1, w2 = torch.zeros(1), torch.zeros(1)
    r1, r2 = ft.Momentum(0.1, 0.9), ft.Momentum(0.1, 0.9)
    for _ in range(2):
        ft.update_(r1, ft.params(w1), ft.gradient(lambda: w1.sum(), ft.params(w1)))
    ft.update_(r2, ft.params(w2), ft.gradient(lambda: w2.sum(), ft.params(w2)))
    # Momentum: v = 0.1, then 0.19; w1 = -0.29.  r2 has seen one step only: w2 = -0.1.
    assert w1.item() == pytest.approx(-0.29)
    assert w2.item() == pytest.approx(-0.1)
    assert r1 == r2 and hash(r1) == hash(r2)
    assert repr(r1) == "Momentum(eta=0.1, rho=0.9)"


def test_copies_and_pickles_of_a_used_rule_carry_no_parameters():
    w = torch.zeros(1000)
    rule = ft.Adam(0.1)
    ft.update_(rule, ft.params(w), ft.gradient(lambda: w.sum(), ft.params(w)))
    clean = len(pickle.dumps(ft.Adam(0.1)))
    assert len(pickle.dumps(rule)) < clean + 100  # not the 4000 bytes of w and its moments
    again = pickle.loads(pickle.dumps(rule))
    assert again == rule
    assert len(rule._implicit_state) == 1
    assert len(copy.deepcopy(rule)._implicit_state) == 0  # a copy starts afresh


def test_implicit_update_skips_parameters_without_gradient():
    used, unused = torch.ones(1), torch.ones(1)
    ps = ft.params(used, unused)
    ft.update_(ft.Descent(0.5), ps, ft.gradient(lambda: used.sum(), ps))
    assert (used.item(), unused.item()) == (0.5, 1.0)


def test_implicit_update_needs_a_rule_and_grads():
    w = torch.zeros(2)
    ps = ft.params(w)
    gs = ft.gradient(lambda: w.sum(), ps)
    with pytest.raises(TypeError, match="needs a rule"):
        ft.update_(ft.setup(ft.Adam(), w), ps, gs)
    with pytest.raises(TypeError, match="needs the Grads"):
        ft.update_(ft.Adam(), ps, ft.gradient(lambda v: v.sum(), w))
    assert torch.equal(w, torch.zeros(2))


# --- train_(loss, ps, data, rule, cb=...) -----------------------------------------------------


def _regression(seed: int = 5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(6)]
    return model, data


def test_implicit_and_explicit_train_give_the_same_parameters():
    model, data = _regression()
    twin, _ = _regression()
    twin.load_state_dict(model.state_dict())

    losses_implicit = ft.train_(
        lambda x, y: F.mse_loss(model(x), y), ft.params(model), data, ft.Adam(0.01)
    )
    opt_state = ft.setup(ft.Adam(0.01), twin)
    losses_explicit = ft.train_(lambda m, x, y: F.mse_loss(m(x), y), twin, data, opt_state)

    assert losses_implicit == losses_explicit
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_implicit_train_keeps_momenta_with_the_rule_across_calls():
    model, data = _regression()
    twin, _ = _regression()
    twin.load_state_dict(model.state_dict())
    rule = ft.Adam(0.01)
    ps = ft.params(model)
    for _ in range(2):
        ft.train_(lambda x, y: F.mse_loss(model(x), y), ps, data, rule)
    opt_state = ft.setup(ft.Adam(0.01), twin)
    for _ in range(2):
        ft.train_(lambda m, x, y: F.mse_loss(m(x), y), twin, data, opt_state)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_implicit_train_splats_tuples_and_passes_other_items_whole():
    w = torch.zeros(1)
    seen = []

    def loss(*args):
        seen.append(len(args))
        return w.sum()

    ft.train_(loss, ft.params(w), [(1, 2), 3, [4, 5]], ft.Descent(0.1))
    assert seen == [2, 1, 1]


def test_callbacks_run_after_every_item_in_order_after_the_update():
    w = torch.zeros(1)
    log = []
    cbs = [lambda: log.append(("a", w.item())), lambda: log.append(("b", w.item()))]
    ft.train_(lambda x: (w * x).sum(), ft.params(w), [torch.ones(1)] * 2, ft.Descent(0.5), cb=cbs)
    assert log == [("a", -0.5), ("b", -0.5), ("a", -1.0), ("b", -1.0)]

    single = []
    ft.train_(
        lambda x: (w * x).sum(),
        ft.params(w),
        [torch.ones(1)] * 3,
        ft.Descent(0.5),
        cb=lambda: single.append(1),
    )
    assert single == [1, 1, 1]


def test_stop_in_a_callback_ends_training_cleanly():
    w = torch.zeros(1)
    steps = []

    def cb():
        steps.append(w.item())
        if len(steps) == 3:
            ft.stop()

    losses = ft.train_(
        lambda x: (w * x).sum(), ft.params(w), [torch.ones(1)] * 10, ft.Descent(1.0), cb=cb
    )
    assert len(losses) == 3
    assert w.item() == -3.0  # the third update was made before the callback stopped


def test_stop_inside_the_loss_ends_training_before_updating():
    w = torch.zeros(1)

    def loss(x):
        if x.item() == 3:
            ft.stop()
        return (w * x).sum()

    data = [torch.tensor([float(i)]) for i in range(1, 6)]
    losses = ft.train_(loss, ft.params(w), data, ft.Descent(1.0))
    assert len(losses) == 2
    assert w.item() == -3.0  # updates from items 1 and 2 only


def test_skip_in_the_loss_drops_that_item():
    w = torch.zeros(1)

    def loss(x):
        if x.item() < 0:
            ft.skip()
        return (w * x).sum()

    data = [torch.tensor([1.0]), torch.tensor([-100.0]), torch.tensor([2.0])]
    losses = ft.train_(loss, ft.params(w), data, ft.Descent(1.0))
    assert w.item() == -3.0
    assert losses == [0.0, -2.0]


def test_skip_in_a_callback_skips_the_remaining_callbacks_of_that_item():
    w = torch.zeros(1)
    log = []

    def first():
        log.append("first")
        ft.skip()

    ft.train_(
        lambda: w.sum(),
        ft.params(w),
        [()] * 2,
        ft.Descent(1.0),
        cb=[first, lambda: log.append("second")],
    )
    assert log == ["first", "first"]
    assert w.item() == -2.0


def test_stop_and_skip_outside_train_raise():
    with pytest.raises(Exception, match="outside the implicit-style"):
        ft.stop()
    with pytest.raises(Exception, match="outside the implicit-style"):
        ft.skip()


def test_implicit_train_stops_on_a_non_finite_loss_before_updating():
    w = torch.zeros(1)
    data = [torch.tensor([1.0]), torch.tensor([float("nan")]), torch.tensor([1.0])]
    with pytest.raises(ft.NonFiniteLossError, match="item 2"):
        ft.train_(lambda x: (w + x).sum(), ft.params(w), data, ft.Descent(1.0))
    assert w.item() == -1.0


def test_implicit_train_needs_a_rule():
    w = torch.zeros(1)
    with pytest.raises(TypeError, match="needs a rule"):
        ft.train_(lambda: w.sum(), ft.params(w), [()], ft.setup(ft.Adam(), w))
    with pytest.raises(TypeError, match="callback 0 is not callable"):
        ft.train_(lambda: w.sum(), ft.params(w), [()], ft.Adam(), cb=["print"])


# --- throttle, with a fake clock ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drive(throttled, clock, times):
    """Call ``throttled(t)`` at each time in ``times``."""
    for t in times:
        clock.now = t
        throttled(t)


def test_throttle_runs_at_most_once_per_period_on_the_leading_edge():
    clock, ran = FakeClock(), []
    f = ft.throttle(ran.append, 1.0, clock=clock)
    _drive(f, clock, [0.0, 0.2, 0.9, 1.0, 1.5, 3.7, 3.8])
    assert ran == [0.0, 1.0, 3.7]


def test_throttle_with_trailing_runs_the_last_call_of_the_wait_when_it_ends():
    clock, ran = FakeClock(), []
    f = ft.throttle(ran.append, 1.0, trailing=True, clock=clock)
    # 0.0 runs at once; 0.3 and 0.6 wait, the last (0.6) runs when the wait ends at 1.0 and
    # starts another wait until 2.0; 1.5 waits and runs at 2.0; nothing waits then, so 5.0 is a
    # fresh leading call.
    _drive(f, clock, [0.0, 0.3, 0.6])
    assert ran == [0.0]
    _drive(f, clock, [1.5])
    assert ran == [0.0, 0.6]
    _drive(f, clock, [5.0])
    assert ran == [0.0, 0.6, 1.5, 5.0]


def test_throttle_without_leading_delays_the_first_call_to_the_end_of_the_wait():
    clock, ran = FakeClock(), []
    f = ft.throttle(ran.append, 2.0, leading=False, clock=clock)
    _drive(f, clock, [0.0, 1.0])
    assert ran == []
    _drive(f, clock, [2.5])  # the call from 0.0 ran at 2.0; 2.5 waits with trailing=False: lost
    assert ran == [0.0]
    _drive(f, clock, [4.0, 6.1])
    assert ran == [0.0, 4.0]  # 4.0 is a fresh (delayed) call that ran at 6.0


def test_throttle_flush_runs_a_pending_call_and_results_are_kept():
    clock = FakeClock()
    f = ft.throttle(lambda t: t * 10, 1.0, trailing=True, clock=clock)
    clock.now = 0.0
    assert f(1) == 10
    clock.now = 0.5
    assert f(2) == 10  # waits: returns the last result
    assert f.flush() == 20
    assert f.flush() == 20  # nothing pending any more


def test_throttled_callback_in_train():
    clock = FakeClock()
    w = torch.zeros(1)
    seen = []

    def tick():
        seen.append(clock.now)

    throttled = ft.throttle(tick, 5, clock=clock)

    def loss(t):
        clock.now = t
        return w.sum()

    ft.train_(loss, ft.params(w), [float(t) for t in range(12)], ft.Descent(0.1), cb=throttled)
    assert seen == [0.0, 5.0, 10.0]


def test_throttle_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seconds"):
        ft.throttle(print, -1)
    with pytest.raises(TypeError, match="callable"):
        ft.throttle("print", 1)


# --- epochs -----------------------------------------------------------------------------------


def test_epochs_counts_from_one_and_logs_each_epoch(caplog):
    with caplog.at_level(logging.INFO, logger="fluxtrain"):
        assert list(ft.epochs(2)) == [1, 2]
    assert [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2"]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    with pytest.raises(ValueError, match="epochs"):
        ft.epochs(-1)


def test_implicit_train_with_autocast_and_a_progress_bar(capsys):
    torch.manual_seed(6)
    model = nn.Linear(4, 2)
    dtypes = []

    def loss(x):
        out = model(x)
        dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    data = [torch.randn(3, 4)] * 2
    ft.train_(loss, ft.params(model), data, ft.Descent(0.1), autocast=torch.bfloat16, progress=True)
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert model.weight.dtype == torch.float32
    assert "train_" in capsys.readouterr().err
