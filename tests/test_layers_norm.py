"""BatchNorm, InstanceNorm, LayerNorm, GroupNorm against torch's layers, in both modes."""

import pytest
import torch
from tests.test_layers_basic import assert_every_parameter_gets_a_gradient
from torch import nn

import fluxtrain as ft


def run_in_gradient(model, x):
    """The output of ``model(x)`` computed inside ft.gradient (Flux's training mode)."""
    out = {}

    def loss(m):
        out["y"] = m(x)
        return out["y"].sum()

    ft.gradient(loss, model)
    return out["y"].detach()


def randomise_affine(ours, theirs):
    with torch.no_grad():
        ours.weight.copy_(torch.rand_like(ours.weight) + 0.5)
        ours.bias.copy_(torch.randn_like(ours.bias))
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)


@pytest.mark.parametrize("shape", [(16, 3), (8, 3, 5, 4)])
def test_batchnorm_inside_gradient_matches_torch_training_and_updates_running_stats(shape):
    ours = ft.BatchNorm(3)
    theirs = nn.BatchNorm2d(3) if len(shape) == 4 else nn.BatchNorm1d(3)
    randomise_affine(ours, theirs)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(run_in_gradient(ours, x), theirs.train()(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    # hand check of Flux's update: momentum 0.1, unbiased variance
    dims = [0] + list(range(2, len(shape)))
    mu = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=True)
    torch.testing.assert_close(ours.running_mean, 0.9 * torch.zeros(3) + 0.1 * mu)
    torch.testing.assert_close(ours.running_var, 0.9 * torch.ones(3) + 0.1 * var)


def test_batchnorm_outside_gradient_uses_running_stats_like_torch_eval():
    ours = ft.BatchNorm(3, ft.relu)
    theirs = nn.BatchNorm2d(3)
    randomise_affine(ours, theirs)
    with torch.no_grad():
        ours.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        ours.running_var.copy_(torch.tensor([2.0, 0.5, 3.0]))
        theirs.running_mean.copy_(ours.running_mean)
        theirs.running_var.copy_(ours.running_var)
    x = torch.randn(4, 3, 2, 2)
    before = ours.running_mean.clone()
    torch.testing.assert_close(ours(x), torch.relu(theirs.eval()(x)))
    assert torch.equal(ours.running_mean, before)  # no update outside gradient


def test_batchnorm_without_tracked_stats_always_uses_the_batch():
    bn = ft.BatchNorm(2, track_stats=False, affine=False)
    x = torch.randn(10, 2) * 4 + 3
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(2), atol=1e-5, rtol=0)
    assert bn.running_mean is None and ft.trainables(bn) == []


def test_batchnorm_running_stats_are_not_trainable_but_are_counted():
    bn = ft.BatchNorm(4)
    assert [str(p) for p, _ in ft.trainables(bn, path=True)] == ["weight", "bias"]
    s = ft.summary(bn)
    assert (s.trainable_arrays, s.trainable_params) == (2, 8)
    assert (s.nontrainable_arrays, s.nontrainable_params) == (2, 8)


def test_batchnorm_loads_a_torch_state_dict_and_checks_channels():
    theirs = nn.BatchNorm2d(3)
    theirs.train()(torch.randn(4, 3, 2, 2))
    ours = ft.BatchNorm(3)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) expects 3 channels in dimension 1"):
        ours(torch.randn(4, 5))


def test_instancenorm_matches_torch_in_both_modes():
    ours = ft.InstanceNorm(3, affine=True, track_stats=True)
    theirs = nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    randomise_affine(ours, theirs)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    torch.testing.assert_close(run_in_gradient(ours, x), theirs.train()(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(ours(x), theirs.eval()(x))
    plain = ft.InstanceNorm(3)  # Flux's defaults: no affine, no tracked stats
    torch.testing.assert_close(plain(x), nn.InstanceNorm2d(3)(x))


def test_layernorm_matches_torch_over_the_last_dimensions():
    ours = ft.LayerNorm(4, 5)
    theirs = nn.LayerNorm((4, 5))
    randomise_affine(ours, theirs)
    x = torch.randn(3, 4, 5) * 2
    torch.testing.assert_close(ours(x), theirs(x))
    act = ft.LayerNorm((5,), ft.relu, affine=False)
    torch.testing.assert_close(act(x), torch.relu(nn.LayerNorm(5, elementwise_affine=False)(x)))
    with pytest.raises(ValueError, match=r"last dimensions are \(4, 5\)"):
        ours(torch.randn(3, 5, 4))


def test_groupnorm_matches_torch():
    ours = ft.GroupNorm(6, 3)
    theirs = nn.GroupNorm(3, 6)
    randomise_affine(ours, theirs)
    x = torch.randn(2, 6, 4, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="must divide"):
        ft.GroupNorm(6, 4)


def test_gradients_flow_through_normalisation_layers():
    x = torch.randn(4, 6, 3, 3)
    model = ft.Chain(
        ft.BatchNorm(6, ft.relu),
        ft.GroupNorm(6, 2),
        ft.InstanceNorm(6, affine=True),
        ft.LayerNorm(3, 3),
    )
    w = torch.randn(4, 6, 3, 3)
    assert_every_parameter_gets_a_gradient(model, lambda m: (m(x) * w).sum())
