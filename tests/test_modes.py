"""Flux's automatic train/test mode, trainmode_/testmode_, and the dropout layers."""

import pytest
import torch
from torch import nn

import fluxtrain as ft


def output_inside_gradient(model, x, how="gradient"):
    seen = {}

    def loss(m):
        seen["y"] = m(x)
        return seen["y"].sum()

    if how == "gradient":
        ft.gradient(loss, model)
    elif how == "withgradient":
        ft.withgradient(loss, model)
    else:
        ft.pullback(loss, model)
    return seen["y"].detach()


def has_zeros(y):
    return bool((y == 0).any())


@pytest.mark.parametrize("how", ["gradient", "withgradient", "pullback"])
def test_dropout_is_active_inside_gradient_only(how):
    model = ft.Chain(ft.Dense(10, 200, ft.relu, init=torch.ones), ft.Dropout(0.5))
    x = torch.ones(8, 10)
    assert not has_zeros(model(x))
    y = output_inside_gradient(model, x, how)
    assert has_zeros(y)
    assert not has_zeros(model(x))  # and back to test mode afterwards, nobody called anything


def test_dropout_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p():
    d = ft.Dropout(0.3)
    y = output_inside_gradient(d, torch.ones(100_000))
    frac = (y == 0).float().mean().item()
    assert abs(frac - 0.3) < 0.01
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.7))


def test_trainmode_forces_dropout_on_outside_gradient_and_none_returns_to_automatic():
    d = ft.Dropout(0.5)
    m = ft.Chain(ft.Dense(4, 4), d)
    x = torch.ones(100, 4)
    assert ft.trainmode_(m) is m
    assert d.active is True and has_zeros(d(torch.ones(1000)))
    ft.trainmode_(m, None)
    assert d.active is None and not has_zeros(d(torch.ones(1000)))
    ft.trainmode_(m, "auto")
    assert d.active is None
    ft.trainmode_(m, False)
    assert d.active is False
    # no dropout, even inside gradient
    torch.testing.assert_close(output_inside_gradient(m, x), m[0](x).detach())


def test_testmode_forces_dropout_off_inside_gradient_and_none_returns_to_automatic():
    d = ft.Dropout(0.5)
    ft.testmode_(d)
    assert d.active is False
    y = output_inside_gradient(d, torch.ones(1000))
    assert torch.equal(y, torch.ones(1000))
    ft.testmode_(d, None)
    assert d.active is None and has_zeros(output_inside_gradient(d, torch.ones(1000)))
    ft.testmode_(d, False)
    assert d.active is True


def test_batchnorm_follows_automatic_and_forced_modes():
    bn = ft.BatchNorm(2)
    x = torch.randn(16, 2) * 5 + 3
    bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(2))  # test mode outside gradient
    output_inside_gradient(bn, x)
    assert not torch.equal(bn.running_mean, torch.zeros(2))
    ft.testmode_(bn)
    before = bn.running_mean.clone()
    output_inside_gradient(bn, x)
    assert torch.equal(bn.running_mean, before)
    ft.trainmode_(bn)
    bn(x)
    assert not torch.equal(bn.running_mean, before)
    assert repr(bn).startswith("BatchNorm(2, active=True)")


def test_plain_torch_dropout_in_a_chain_follows_the_automatic_mode():
    m = ft.Chain(nn.Dropout(0.5))
    x = torch.ones(1000)
    assert not has_zeros(m(x))
    assert m.layers[0].training is False
    assert has_zeros(output_inside_gradient(m, x))
    assert not has_zeros(m(x))


def test_trainmode_and_testmode_set_torch_flags_and_are_not_overridden():
    inner = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    m = ft.Chain(inner, ft.Dropout(0.5))
    x = torch.ones(500, 2)
    ft.testmode_(m)
    assert not inner.training and not inner[1].training and not m.training
    torch.testing.assert_close(output_inside_gradient(m, x), inner[0](x).detach())
    assert not inner.training  # forced: the Chain did not switch it inside gradient
    ft.trainmode_(m)
    assert inner.training and inner[1].training
    assert has_zeros(inner[1](torch.ones(1000)))
    ft.trainmode_(m, None)
    m(torch.ones(3, 2))
    assert not inner.training  # automatic again: test mode outside gradient


def test_modes_work_on_trees_of_modules():
    tree = {"a": ft.Dropout(0.1), "b": [ft.BatchNorm(2), nn.Dropout(0.2)]}
    ft.trainmode_(tree)
    assert tree["a"].active and tree["b"][0].active and tree["b"][1].training
    ft.testmode_(tree)
    assert tree["a"].active is False and not tree["b"][1].training


def test_invalid_modes_and_probabilities_are_clear_errors():
    with pytest.raises(ValueError, match="mode must be"):
        ft.testmode_(ft.Dropout(0.1), "yes")
    with pytest.raises(ValueError, match="0 ≤ p ≤ 1"):
        ft.Dropout(1.5)
    with pytest.raises(ValueError, match="active must be"):
        ft.Dropout(0.1, active="on")


def test_dropout_dims_shares_the_mask_along_other_dimensions():
    d = ft.Dropout(0.5, dims=(0, 1), active=True)
    y = d(torch.ones(64, 8, 5, 5))
    per_channel = y.reshape(64, 8, 25)
    assert bool((per_channel == per_channel[:, :, :1]).all())  # whole channels dropped or kept
    assert has_zeros(y) and bool((y == 2).any())
    assert repr(d) == "Dropout(0.5, dims=(0, 1), active=True)"


def test_dropout_rng_makes_masks_reproducible():
    a = ft.Dropout(0.5, rng=torch.Generator().manual_seed(7), active=True)
    b = ft.Dropout(0.5, rng=torch.Generator().manual_seed(7), active=True)
    x = torch.ones(200)
    assert torch.equal(a(x), b(x))


def test_alphadropout_keeps_mean_and_std_and_is_inactive_outside_gradient():
    x = torch.randn(100_000)
    d = ft.AlphaDropout(0.2)
    assert torch.equal(d(x), x)
    y = output_inside_gradient(d, x)
    assert not torch.equal(y, x)
    assert abs(y.mean().item() - x.mean().item()) < 0.02
    assert abs(y.std().item() - x.std().item()) < 0.05
    # the dropped value: A * α' + B
    p, a1 = 0.2, ft.AlphaDropout.ALPHA_PRIME
    A = ((1 - p) * (1 + p * a1**2)) ** -0.5
    dropped = A * a1 - A * a1 * p
    assert bool(torch.isclose(y, torch.tensor(dropped)).any())


def test_trainmode_calls_a_users_train_override():
    calls = []

    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def train(self, mode=True):
            calls.append(mode)
            super().train(mode)
            self.bn.eval()  # a common pattern: keep BatchNorm statistics frozen
            return self

    m = ft.Chain(ft.Dense(2, 2), Frozen())
    ft.trainmode_(m)
    assert calls == [True] and not m.layers[1].bn.training
    ft.testmode_(m)
    assert calls == [True, False]
