"""Chain, Dense, SkipConnection, Parallel, Embedding, flatten and the initialisers."""

import math
import operator

import pytest
import torch
from torch import nn

import fluxtrain as ft


def grad_at(tree, path):
    node = tree
    for k in path:
        node = node[k]
    return node


def assert_every_parameter_gets_a_gradient(model, loss):
    (g,) = ft.gradient(loss, model)
    params = ft.trainables(model, path=True)
    assert params
    for path, p in params:
        gp = grad_at(g, path)
        assert gp is not None, f"no gradient for {path}"
        assert gp.shape == p.shape
        assert bool(gp.abs().sum() > 0), f"zero gradient for {path}"


# ---------------------------------------------------------------------------------------------
# Dense


def test_dense_matches_torch_linear_with_copied_weights():
    d = ft.Dense(5, 3, ft.relu)
    lin = nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.copy_(d.weight)
        d.bias.copy_(torch.randn(3))
        lin.bias.copy_(d.bias)
    for shape in [(7, 5), (2, 4, 5), (5,)]:
        x = torch.randn(shape)
        torch.testing.assert_close(d(x), torch.relu(lin(x)))


def test_dense_weight_is_out_by_in_and_acts_on_the_last_dimension():
    d = ft.Dense(784, 32, ft.σ)
    assert d.weight.shape == (32, 784) and d.bias.shape == (32,)
    assert d(torch.rand(16, 784)).shape == (16, 32)


def test_dense_accepts_flux_pair_form_and_keyword_activation():
    a = ft.Dense((784, 32), ft.σ)
    b = ft.Dense(784, 32, act=ft.σ)
    for d in (a, b):
        assert d.weight.shape == (32, 784) and d.act is ft.σ
    with pytest.raises(TypeError, match="both"):
        ft.Dense(2, 3, ft.relu, act=ft.relu)
    with pytest.raises(TypeError, match="Dense"):
        ft.Dense("784 => 32")
    with pytest.raises(ValueError, match="positive"):
        ft.Dense(0, 3)


def test_glorot_uniform_is_flux_formula_rand_minus_half_times_sqrt_24_over_fans():
    torch.manual_seed(1)
    w = ft.glorot_uniform(3, 4)
    torch.manual_seed(1)
    u = torch.rand(3, 4)
    torch.testing.assert_close(w, (u - 0.5) * math.sqrt(24 / 7))
    # conv-shaped kernels count the receptive field in both fans
    torch.manual_seed(2)
    w = ft.glorot_uniform(16, 3, 5, 5)
    torch.manual_seed(2)
    u = torch.rand(16, 3, 5, 5)
    torch.testing.assert_close(w, (u - 0.5) * math.sqrt(24 / (3 * 25 + 16 * 25)))


def test_dense_default_init_is_glorot_uniform_and_bias_zero():
    torch.manual_seed(3)
    d = ft.Dense(20, 30)
    torch.manual_seed(3)
    torch.testing.assert_close(d.weight.data, ft.glorot_uniform(30, 20))
    assert bool((d.bias == 0).all())


def test_dense_init_is_called_with_the_shape_and_bias_can_be_removed_or_given():
    calls = []

    def init(*shape):
        calls.append(shape)
        return torch.full(shape, 0.5)

    d = ft.Dense(2, 3, init=init, bias=False)
    assert calls == [(3, 2)]
    assert d.bias is None and len(ft.trainables(d)) == 1
    assert d(torch.ones(1, 2)).tolist() == [[1.0, 1.0, 1.0]]
    assert repr(d).startswith("Dense(2 => 3; bias=False)")
    e = ft.Dense(2, 3, init=torch.ones, bias=torch.tensor([1.0, 2.0, 3.0]))
    assert e(torch.zeros(1, 2)).tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="shape"):
        ft.Dense(2, 3, init=lambda *s: torch.ones(2))


def test_dense_takes_bias_positionally_in_the_order_of_its_signature():
    d = ft.Dense(2, 3, ft.relu, False)
    assert d.bias is None and d.act is ft.relu
    with pytest.raises(TypeError, match="too many"):
        ft.Dense(2, 3, ft.relu, False, 1)


def test_dense_from_a_weight_matrix():
    d = ft.Dense(torch.ones(3, 2), False, ft.relu)
    assert d.bias is None and d.act is ft.relu
    assert d(torch.ones(4, 2)).tolist() == [[2.0] * 3] * 4


def test_dense_input_size_mismatch_names_layer_and_shape():
    with pytest.raises(ValueError, match=r"Dense\(784 => 32\).*784.*\(32, 28, 28\)"):
        ft.Dense(784, 32)(torch.rand(32, 28, 28))


def test_dense_converts_float64_input_with_a_warning_like_flux():
    d = ft.Dense(2, 3)
    import fluxtrain.layers.core as core

    core._warned.clear()
    with pytest.warns(UserWarning, match="float64 input"):
        y = d(torch.ones(1, 2, dtype=torch.float64))
    assert y.dtype == torch.float32
    assert d(torch.ones(1, 2, dtype=torch.int64)).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Chain


def test_chain_applies_layers_in_order():
    c = ft.Chain(lambda x: x + 1, lambda x: x * 3, ft.relu)
    assert c(torch.tensor([1.0, -5.0])).tolist() == [6.0, 0.0]


def test_chain_indexing_slicing_len_and_iteration():
    d1, d2 = ft.Dense(4, 3), ft.Dense(3, 2)
    c = ft.Chain(d1, d2, ft.softmax)
    assert c[0] is d1 and c[1] is d2 and c[2] is ft.softmax and c[-1] is ft.softmax
    assert len(c) == 3 and list(c) == [d1, d2, ft.softmax]
    head = c[0:2]
    assert isinstance(head, ft.Chain) and len(head) == 2 and head[0] is d1
    x = torch.randn(5, 4)
    torch.testing.assert_close(c(x), ft.softmax(head(x)))
    with pytest.raises(IndexError, match="out of range"):
        c[3]


def test_chain_layers_are_a_module_list_so_state_and_gradient_mirror_them():
    c = ft.Chain(ft.Dense(4, 3), ft.Dense(3, 2), ft.softmax)
    assert isinstance(c.layers, nn.ModuleList)
    st = ft.setup(ft.Adam(), c)
    assert isinstance(st.layers[0].weight, ft.Leaf)
    (g,) = ft.gradient(lambda m: m(torch.randn(5, 4))[:, 0].sum(), c)
    assert g.layers[0].weight.shape == (3, 4)
    assert g.layers[1].bias.shape == (2,)


def test_named_chain_gives_setup_layers_enc_and_attribute_access():
    enc, dec = ft.Chain(ft.Dense(4, 3), ft.relu), ft.Dense(3, 4)
    bimodel = ft.Chain(enc=enc, dec=dec)
    assert isinstance(bimodel.layers, nn.ModuleDict)
    assert bimodel.enc is enc and bimodel["dec"] is dec and bimodel[0] is enc
    opt_state = ft.setup(ft.Adam(0.02), bimodel)
    ft.adjust_(opt_state.layers.enc, 0.03)
    assert opt_state.layers.enc.layers[0].weight.rule.eta == 0.03
    assert opt_state.layers.dec.weight.rule.eta == 0.02
    (g,) = ft.gradient(lambda m: m(torch.randn(2, 4)).sum(), bimodel)
    assert g.layers.enc.layers[0].weight.shape == (3, 4)
    assert list(bimodel[0:1].layers.keys()) == ["enc"]


def test_chain_accepts_a_list_and_nests_lists():
    c = ft.Chain([ft.Dense(2, 3), ft.relu])
    assert len(c) == 2
    named = ft.Chain(enc=[ft.Dense(2, 3), ft.relu], dec=ft.Dense(3, 2))
    assert isinstance(named.enc, ft.Chain) and named(torch.ones(1, 2)).shape == (1, 2)
    with pytest.raises(TypeError, match="either"):
        ft.Chain(ft.Dense(2, 3), dec=ft.Dense(3, 2))
    with pytest.raises(TypeError, match="Module or a function"):
        ft.Chain(3)


def test_chain_gradients_reach_every_parameter():
    c = ft.Chain(ft.Dense(4, 8, ft.relu), ft.Dense(8, 3), ft.softmax)
    x = torch.randn(6, 4)
    assert_every_parameter_gets_a_gradient(c, lambda m: (m(x) * torch.arange(3.0)).sum())


# ---------------------------------------------------------------------------------------------
# SkipConnection, Parallel, Embedding, flatten


def test_skipconnection_adds_the_input():
    d = ft.Dense(3, 3)
    s = ft.SkipConnection(d, operator.add)
    x = torch.randn(4, 3)
    torch.testing.assert_close(s(x), d(x) + x)
    cat = ft.SkipConnection(ft.Dense(3, 2), lambda mx, x: torch.cat((mx, x), dim=1))
    assert cat(x).shape == (4, 5)
    assert_every_parameter_gets_a_gradient(s, lambda m: m(x).sum())


def test_parallel_one_input_many_inputs_and_named():
    a, b = ft.Dense(2, 3), ft.Dense(2, 4)
    p = ft.Parallel(lambda *ys: torch.cat(ys, dim=1), a, b)
    x1, x2 = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(p(x1), torch.cat((a(x1), b(x1)), dim=1))
    torch.testing.assert_close(p(x1, x2), torch.cat((a(x1), b(x2)), dim=1))
    torch.testing.assert_close(p((x1, x2)), torch.cat((a(x1), b(x2)), dim=1))
    single = ft.Parallel(operator.add, a)
    torch.testing.assert_close(single(x1, x2), a(x1) + a(x2))
    named = ft.Parallel(None, left=a, right=b)
    ya, yb = named(x1)
    torch.testing.assert_close(ya, a(x1))
    torch.testing.assert_close(yb, b(x1))
    assert named["left"] is a and named.right is b
    assert ft.setup(ft.Descent(), named).layers.right.weight is not None
    with pytest.raises(ValueError, match="2 layers got 3 inputs"):
        p(x1, x2, x1)
    assert_every_parameter_gets_a_gradient(p, lambda m: m(x1, x2).sum())


def test_embedding_matches_torch_and_takes_one_hot_rows():
    e = ft.Embedding(10, 4)
    ref = nn.Embedding(10, 4)
    with torch.no_grad():
        ref.weight.copy_(e.weight)
    idx = torch.tensor([[0, 3, 9], [2, 2, 1]])
    torch.testing.assert_close(e(idx), ref(idx))
    onehot = torch.nn.functional.one_hot(idx, 10).float()
    torch.testing.assert_close(e(onehot), ref(idx))
    e2 = ft.Embedding((26, 5))
    assert e2.weight.shape == (26, 5)
    with pytest.raises(IndexError, match=r"0\.\.9"):
        e(torch.tensor([10]))
    assert_every_parameter_gets_a_gradient(e, lambda m: m(torch.arange(10)).pow(2).sum())


def test_flatten_keeps_the_batch_dimension_first():
    x = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert ft.flatten(x).shape == (2, 12)
    assert ft.flatten(x)[1].tolist() == x[1].reshape(-1).tolist()
    c = ft.Chain(ft.flatten, ft.Dense(12, 2))
    assert c(x).shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# Scale, Maxout, Bilinear


def test_scale_is_elementwise_affine_over_the_last_dimensions():
    s = ft.Scale(2, 3, ft.relu)
    with torch.no_grad():
        s.scale.copy_(torch.randn(2, 3))
        s.bias.copy_(torch.randn(2, 3))
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(s(x), torch.relu(x * s.scale + s.bias))
    assert ft.Scale(3, bias=False).bias is None
    with pytest.raises(ValueError, match=r"last dimensions are \(2, 3\)"):
        s(torch.randn(4, 3, 2))
    assert_every_parameter_gets_a_gradient(ft.Scale(3), lambda m: (m(x[:, 0]) * x[:, 1]).sum())


def test_maxout_takes_the_elementwise_maximum_of_its_layers():
    a, b = ft.Dense(3, 2), ft.Dense(3, 2)
    m = ft.Maxout(a, b)
    x = torch.randn(5, 3)
    torch.testing.assert_close(m(x), torch.maximum(a(x), b(x)))
    made = ft.Maxout(lambda: ft.Dense(3, 2), 3)
    assert len(made.layers) == 3 and made.layers[0] is not made.layers[1]


def test_bilinear_matches_torch_bilinear():
    ours = ft.Bilinear((4, 5), 3, ft.tanh)
    theirs = nn.Bilinear(4, 5, 3)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        ours.bias.copy_(torch.randn(3))
        theirs.bias.copy_(ours.bias)
    x, y = torch.randn(6, 4), torch.randn(6, 5)
    torch.testing.assert_close(ours(x, y), torch.tanh(theirs(x, y)))
    torch.testing.assert_close(ours((x, y)), ours(x, y))
    square = ft.Bilinear(4, 2)
    torch.testing.assert_close(square(x), square(x, x))
    assert square._flux_line() == "Bilinear((4, 4) => 2)"
    assert_every_parameter_gets_a_gradient(ours, lambda m: m(x, y).sum())


def test_reserved_names_are_refused_for_named_layers():
    with pytest.raises(ValueError, match="reserved"):
        ft.Chain(layers=ft.Dense(2, 2))
    with pytest.raises(ValueError, match="reserved"):
        ft.Chain(named=ft.Dense(2, 2))
    with pytest.raises(ValueError, match="reserved"):
        ft.Parallel(None, layers=ft.Dense(2, 2))
