"""Convolution and pooling layers (Flux.jl ``src/layers/conv.jl``), in PyTorch's layout.

Input is ``(N, C, spatial...)``, batch first and channels second (Flux: ``(spatial..., C, N)``);
1, 2 or 3 spatial dimensions, as many as the kernel has.  Weights are PyTorch's:
``(out, in // groups, k...)`` for [`Conv`][fluxtrain.layers.Conv], ``(in, out // groups, k...)`` for
[`ConvTranspose`][fluxtrain.layers.ConvTranspose], and these layers compute PyTorch's cross-correlation (Flux's ``Conv``
flips the kernel; weights copied from Julia need ``flip`` on the spatial dimensions).

``pad`` as in Flux: an int (all sides), one int per spatial dimension (both sides), two per
spatial dimension ``(lo1, hi1, lo2, hi2, ...)`` in the kernel's dimension order, or
[`SamePad`][fluxtrain.layers.SamePad].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .basic import _init_tensor, _make_bias
from .core import Layer, act_or_identity, act_suffix, in_out, match_input
from .init import glorot_uniform

__all__ = [
    "AdaptiveMaxPool",
    "AdaptiveMeanPool",
    "Conv",
    "ConvTranspose",
    "GlobalMaxPool",
    "GlobalMeanPool",
    "MaxPool",
    "MeanPool",
    "SamePad",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXP = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGP = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_AMAXP = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_AAVGP = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


class SamePad:
    """Padding that keeps the spatial size at stride 1 (``ceil(size / stride)`` in general): a
    total of ``(k - 1) * dilation`` per dimension, the odd one extra on the low side (Flux's
    ``SamePad()``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.Conv((4, 3), (1, 2), pad=ft.SamePad())(torch.zeros(1, 1, 7, 7)).shape
        torch.Size([1, 2, 7, 7])
    """

    def __repr__(self) -> str:
        return "SamePad()"


def _kernel(name: str, k: Any) -> tuple[int, ...]:
    if isinstance(k, int) and not isinstance(k, bool):
        raise TypeError(
            f"{name}: the kernel size must be a tuple, e.g. (3, 3) for images or (3,) for "
            f"sequences, got {k!r}"
        )
    k = tuple(k)
    if not 1 <= len(k) <= 3 or not all(isinstance(i, int) and i >= 1 for i in k):
        raise ValueError(f"{name}: kernel must be 1 to 3 positive integers, got {k!r}")
    return k


def _per_dim(name: str, what: str, v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        out = (v,) * n
    else:
        out = tuple(v)
    if len(out) != n or not all(isinstance(i, int) and i >= 0 for i in out):
        raise ValueError(f"{name}: {what} must be an int or {n} non-negative ints, got {v!r}")
    return out


def _pads(name: str, pad: Any, k: tuple[int, ...], dilation: tuple[int, ...]) -> tuple:
    """Padding as ``((lo, hi), ...)`` per spatial dimension."""
    n = len(k)
    if isinstance(pad, SamePad) or pad is SamePad:
        amt = [(ki - 1) * di for ki, di in zip(k, dilation)]
        return tuple((math.ceil(a / 2), a // 2) for a in amt)
    if isinstance(pad, int) and not isinstance(pad, bool):
        return ((pad, pad),) * n
    p = tuple(pad)
    if len(p) == n:
        return tuple((i, i) for i in _per_dim(name, "pad", p, n))
    if len(p) == 2 * n:
        flat = _per_dim(name, "pad", p, 2 * n)
        return tuple((flat[2 * i], flat[2 * i + 1]) for i in range(n))
    raise ValueError(f"{name}: pad must be an int, {n} or {2 * n} ints, or SamePad(), got {pad!r}")


def _torch_pad(pads: tuple) -> list[int]:
    # F.pad wants the last dimension first.
    out: list[int] = []
    for lo, hi in reversed(pads):
        out.extend((lo, hi))
    return out


def _symmetric(pads: tuple) -> bool:
    return all(lo == hi for lo, hi in pads)


def _maybetuple(t: tuple) -> str:
    return str(t[0]) if all(i == t[0] for i in t) else str(t)


def _pad_str(pads: tuple) -> str:
    if _symmetric(pads):
        return _maybetuple(tuple(lo for lo, _ in pads))
    return str(tuple(i for pair in pads for i in pair))


def _check_input(layer: Layer, x: torch.Tensor, n: int, chs: int) -> None:
    if x.dim() != n + 2 or x.shape[1] != chs:
        raise ValueError(
            f"{layer._flux_line()} expects input of shape (N, {chs}, "
            f"{', '.join(['...'] * n)}) (batch, channels, {n} spatial), got {tuple(x.shape)}"
        )


class _ConvBase(Layer):
    def _setup(
        self,
        name: str,
        k: Any,
        args: tuple,
        act: Any,
        stride: Any,
        pad: Any,
        dilation: Any,
        groups: int,
    ) -> tuple[tuple[int, ...], int, int]:
        k = _kernel(name, k)
        n = len(k)
        cin, cout, rest = in_out(name, args, f"{name}(kernel, (in, out), act)")
        if len(rest) > 1:
            raise TypeError(f"{name}: too many positional arguments")
        if rest:
            if act is not None:
                raise TypeError(f"{name}: activation given both positionally and as act=")
            act = rest[0]
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
        if cin % groups or cout % groups:
            raise ValueError(
                f"{name}: groups={groups} must divide both channel counts {cin} => {cout}"
            )
        self.act = act_or_identity(act)
        self.stride = _per_dim(name, "stride", stride, n)
        self.dilation = _per_dim(name, "dilation", dilation, n)
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError(f"{name}: stride and dilation must be at least 1")
        self.pad = _pads(name, pad, k, self.dilation)
        self.groups = groups
        self.kernel = k
        return k, cin, cout

    def _opts(self) -> str:
        out = act_suffix(self.act)
        if any(lo or hi for lo, hi in self.pad):
            out += f", pad={_pad_str(self.pad)}"
        if any(s != 1 for s in self.stride):
            out += f", stride={_maybetuple(self.stride)}"
        if any(d != 1 for d in self.dilation):
            out += f", dilation={_maybetuple(self.dilation)}"
        if self.groups != 1:
            out += f", groups={self.groups}"
        if self.bias is None:
            out += ", bias=False"
        return out


class Conv(_ConvBase):
    """Convolution: ``Conv(kernel, (in, out), act; stride=1, pad=0, dilation=1, groups=1,
    bias=True, init=glorot_uniform)`` (Flux's ``Conv(k, in => out, σ; ...)``).

    ``y = act(conv(x, weight) + bias)`` on ``(N, in, spatial...)`` input, where ``conv`` is
    ``torch.nn.functional.conv{1,2,3}d``; ``weight`` has shape ``(out, in // groups, k...)``,
    drawn with ``init(out, in // groups, k...)``.  Channels may also be two ints:
    ``Conv((3, 3), 1, 16, relu)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> c = ft.Conv((3, 3), (1, 16), ft.relu, pad=1, stride=2)
        >>> c
        Conv((3, 3), 1 => 16, relu, pad=1, stride=2)  # 160 parameters
        >>> c(torch.rand(4, 1, 28, 28)).shape
        torch.Size([4, 16, 14, 14])
    """

    def __init__(
        self,
        kernel: Sequence[int],
        *args: Any,
        act: Callable[..., Any] | None = None,
        stride: int | Sequence[int] = 1,
        pad: int | Sequence[int] | SamePad = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool | torch.Tensor = True,
        init: Callable[..., torch.Tensor] = glorot_uniform,
    ):
        super().__init__()
        k, cin, cout = self._setup("Conv", kernel, args, act, stride, pad, dilation, groups)
        weight = _init_tensor(init, (cout, cin // groups, *k), "Conv")
        self.weight = nn.Parameter(weight)
        self.bias = _make_bias(bias, cout, weight, "Conv")

    def forward(self, x: Any) -> torch.Tensor:
        x = match_input(x, self.weight, self)
        n = len(self.kernel)
        _check_input(self, x, n, self.weight.shape[1] * self.groups)
        if _symmetric(self.pad):
            padding: Any = tuple(lo for lo, _ in self.pad)
        else:
            x = F.pad(x, _torch_pad(self.pad))
            padding = 0
        y = _CONV[n](x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return self.act(y)

    def _flux_line(self) -> str:
        cout, cin_g = self.weight.shape[:2]
        return f"Conv({self.kernel}, {cin_g * self.groups} => {cout}{self._opts()})"


class ConvTranspose(_ConvBase):
    """Transposed convolution (the gradient of ``Conv`` with respect to its input), for
    upsampling: ``ConvTranspose(kernel, (in, out), act; stride, pad, dilation, groups, outpad,
    bias, init)`` (Flux's ``ConvTranspose``).

    Output size per spatial dimension: ``(size - 1) stride + dilation (k - 1) + 1 - lo - hi +
    outpad``; ``pad=SamePad()`` gives ``size * stride``.  ``weight`` has shape
    ``(in, out // groups, k...)`` as in ``nn.ConvTranspose2d``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.ConvTranspose((2, 2), (4, 1), stride=2)(torch.rand(3, 4, 7, 7)).shape
        torch.Size([3, 1, 14, 14])
    """

    def __init__(
        self,
        kernel: Sequence[int],
        *args: Any,
        act: Callable[..., Any] | None = None,
        stride: int | Sequence[int] = 1,
        pad: int | Sequence[int] | SamePad = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        outpad: int | Sequence[int] = 0,
        bias: bool | torch.Tensor = True,
        init: Callable[..., torch.Tensor] = glorot_uniform,
    ):
        super().__init__()
        k, cin, cout = self._setup(
            "ConvTranspose", kernel, args, act, stride, pad, dilation, groups
        )
        if isinstance(pad, SamePad) or pad is SamePad:
            amt = [d * (ki - 1) + 1 - s for ki, d, s in zip(k, self.dilation, self.stride)]
            self.pad = tuple((math.ceil(a / 2), a // 2) for a in amt)
        self.outpad = _per_dim("ConvTranspose", "outpad", outpad, len(k))
        # Flux draws this weight as init(k..., out // groups, in): the same fans as our shape.
        weight = _init_tensor(init, (cin, cout // groups, *k), "ConvTranspose")
        self.weight = nn.Parameter(weight)
        self.bias = _make_bias(bias, cout, weight, "ConvTranspose")

    def forward(self, x: Any) -> torch.Tensor:
        x = match_input(x, self.weight, self)
        n = len(self.kernel)
        _check_input(self, x, n, self.weight.shape[0])
        fast = all(lo == hi >= 0 for lo, hi in self.pad) and all(
            op < max(s, d) for op, s, d in zip(self.outpad, self.stride, self.dilation)
        )
        if fast:
            padding = tuple(lo for lo, _ in self.pad)
            y = _CONVT[n](
                x, self.weight, self.bias, self.stride, padding, self.outpad, self.groups,
                self.dilation,
            )  # fmt: skip
            return self.act(y)
        y = _CONVT[n](x, self.weight, None, self.stride, 0, 0, self.groups, self.dilation)
        # Crop (positive) or zero-extend (negative) each side: general asymmetric padding.
        crop = []
        for lo, hi in reversed(self.pad):
            crop.extend((-lo, -hi))
        for i, op in enumerate(reversed(self.outpad)):
            crop[2 * i + 1] += op
        y = F.pad(y, crop)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * n))
        return self.act(y)

    def _flux_line(self) -> str:
        cin, cout_g = self.weight.shape[:2]
        extra = "" if not any(self.outpad) else f", outpad={_maybetuple(self.outpad)}"
        return f"ConvTranspose({self.kernel}, {cin} => {cout_g * self.groups}{self._opts()}{extra})"


class _Pool(Layer):
    _fill = 0.0

    def __init__(self, kernel: Sequence[int], pad: Any = 0, stride: Any = None):
        super().__init__()
        name = type(self).__name__
        self.kernel = _kernel(name, kernel)
        n = len(self.kernel)
        self.stride = self.kernel if stride is None else _per_dim(name, "stride", stride, n)
        if min(self.stride) < 1:
            raise ValueError(f"{name}: stride must be at least 1")
        self.pad = _pads(name, pad, self.kernel, (1,) * n)

    def _padded(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        n = len(self.kernel)
        if x.dim() != n + 2:
            raise ValueError(
                f"{self._flux_line()} expects input (N, C, {n} spatial dims), got {tuple(x.shape)}"
            )
        if any(lo or hi for lo, hi in self.pad):
            x = F.pad(x, _torch_pad(self.pad), value=self._fill)
        return x

    def _flux_line(self) -> str:
        out = f"{type(self).__name__}({self.kernel}"
        if any(lo or hi for lo, hi in self.pad):
            out += f", pad={_pad_str(self.pad)}"
        if self.stride != self.kernel:
            out += f", stride={_maybetuple(self.stride)}"
        return out + ")"


class MaxPool(_Pool):
    """Max pooling over windows of size ``kernel``: ``MaxPool(kernel; pad=0, stride=kernel)``
    (Flux's ``MaxPool``); padding counts as ``-inf``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.MaxPool((2, 2))(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """

    _fill = -math.inf

    def forward(self, x: Any) -> torch.Tensor:
        return _MAXP[len(self.kernel)](self._padded(x), self.kernel, self.stride)


class MeanPool(_Pool):
    """Mean pooling over windows of size ``kernel``: ``MeanPool(kernel; pad=0, stride=kernel)``
    (Flux's ``MeanPool``); padded zeros count in the mean, as in NNlib's ``meanpool``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.MeanPool((2, 2))(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
    """

    def forward(self, x: Any) -> torch.Tensor:
        return _AVGP[len(self.kernel)](self._padded(x), self.kernel, self.stride)


class _Adaptive(Layer):
    def __init__(self, out: Sequence[int]):
        super().__init__()
        self.out = _kernel(type(self).__name__, out)

    def _flux_line(self) -> str:
        return f"{type(self).__name__}({self.out})"


class AdaptiveMaxPool(_Adaptive):
    """Max pooling whose windows are chosen to give spatial output size ``out``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.AdaptiveMaxPool((2, 2))(torch.rand(3, 4, 9, 7)).shape
        torch.Size([3, 4, 2, 2])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AMAXP[len(self.out)](x, self.out)


class AdaptiveMeanPool(_Adaptive):
    """Mean pooling whose windows are chosen to give spatial output size ``out``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.AdaptiveMeanPool((1, 1))(torch.ones(3, 4, 9, 7)).shape
        torch.Size([3, 4, 1, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AAVGP[len(self.out)](x, self.out)


class GlobalMaxPool(Layer):
    """Maximum over all spatial dimensions, keeping them with size 1: ``(N, C, 1, 1)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.GlobalMaxPool()(torch.rand(2, 3, 5, 5)).shape
        torch.Size([2, 3, 1, 1])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


class GlobalMeanPool(Layer):
    """Mean over all spatial dimensions, keeping them with size 1: ``(N, C, 1, 1)``; follow it
    with ``flatten`` for ``(N, C)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.GlobalMeanPool()(torch.ones(2, 3, 5, 5)).flatten(1)
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
