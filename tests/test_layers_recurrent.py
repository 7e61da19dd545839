"""RNN, LSTM and GRU cells and sequence layers against torch's with copied weights.

Flux's cells have one bias; torch's have two (input and recurrent). With torch's recurrent bias
set to zero the two compute the same functions (for the GRU this is exactly Flux's v1 variant).
"""

import pytest
import torch
from tests.test_layers_basic import assert_every_parameter_gets_a_gradient
from torch import nn

import fluxtrain as ft


def copy_cell(ours, theirs):
    with torch.no_grad():
        ours.bias.copy_(torch.randn_like(ours.bias))
        theirs.weight_ih.copy_(ours.Wi)
        theirs.weight_hh.copy_(ours.Wh)
        theirs.bias_ih.copy_(ours.bias)
        theirs.bias_hh.zero_()


def copy_seq(ours, theirs):
    cell = ours.cell
    with torch.no_grad():
        cell.bias.copy_(torch.randn_like(cell.bias))
        theirs.weight_ih_l0.copy_(cell.Wi)
        theirs.weight_hh_l0.copy_(cell.Wh)
        theirs.bias_ih_l0.copy_(cell.bias)
        theirs.bias_hh_l0.zero_()


def test_rnncell_matches_torch_rnncell():
    ours, theirs = ft.RNNCell(3, 5), nn.RNNCell(3, 5)
    copy_cell(ours, theirs)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    torch.testing.assert_close(ours(x, h), theirs(x, h))
    torch.testing.assert_close(ours(x), theirs(x))  # zero initial state
    relu = ft.RNNCell((3, 5), ft.relu)
    t_relu = nn.RNNCell(3, 5, nonlinearity="relu")
    copy_cell(relu, t_relu)
    torch.testing.assert_close(relu(x, h), t_relu(x, h))


def test_lstmcell_matches_torch_lstmcell_with_gates_in_torch_order():
    ours, theirs = ft.LSTMCell(3, 5), nn.LSTMCell(3, 5)
    assert ours.Wi.shape == (20, 3) and ours.Wh.shape == (20, 5)
    copy_cell(ours, theirs)
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    h1, c1 = ours(x, (h, c))
    th, tc = theirs(x, (h, c))
    torch.testing.assert_close(h1, th)
    torch.testing.assert_close(c1, tc)


def test_grucell_matches_torch_grucell_with_zero_recurrent_bias():
    ours, theirs = ft.GRUCell(3, 5), nn.GRUCell(3, 5)
    copy_cell(ours, theirs)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    torch.testing.assert_close(ours(x, h), theirs(x, h))
    # one sample without batch dimension
    torch.testing.assert_close(ours(x[0], h[0]), theirs(x[:1], h[:1])[0])


@pytest.mark.parametrize(
    "ours_t,theirs_t", [(ft.RNN, nn.RNN), (ft.LSTM, nn.LSTM), (ft.GRU, nn.GRU)]
)
def test_sequence_layers_match_torch_batch_first(ours_t, theirs_t):
    ours, theirs = ours_t(3, 4), theirs_t(3, 4, batch_first=True)
    copy_seq(ours, theirs)
    x = torch.randn(2, 6, 3)
    y, _ = theirs(x)
    torch.testing.assert_close(ours(x), y)
    # unbatched (T, in)
    torch.testing.assert_close(ours(x[0]), theirs(x[:1])[0][0])


def test_sequence_layers_take_an_initial_state():
    rnn, ref = ft.RNN(3, 4), nn.RNN(3, 4, batch_first=True)
    copy_seq(rnn, ref)
    x, h0 = torch.randn(2, 5, 3), torch.randn(2, 4)
    torch.testing.assert_close(rnn(x, h0), ref(x, h0[None])[0])
    lstm, lref = ft.LSTM(3, 4), nn.LSTM(3, 4, batch_first=True)
    copy_seq(lstm, lref)
    c0 = torch.randn(2, 4)
    torch.testing.assert_close(lstm(x, (h0, c0)), lref(x, (h0[None], c0[None]))[0])


def test_recurrent_reprs_and_errors():
    assert repr(ft.LSTM(2, 3)) == "LSTM(2 => 3)        # 72 parameters"
    assert ft.RNNCell(2, 3, ft.relu)._flux_line() == "RNNCell(2 => 3, relu)"
    assert ft.GRUCell((2, 3))._flux_line() == "GRUCell(2 => 3)"
    with pytest.raises(ValueError, match="3 features"):
        ft.GRU(3, 4)(torch.randn(2, 5, 4))


def test_gradients_flow_through_recurrent_layers():
    x = torch.randn(2, 5, 3)
    for layer in (ft.RNN(3, 4), ft.LSTM(3, 4), ft.GRU(3, 4)):
        assert_every_parameter_gets_a_gradient(layer, lambda m: m(x).pow(2).sum())
    cell = ft.LSTMCell(3, 4)
    state = (torch.randn(2, 4), torch.randn(2, 4))  # Wh sees nothing from a zero state
    assert_every_parameter_gets_a_gradient(
        cell, lambda m: sum(t.pow(2).sum() for t in m(x[:, 0], state))
    )


def test_return_state_gives_the_final_state_like_torch():
    lstm, ref = ft.LSTM(3, 4, return_state=True), nn.LSTM(3, 4, batch_first=True)
    copy_seq(lstm, ref)
    x = torch.randn(2, 5, 3)
    ys, (h, c) = lstm(x)
    ry, (rh, rc) = ref(x)
    torch.testing.assert_close(ys, ry)
    torch.testing.assert_close(h, rh[0])
    torch.testing.assert_close(c, rc[0])
    assert lstm._flux_line() == "LSTM(3 => 4, return_state=True)"


def test_recurrence_runs_any_cell_module_over_time():
    cell = nn.GRUCell(3, 4)
    ref = nn.GRU(3, 4, batch_first=True)
    with torch.no_grad():
        for a, b in [("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0")]:
            getattr(ref, b).copy_(getattr(cell, a))
        for a, b in [("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")]:
            getattr(ref, b).copy_(getattr(cell, a))
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(ft.Recurrence(cell)(x), ref(x)[0])
    ys, h = ft.Recurrence(cell, return_state=True)(x, torch.zeros(2, 4))
    torch.testing.assert_close(ys, ref(x)[0])
    torch.testing.assert_close(h, ref(x)[1][0])
    with pytest.raises(TypeError, match="cell module"):
        ft.Recurrence(lambda x, h: h)


def _state(layer, n):
    shape = (n, 4) if n else (4,)
    if isinstance(layer, ft.LSTM):
        return (torch.randn(shape), torch.randn(shape))
    return torch.randn(shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ft.LSTM(3, 4, return_state=True),
        lambda: ft.GRU(3, 4, return_state=True),
        lambda: ft.RNN(3, 4, return_state=True),
        lambda: ft.RNN(3, 4, ft.relu, return_state=True),
        lambda: ft.LSTM(3, 4, return_state=True, bias=False),
        lambda: ft.GRU(3, 4, return_state=True, bias=False),
    ],
)
@pytest.mark.parametrize("n", [2, 0])
def test_fused_sequence_kernels_equal_the_step_by_step_recurrence(make, n):
    layer = make()
    if layer.cell.bias is not None:
        with torch.no_grad():
            layer.cell.bias.copy_(torch.randn_like(layer.cell.bias))
    stepwise = ft.Recurrence(layer.cell, return_state=True)
    x = torch.randn(n, 5, 3) if n else torch.randn(5, 3)
    s = _state(layer, n)
    ys, final = layer(x, s)
    ys2, final2 = stepwise(x, s)
    torch.testing.assert_close(ys, ys2)
    torch.testing.assert_close(final, final2)
    (g1,) = ft.gradient(lambda m: m(x, s)[0].pow(2).sum(), layer)
    (g2,) = ft.gradient(lambda m: m(x, s)[0].pow(2).sum(), stepwise)
    torch.testing.assert_close(g1.cell.Wh, g2.cell.Wh)
    torch.testing.assert_close(g1.cell.Wi, g2.cell.Wi)


def test_rnn_with_another_activation_runs_step_by_step():
    rnn = ft.RNN(3, 4, ft.σ)
    x = torch.randn(2, 5, 3)
    h = torch.zeros(2, 4)
    for t in range(5):
        h = torch.sigmoid(x[:, t] @ rnn.cell.Wi.T + rnn.cell.bias + h @ rnn.cell.Wh.T)
    torch.testing.assert_close(rnn(x)[:, -1], h)
