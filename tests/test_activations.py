"""Activation functions against their formulas (NNlib.jl's definitions), computed independently."""

import math

import pytest
import torch

import fluxtrain as ft

X = torch.linspace(-6, 6, 49, dtype=torch.float64)

SELU_L = 1.0507009873554804934193349852946
SELU_A = 1.6732632423543772848170429916717


def _ref(f, x=X):
    return torch.tensor([f(float(v)) for v in x], dtype=x.dtype)


def _sig(v):
    return 1 / (1 + math.exp(-v))


def _softplus(v):
    return math.log(1 + math.exp(v))


FORMULAS = {
    "σ": _sig,
    "sigmoid": _sig,
    "relu": lambda v: max(0.0, v),
    "leakyrelu": lambda v: v if v > 0 else 0.01 * v,
    "relu6": lambda v: min(max(0.0, v), 6.0),
    "tanh": math.tanh,
    "hardtanh": lambda v: max(-1.0, min(1.0, v)),
    "hardσ": lambda v: max(0.0, min(1.0, (v + 3) / 6)),
    "logσ": lambda v: math.log(_sig(v)),
    "elu": lambda v: v if v >= 0 else math.exp(v) - 1,
    "celu": lambda v: v if v >= 0 else math.exp(v) - 1,
    "selu": lambda v: SELU_L * (v if v > 0 else SELU_A * (math.exp(v) - 1)),
    "gelu": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "gelu_erf": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
    "swish": lambda v: v * _sig(v),
    "hardswish": lambda v: v * max(0.0, min(1.0, (v + 3) / 6)),
    "lisht": lambda v: v * math.tanh(v),
    "softplus": _softplus,
    "softsign": lambda v: v / (1 + abs(v)),
    "logcosh": lambda v: math.log(math.cosh(v)),
    "mish": lambda v: v * math.tanh(_softplus(v)),
    "tanhshrink": lambda v: v - math.tanh(v),
    "softshrink": lambda v: v - 0.5 if v > 0.5 else (v + 0.5 if v < -0.5 else 0.0),
    "trelu": lambda v: v if v > 1 else 0.0,
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_its_formula(name):
    f = getattr(ft, name)
    torch.testing.assert_close(f(X), _ref(FORMULAS[name]), rtol=1e-12, atol=1e-12)


def test_leakyrelu_default_slope_is_flux_001_and_can_be_given():
    x = torch.tensor([-10.0, 2.0])
    assert ft.leakyrelu(x).tolist() == pytest.approx([-0.1, 2.0])
    assert ft.leakyrelu(x, 0.2).tolist() == pytest.approx([-2.0, 2.0])


def test_sigmoid_alias_is_the_same_function_and_prints_as_sigma():
    assert ft.sigmoid is ft.σ
    assert repr(ft.Dense(2, 3, ft.sigmoid)).startswith("Dense(2 => 3, σ)")


def test_softplus_is_stable_for_large_inputs():
    x = torch.tensor([-1000.0, 1000.0])
    assert ft.softplus(x).tolist() == [0.0, 1000.0]
    assert ft.logσ(torch.tensor([-1000.0])).item() == -1000.0


def test_softmax_normalises_the_feature_dimension_just_after_the_batch():
    x = torch.randn(4, 5, 3, 3)
    expected = x.exp() / x.exp().sum(dim=1, keepdim=True)
    torch.testing.assert_close(ft.softmax(x), expected)
    y = torch.randn(7, 10)
    torch.testing.assert_close(ft.softmax(y).sum(dim=1), torch.ones(7))
    torch.testing.assert_close(ft.logsoftmax(y), ft.softmax(y).log())


def test_softmax_of_a_single_vector_normalises_it():
    v = torch.tensor([1.0, 2.0, 3.0])
    e = torch.exp(v)
    torch.testing.assert_close(ft.softmax(v), e / e.sum())


def test_softmax_dims_can_be_chosen():
    x = torch.randn(3, 4)
    torch.testing.assert_close(ft.softmax(x, dims=0).sum(dim=0), torch.ones(4))
    torch.testing.assert_close(ft.logsumexp(x), torch.log(x.exp().sum(dim=1, keepdim=True)))


def test_activations_are_differentiable():
    x = torch.randn(6, dtype=torch.float64)
    for name in FORMULAS:
        f = getattr(ft, name)
        (g,) = ft.gradient(lambda t: f(t).sum(), x)  # noqa: B023 (used at once)
        assert g is not None and g.shape == x.shape, name
