"""Conv, ConvTranspose and pooling layers against torch's layers with copied weights."""

import pytest
import torch
import torch.nn.functional as F
from tests.test_layers_basic import assert_every_parameter_gets_a_gradient
from torch import nn

import fluxtrain as ft


def copy_conv(ours, theirs):
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        if ours.bias is not None:
            ours.bias.copy_(torch.randn_like(ours.bias))
            theirs.bias.copy_(ours.bias)


@pytest.mark.parametrize(
    "stride,pad,dilation,groups",
    [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, (1, 0), 1, 2), (3, 1, (1, 2), 4)],
)
def test_conv2d_matches_torch_conv2d(stride, pad, dilation, groups):
    ours = ft.Conv((3, 3), (4, 8), stride=stride, pad=pad, dilation=dilation, groups=groups)
    theirs = nn.Conv2d(4, 8, 3, stride=stride, padding=pad, dilation=dilation, groups=groups)
    copy_conv(ours, theirs)
    assert ours.weight.shape == theirs.weight.shape == (8, 4 // groups, 3, 3)
    x = torch.randn(2, 4, 11, 10)
    torch.testing.assert_close(ours(x), theirs(x))


def test_conv_1d_and_3d_match_torch_and_activation_applies():
    c1 = ft.Conv((5,), 3, 2, ft.relu, pad=2)
    t1 = nn.Conv1d(3, 2, 5, padding=2)
    copy_conv(c1, t1)
    x = torch.randn(4, 3, 9)
    torch.testing.assert_close(c1(x), torch.relu(t1(x)))
    c3 = ft.Conv((2, 3, 2), (2, 3), stride=(1, 2, 1))
    t3 = nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1))
    copy_conv(c3, t3)
    x = torch.randn(2, 2, 5, 6, 4)
    torch.testing.assert_close(c3(x), t3(x))


def test_conv_asymmetric_pad_is_lo_hi_per_dimension_in_kernel_order():
    c = ft.Conv((3, 3), (1, 1), pad=(1, 0, 2, 1), bias=False)
    x = torch.randn(1, 1, 6, 6)
    ref = F.conv2d(F.pad(x, (2, 1, 1, 0)), c.weight)  # F.pad: (w_lo, w_hi, h_lo, h_hi)
    torch.testing.assert_close(c(x), ref)
    assert c(x).shape == (1, 1, 5, 7)


@pytest.mark.parametrize("k,dilation", [((3, 3), 1), ((4, 2), 1), ((3, 5), 2)])
def test_samepad_keeps_size_and_puts_odd_padding_low(k, dilation):
    c = ft.Conv(k, (2, 3), pad=ft.SamePad(), dilation=dilation)
    assert c(torch.randn(2, 2, 9, 8)).shape == (2, 3, 9, 8)
    total = [(ki - 1) * dilation for ki in k]
    assert c.pad == tuple(((t + 1) // 2, t // 2) for t in total)
    strided = ft.Conv((3, 3), (2, 3), pad=ft.SamePad(), stride=2)
    assert strided(torch.randn(1, 2, 9, 8)).shape == (1, 3, 5, 4)


def test_conv_errors_name_the_problem():
    with pytest.raises(TypeError, match="tuple"):
        ft.Conv(3, (1, 2))
    with pytest.raises(ValueError, match="groups=3"):
        ft.Conv((3, 3), (4, 8), groups=3)
    c = ft.Conv((3, 3), (1, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, \.\.\., \.\.\.\).*\(28, 28\)"):
        c(torch.randn(28, 28))


@pytest.mark.parametrize(
    "stride,pad,outpad,dilation,groups",
    [(1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (2, 0, 0, 2, 2), (3, 2, 1, 1, 1)],
)
def test_convtranspose_matches_torch(stride, pad, outpad, dilation, groups):
    ours = ft.ConvTranspose(
        (3, 3), (4, 6), stride=stride, pad=pad, outpad=outpad, dilation=dilation, groups=groups
    )
    theirs = nn.ConvTranspose2d(
        4, 6, 3, stride=stride, padding=pad, output_padding=outpad, dilation=dilation,
        groups=groups,
    )  # fmt: skip
    assert ours.weight.shape == theirs.weight.shape == (4, 6 // groups, 3, 3)
    copy_conv(ours, theirs)
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(ours(x), theirs(x))


def test_convtranspose_samepad_multiplies_size_by_stride_and_asymmetric_crop():
    for k, s in [((4, 4), 2), ((3, 3), 2), ((2, 2), 2), ((1, 1), 3)]:
        c = ft.ConvTranspose(k, (2, 3), stride=s, pad=ft.SamePad())
        assert c(torch.randn(1, 2, 5, 7)).shape == (1, 3, 5 * s, 7 * s), (k, s)
    # asymmetric pad crops (lo, hi) from the full transposed convolution
    c = ft.ConvTranspose((3, 3), (1, 1), stride=2, pad=(1, 0, 0, 2))
    x = torch.randn(1, 1, 4, 4)
    full = F.conv_transpose2d(x, c.weight, c.bias, stride=2)
    torch.testing.assert_close(c(x), full[:, :, 1:, : full.shape[3] - 2])


def test_maxpool_matches_torch_including_padding_and_stride():
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(ft.MaxPool((2, 2))(x), nn.MaxPool2d(2)(x))
    torch.testing.assert_close(
        ft.MaxPool((3, 3), pad=1, stride=2)(x), nn.MaxPool2d(3, stride=2, padding=1)(x)
    )
    torch.testing.assert_close(ft.MaxPool((3,))(x[:, :, 0]), nn.MaxPool1d(3)(x[:, :, 0]))


def test_meanpool_matches_torch_counting_padding():
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(ft.MeanPool((2, 2))(x), nn.AvgPool2d(2)(x))
    ref = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)(x)
    torch.testing.assert_close(ft.MeanPool((3, 3), pad=1, stride=2)(x), ref)


def test_adaptive_and_global_pools_match_torch():
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(ft.AdaptiveMeanPool((4, 3))(x), nn.AdaptiveAvgPool2d((4, 3))(x))
    torch.testing.assert_close(ft.AdaptiveMaxPool((2, 2))(x), nn.AdaptiveMaxPool2d((2, 2))(x))
    torch.testing.assert_close(ft.GlobalMeanPool()(x), x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(ft.GlobalMaxPool()(x), nn.AdaptiveMaxPool2d(1)(x))
    assert ft.flatten(ft.GlobalMeanPool()(x)).shape == (2, 3)


def test_gradients_flow_through_conv_layers_and_pools():
    x = torch.randn(2, 2, 8, 8)
    model = ft.Chain(
        ft.Conv((3, 3), (2, 4), ft.relu, pad=ft.SamePad()),
        ft.MaxPool((2, 2)),
        ft.ConvTranspose((2, 2), (4, 3), stride=2),
        ft.MeanPool((2, 2)),
        ft.AdaptiveMaxPool((2, 2)),
        ft.GlobalMeanPool(),
        ft.flatten,
        ft.Dense(3, 2),
    )
    assert model(x).shape == (2, 2)
    assert_every_parameter_gets_a_gradient(model, lambda m: m(x).pow(2).sum())


def test_upsample_matches_torch_interpolation():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(ft.Upsample(scale=2)(x), nn.Upsample(scale_factor=2)(x))
    torch.testing.assert_close(ft.Upsample(3)(x), nn.Upsample(scale_factor=3)(x))
    ref = nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True)(x)
    torch.testing.assert_close(ft.Upsample("bilinear", size=(7, 9))(x), ref)
    with pytest.raises(ValueError, match="exactly one"):
        ft.Upsample()
    with pytest.raises(ValueError, match="2 spatial"):
        ft.Upsample("bilinear", scale=2)(torch.randn(2, 3, 4))


def test_pixelshuffle_matches_torch():
    x = torch.randn(2, 12, 3, 4)
    torch.testing.assert_close(ft.PixelShuffle(2)(x), nn.PixelShuffle(2)(x))


def test_pad_stride_and_pool_errors_name_the_argument():
    with pytest.raises(ValueError, match="pad must be an int, 2 or 4 ints"):
        ft.Conv((3, 3), (1, 1), pad=(1, 2, 3))
    with pytest.raises(ValueError, match="stride must be an int or 2"):
        ft.Conv((3, 3), (1, 1), stride=(1, 2, 3))
    with pytest.raises(ValueError, match="at least 1"):
        ft.MaxPool((2, 2), stride=0)
    with pytest.raises(ValueError, match=r"MaxPool\(\(2, 2\)\) expects input \(N, C, 2 spatial"):
        ft.MaxPool((2, 2))(torch.randn(3, 4, 5))
