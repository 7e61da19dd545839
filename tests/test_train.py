"""ft.train_ (Flux's explicit ``train!``): its loop, its stops, and what it leaves untouched."""

import functools
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import fluxtrain as ft
from fluxtrain.mode import is_differentiating


def _dense_1_1(weight: float = 0.0) -> nn.Linear:
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.fill_(weight)
        m.bias.zero_()
    return m


def _as_tree(m: nn.Linear) -> dict:
    # The same parameters as a plain dict: train_ takes its generic (gradient-tree) path.
    return {"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()}


def _apply(m, x):
    if isinstance(m, nn.Module):
        return m(x)
    return F.linear(x, m["weight"], m["bias"])


def _params_of(m):
    return (m.weight, m.bias) if isinstance(m, nn.Module) else (m["weight"], m["bias"])


@pytest.mark.parametrize("kind", ["module", "tree"])
def test_nan_at_item_51_stops_after_51_calls_and_keeps_parameters_of_item_50(kind):
    # Flux test/train.jl, "Stop on NaN": Dense(1 => 1) with weight 0, data tuple.(1:100),
    # Descent(0.1); the loss is sum(m([1.0])), times NaN at item 51.
    model = _dense_1_1() if kind == "module" else _as_tree(_dense_1_1())
    calls = []

    def loss(m, i):
        calls.append(i)
        scale = float("nan") if i == 51 else 1.0
        return scale * _apply(m, torch.ones(1)).sum()

    data = [(i,) for i in range(1, 101)]
    with pytest.warns(UserWarning, match="instead of an optimiser state"):
        with pytest.raises(ArithmeticError) as info:
            ft.train_(loss, model, data, ft.Descent(0.1))
    assert len(calls) == 51
    err = info.value
    assert isinstance(err, ft.NonFiniteLossError)
    assert "item 51" in str(err) and "nan" in str(err)
    assert (err.item, err.index) == (51, 50)
    # d loss / d weight = d loss / d bias = 1 for 50 steps of 0.1: both end at -5.
    weight, bias = _params_of(model)
    assert weight.item() == pytest.approx(-5.0)
    assert bias.item() == pytest.approx(-5.0)


def test_infinite_loss_stops_too_and_names_the_value():
    model = _dense_1_1(weight=1.0)
    opt_state = ft.setup(ft.Descent(0.1), model)
    data = [torch.ones(1), torch.full((1,), float("inf"))]
    with pytest.raises(ft.NonFiniteLossError, match=r"loss is inf at data item 2 \(index 1\)"):
        ft.train_(lambda m, x: (m(x) * x).sum(), model, data, opt_state)


def test_non_finite_loss_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ft.NonFiniteLossError(float("inf"), 3)))
    assert (err.loss, err.index, err.item) == (float("inf"), 3, 4)


def test_seed_003_momentum_example_gives_the_printed_state():
    # Seed 003 (Flux.setup docstring): Dense(2 => 1, leakyrelu; init=ones), Momentum(0.1),
    # the same item twice, loss sum(abs.(m(x) .- y)) * 100.  Float64 as in Julia.
    model = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    opt_state = ft.setup(ft.Momentum(0.1), model)
    x1, y1 = (
        torch.tensor([0.2, -0.3], dtype=torch.float64),
        torch.tensor([0.4], dtype=torch.float64),
    )

    def loss(m, x, y):
        return (F.leaky_relu(m(x), 0.01) - y).abs().sum() * 100

    ft.train_(loss, model, [(x1, y1), (x1, y1)], opt_state)
    # Hand-derived: step 1 pre-activation -0.1 (slope 0.01): g = -[0.2, -0.3], -1, so
    # v = [-0.02, 0.03], -0.1; step 2 pre-activation 0.013 (slope 1): g = -100 [0.2, -0.3], -100.
    torch.testing.assert_close(
        opt_state.weight.state, torch.tensor([[-2.018, 3.027]], dtype=torch.float64)
    )
    torch.testing.assert_close(opt_state.bias.state, torch.tensor([-10.09], dtype=torch.float64))
    torch.testing.assert_close(model.bias.detach(), torch.tensor([10.19], dtype=torch.float64))


def test_tuple_items_are_splatted_and_other_items_passed_whole():
    w = torch.zeros(2)
    seen = []

    def loss(m, *args):
        seen.append(args)
        return m.sum()

    x = torch.ones(2)
    opt_state = ft.setup(ft.Descent(0.1), w)
    ft.train_(loss, w, [(x, "label"), x, [x, 1]], opt_state)
    assert seen[0] == (x, "label")
    assert len(seen[1]) == 1 and seen[1][0] is x
    assert seen[2] == ([x, 1],)


def test_returns_the_losses_as_floats_in_order():
    model = _dense_1_1(weight=1.0)
    opt_state = ft.setup(ft.Descent(0.25), model)
    data = [torch.ones(1)] * 3
    losses = ft.train_(lambda m, x: m(x).sum(), model, data, opt_state)
    # f = w + b; each step lowers w and b by 0.25: 1, 0.5, 0.0
    assert losses == pytest.approx([1.0, 0.5, 0.0])
    assert all(type(v) is float for v in losses)


def test_loss_may_return_loss_and_aux():
    model = _dense_1_1(weight=1.0)
    opt_state = ft.setup(ft.Descent(0.25), model)
    aux = []

    def loss(m, x):
        out = m(x)
        aux.append(out.detach())
        return out.sum(), out

    losses = ft.train_(loss, model, [torch.ones(1)] * 2, opt_state)
    assert losses == pytest.approx([1.0, 0.5])
    assert len(aux) == 2
    assert model.weight.item() == pytest.approx(0.5)


def test_bare_rule_warns_and_trains_as_if_set_up():
    torch.manual_seed(1)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]

    def loss(m, x, y):
        return F.mse_loss(m(x), y)

    with pytest.warns(UserWarning, match=r"ft.setup\(rule, model\)"):
        ft.train_(loss, a, data, ft.Adam(0.1))
    ft.train_(loss, b, data, ft.setup(ft.Adam(0.1), b))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_module_path_matches_the_seed_loop_of_withgradient_and_update():
    torch.manual_seed(2)
    a = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    b = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    b.load_state_dict(a.state_dict())
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(5)]

    def loss(m, x, y):
        return F.mse_loss(m(x), y)

    st_a = ft.setup(ft.Adam(0.01), a)
    losses = ft.train_(loss, a, data, st_a)

    st_b = ft.setup(ft.Adam(0.01), b)
    expected = []
    for x, y in data:
        val, grads = ft.withgradient(lambda m: loss(m, x, y), b)  # noqa: B023
        expected.append(val)
        ft.update_(st_b, b, grads[0])
    assert losses == expected
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_grad_attributes_are_left_as_the_user_had_them():
    model = _dense_1_1(weight=1.0)
    before = torch.full((1, 1), 7.0)
    model.weight.grad = before
    outside = torch.ones(1, requires_grad=True)  # a tensor outside the model that the loss uses
    opt_state = ft.setup(ft.Descent(0.1), model)
    ft.train_(lambda m, x: (m(x) * outside).sum(), model, [torch.ones(1)] * 2, opt_state)
    assert model.weight.grad is before and before.item() == 7.0
    assert model.bias.grad is None
    assert outside.grad is None
    # The stale 7.0 in .grad was not used: each step moves the weight by exactly 0.1.
    assert model.weight.item() == pytest.approx(0.8)


def test_grad_attributes_are_restored_when_the_loss_raises():
    model = _dense_1_1(weight=1.0)
    before = torch.full((1, 1), 3.0)
    model.weight.grad = before
    opt_state = ft.setup(ft.Descent(0.1), model)

    def loss(m, x):
        if x.item() > 1:
            raise RuntimeError("bad batch")
        return m(x).sum()

    with pytest.raises(RuntimeError, match="bad batch"):
        ft.train_(loss, model, [torch.ones(1), torch.full((1,), 2.0)], opt_state)
    assert model.weight.grad is before
    assert model.weight.item() == pytest.approx(0.9)


def test_parameters_that_do_not_require_grad_are_not_trained():
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    weight = model.weight.detach().clone()
    opt_state = ft.setup(ft.Descent(0.1), model)
    ft.train_(lambda m, x: m(x).sum(), model, [torch.ones(2)], opt_state)
    torch.testing.assert_close(model.bias.detach(), bias, rtol=0, atol=0)
    torch.testing.assert_close(model.weight.detach(), weight - 0.1)
    assert model.bias.grad is None and model.weight.grad is None


def test_frozen_parts_are_not_updated():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    first = model[0].weight.detach().clone()
    opt_state = ft.setup(ft.Adam(0.1), model)
    ft.freeze_(opt_state[0])
    ft.train_(lambda m, x: m(x).sum(), model, [torch.ones(2)] * 2, opt_state)
    torch.testing.assert_close(model[0].weight.detach(), first, rtol=0, atol=0)
    assert not torch.equal(model[1].weight.detach(), torch.zeros(1, 2))


def test_autocast_runs_the_loss_in_bfloat16_and_keeps_float32_parameters():
    torch.manual_seed(3)
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    dtypes = []

    def loss(m, x):
        out = m(x)
        dtypes.append(out.dtype)
        return out.float().pow(2).mean()

    opt_state = ft.setup(ft.Descent(0.1), model)
    ft.train_(loss, model, [torch.randn(3, 4)], opt_state, autocast=torch.bfloat16)
    assert dtypes == [torch.bfloat16]
    assert model.weight.dtype == torch.float32
    assert not torch.equal(model.weight.detach(), before)

    tree = {"w": torch.randn(2, 4)}
    dtypes.clear()
    ft.train_(
        lambda m, x: loss(lambda v: F.linear(v, m["w"]), x),
        tree,
        [torch.randn(3, 4)],
        ft.setup(ft.Descent(0.1), tree),
        autocast=torch.bfloat16,
    )
    assert dtypes == [torch.bfloat16]


def test_data_without_a_length_works():
    w = torch.zeros(1)
    opt_state = ft.setup(ft.Descent(0.5), w)
    losses = ft.train_(
        lambda m, x: ((m - x) ** 2).sum(), w, (torch.ones(1) for _ in range(2)), opt_state
    )
    # w: 0 -> 1 after the first step (gradient -2, eta 0.5), so the second loss is 0.
    assert losses == [1.0, 0.0]


def test_progress_bar_shows_the_running_loss_when_forced(capsys, monkeypatch):
    # Redraw at every step (tqdm normally waits 0.1 s between redraws).
    monkeypatch.setattr(ft.train, "tqdm", functools.partial(tqdm, mininterval=0))
    w = torch.zeros(1)
    opt_state = ft.setup(ft.Descent(0.0), w)
    ft.train_(lambda m, x: (m - x).abs().sum(), w, [torch.ones(1)] * 3, opt_state, progress=True)
    err = capsys.readouterr().err
    assert "loss=1" in err and "3/3" in err


def test_progress_bar_by_default_only_on_a_terminal_and_for_data_with_a_length(capsys, monkeypatch):
    monkeypatch.setattr(ft.train, "tqdm", functools.partial(tqdm, mininterval=0))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    w = torch.zeros(1)
    opt_state = ft.setup(ft.Descent(0.0), w)
    ft.train_(lambda m, x: (m - x).abs().sum(), w, [torch.ones(1)] * 2, opt_state)
    assert "2/2" in capsys.readouterr().err
    ft.train_(lambda m, x: (m - x).abs().sum(), w, (torch.ones(1) for _ in range(2)), opt_state)
    assert capsys.readouterr().err == ""


def test_no_progress_bar_when_not_a_terminal_or_when_disabled(capsys):
    w = torch.zeros(1)
    opt_state = ft.setup(ft.Descent(0.0), w)
    ft.train_(lambda m, x: (m - x).abs().sum(), w, [torch.ones(1)] * 3, opt_state)
    ft.train_(lambda m, x: (m - x).abs().sum(), w, [torch.ones(1)] * 3, opt_state, progress=False)
    assert capsys.readouterr().err == ""


def test_callbacks_with_a_model_are_refused():
    model = _dense_1_1()
    with pytest.raises(TypeError, match="takes no callbacks"):
        ft.train_(
            lambda m, x: m(x).sum(), model, [torch.ones(1)], ft.setup(ft.Descent(), model), cb=print
        )


def test_missing_optimiser_state_is_a_clear_error():
    model = _dense_1_1()
    with pytest.raises(TypeError, match=r"ft.setup\(rule, model\)"):
        ft.train_(lambda m, x: m(x).sum(), model, [torch.ones(1)], None)
    with pytest.raises(TypeError, match="Adam"):
        ft.train_(lambda m, x: m(x).sum(), model, [torch.ones(1)], ft.Adam)


@pytest.mark.parametrize("kind", ["module", "tree"])
def test_automatic_train_mode_is_on_while_the_loss_runs_only(kind):
    model = _dense_1_1() if kind == "module" else _as_tree(_dense_1_1())
    opt_state = ft.setup(ft.Descent(0.1), model)
    in_loss, in_data = [], []

    def data():
        for _ in range(2):
            in_data.append(is_differentiating())
            yield torch.ones(1)

    def loss(m, x):
        in_loss.append(is_differentiating())
        return _apply(m, x).sum()

    ft.train_(loss, model, data(), opt_state)
    assert in_loss == [True, True]
    assert in_data == [False, False]
    assert not is_differentiating()


def test_children_outside_layer_trainable_are_not_trained_nor_left_with_grad():
    @ft.layer(trainable=("weight",))
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.shift = nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x * self.weight + self.shift

    model = Scale()
    opt_state = ft.setup(ft.Descent(0.5), model)
    ft.train_(lambda m, x: m(x).sum(), model, [torch.ones(2)], opt_state)
    torch.testing.assert_close(model.weight.detach(), torch.full((2,), 0.5))
    torch.testing.assert_close(model.shift.detach(), torch.zeros(2))
    assert model.weight.grad is None and model.shift.grad is None


def test_autocast_accepts_only_half_precision_dtypes():
    model = _dense_1_1()
    with pytest.raises(TypeError, match="autocast must be"):
        ft.train_(
            lambda m, x: m(x).sum(),
            model,
            [torch.ones(1)],
            ft.setup(ft.Descent(), model),
            autocast=torch.float64,
        )


@pytest.mark.parametrize("as_module", [True, False])
def test_a_finite_loss_with_a_nan_gradient_stops_before_the_update_naming_item_and_path(
    as_module,
):
    # |w - t| as sqrt((w - t)^2): item 1 moves w from 1 to 0.5 exactly; at item 2 (t = 0.5)
    # the loss is 0, finite, and its gradient 0/0 is NaN -- the case.
    if as_module:
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        w = lambda m: m(torch.ones(1, 1)).sum()  # noqa: E731
    else:
        model = {"weight": torch.ones(1)}
        w = lambda m: m["weight"].sum()  # noqa: E731
    data = [torch.tensor(0.0), torch.tensor(0.5), torch.tensor(0.0)]
    state = ft.setup(ft.Descent(0.5), model)
    with pytest.raises(ArithmeticError, match=r"weight.*data item 2 \(index 1\)"):
        ft.train_(lambda m, t: torch.sqrt((w(m) - t) ** 2), model, data, state)
    assert float(next(iter(ft.trainables(model))).detach().sum()) == 0.5  # item 2 not applied


def test_check_gradients_false_lets_a_nan_gradient_through():
    model = {"w": torch.zeros(1)}
    state = ft.setup(ft.Descent(0.1), model)
    ft.train_(lambda m, x: torch.sqrt(m["w"]).sum(), model, [None], state, check_gradients=False)
    assert not torch.isfinite(model["w"]).any()  # the infinite gradient went through
