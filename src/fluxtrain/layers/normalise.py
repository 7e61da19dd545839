"""Normalisation layers (Flux.jl ``src/layers/normalise.jl``) with the channel dimension second.

Flux's channel dimension is ``N-1`` (just before the batch, which is last); with the batch first
it is dimension 1, as in PyTorch: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``...  Parameter names
are PyTorch's (``weight`` = Flux's γ, ``bias`` = β, buffers ``running_mean`` = μ and
``running_var`` = σ²), so weights load from and into ``nn.BatchNorm2d`` & co.

BatchNorm and InstanceNorm follow Flux's automatic mode (see `fluxtrain.layers.modes`):
inside ``ft.gradient`` they normalise with the batch statistics and update the running ones
(momentum 0.1, unbiased variance, as both Flux and PyTorch do); outside they use the running
statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core import Layer, act_or_identity, act_suffix, check_size, match_input
from .modes import is_active

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm"]


def _check_channels(name: str, chs: Any) -> int:
    if isinstance(chs, bool) or not isinstance(chs, int) or chs < 1:
        raise ValueError(f"{name}: the number of channels must be a positive integer, got {chs!r}")
    return chs


class _StatsNorm(Layer):
    """Shared parts of BatchNorm and InstanceNorm: affine parameters and running statistics."""

    def __init__(
        self,
        chs: int,
        act: Callable[..., Any] | None,
        affine: bool,
        track_stats: bool,
        eps: float,
        momentum: float,
        active: bool | None,
    ):
        super().__init__()
        self.chs = _check_channels(type(self).__name__, chs)
        self.act = act_or_identity(act)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        self.track_stats = bool(track_stats)
        if active is not None and not isinstance(active, bool):
            raise ValueError(f"active must be True, False or None (automatic), got {active!r}")
        self.active = active
        if affine:
            self.weight = nn.Parameter(torch.ones(chs))
            self.bias = nn.Parameter(torch.zeros(chs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_stats:
            self.register_buffer("running_mean", torch.zeros(chs))
            self.register_buffer("running_var", torch.ones(chs))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # torch's norm layers also save a step counter we do not use; accept their state dicts.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _ref(self) -> torch.Tensor | None:
        for t in (self.weight, self.running_mean):
            if t is not None:
                return t
        return None

    def _prepare(self, x: Any) -> torch.Tensor:
        ref = self._ref()
        x = match_input(x, ref, self) if ref is not None else torch.as_tensor(x)
        if x.dim() < 2:
            raise ValueError(
                f"{self._flux_line()} needs a batch: input of shape (N, {self.chs}, ...), got "
                f"{tuple(x.shape)}"
            )
        check_size(self, x, 1, self.chs, "channels")
        return x

    def _flux_line(self) -> str:
        extra = act_suffix(self.act)
        if not self.affine:
            extra += ", affine=False"
        if self.active is not None:
            extra += f", active={self.active}"
        return f"{type(self).__name__}({self.chs}{extra})"


class BatchNorm(_StatsNorm):
    """Batch normalisation (Ioffe & Szegedy 2015, arXiv:1502.03167) over every dimension but
    the channels (dimension 1), then ``act`` (Flux's ``BatchNorm(channels, λ)``).

    ``y = act(γ (x - μ) / sqrt(σ² + eps) + β)``; while active μ, σ² are the batch's statistics
    (biased variance) and the running ones are updated as
    ``running = (1 - momentum) running + momentum * batch`` with the unbiased batch variance;
    otherwise the running statistics are used.  ``track_stats=False`` always uses the batch's.

    Example:
        >>> import torch, fluxtrain as ft
        >>> bn = ft.BatchNorm(3, ft.relu)
        >>> bn
        BatchNorm(3, relu)  # 6 parameters, plus 6 non-trainable
        >>> bn(torch.randn(8, 3, 4, 4)).shape
        torch.Size([8, 3, 4, 4])
    """

    def __init__(
        self,
        chs: int,
        act: Callable[..., Any] | None = None,
        *,
        affine: bool = True,
        track_stats: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
        active: bool | None = None,
    ):
        super().__init__(chs, act, affine, track_stats, eps, momentum, active)

    def forward(self, x: Any) -> torch.Tensor:
        x = self._prepare(x)
        training = is_active(self) or not self.track_stats
        if training and x.numel() // self.chs <= 1:
            raise ValueError(
                f"{self._flux_line()} in training mode needs more than one value per channel, "
                f"got input of shape {tuple(x.shape)}"
            )
        y = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=training,
            momentum=self.momentum,
            eps=self.eps,
        )
        return self.act(y)


class InstanceNorm(_StatsNorm):
    """Instance normalisation (Ulyanov et al. 2016, arXiv:1607.08022): each channel of each
    sample is normalised over its spatial dimensions, then ``act`` (Flux's ``InstanceNorm``,
    with Flux's defaults ``affine=False, track_stats=False``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> y = ft.InstanceNorm(2)(torch.randn(3, 2, 5, 5))
        >>> bool(y.mean(dim=(2, 3)).abs().max() < 1e-5)
        True
    """

    def __init__(
        self,
        chs: int,
        act: Callable[..., Any] | None = None,
        *,
        affine: bool = False,
        track_stats: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        active: bool | None = None,
    ):
        super().__init__(chs, act, affine, track_stats, eps, momentum, active)

    def forward(self, x: Any) -> torch.Tensor:
        x = self._prepare(x)
        if x.dim() < 3:
            raise ValueError(
                f"{self._flux_line()} needs spatial dimensions: input (N, C, ...), got "
                f"{tuple(x.shape)}"
            )
        use_batch = is_active(self) or not self.track_stats
        y = F.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats=use_batch,
            momentum=self.momentum,
            eps=self.eps,
        )
        return self.act(y)


class LayerNorm(Layer):
    """Layer normalisation (Ba et al. 2016, arXiv:1607.06450) over the last ``len(size)``
    dimensions (Flux normalises its first ones, which are the same feature dimensions with the
    batch moved first), then an elementwise affine map of shape ``size`` and ``act``.

    ``LayerNorm(5)``, ``LayerNorm(4, 4, relu)``, ``LayerNorm((4, 4), relu, affine=False)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> y = ft.LayerNorm(5)(torch.randn(3, 5) * 7 + 2)
        >>> bool(y.mean(dim=1).abs().max() < 1e-5)
        True
    """

    def __init__(self, *size_act: Any, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        args = list(size_act)
        act = None
        if args and callable(args[-1]):
            act = args.pop()
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = list(args[0])
        if not args or not all(isinstance(s, int) and not isinstance(s, bool) for s in args):
            raise ValueError(f"LayerNorm needs integer sizes, e.g. LayerNorm(5), got {size_act!r}")
        self.size = tuple(int(s) for s in args)
        self.act = act_or_identity(act)
        self.eps = float(eps)
        self.affine = bool(affine)
        if affine:
            self.weight = nn.Parameter(torch.ones(self.size))
            self.bias = nn.Parameter(torch.zeros(self.size))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Any) -> torch.Tensor:
        if self.weight is not None:
            x = match_input(x, self.weight, self)
        if tuple(x.shape[x.dim() - len(self.size) :]) != self.size or x.dim() < len(self.size):
            raise ValueError(
                f"{self._flux_line()} expects input whose last dimensions are {self.size}, got "
                f"shape {tuple(x.shape)}"
            )
        return self.act(F.layer_norm(x, self.size, self.weight, self.bias, self.eps))

    def _flux_line(self) -> str:
        extra = act_suffix(self.act) + ("" if self.affine else ", affine=False")
        return f"LayerNorm({', '.join(map(str, self.size))}{extra})"


class GroupNorm(Layer):
    """Group normalisation (Wu & He 2018, arXiv:1803.08494): the channels (dimension 1) are
    split into ``groups`` groups, each normalised over its channels and the spatial dimensions,
    per sample; then a per-channel affine map and ``act`` (Flux's ``GroupNorm(chs, G, λ)``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.GroupNorm(4, 2)(torch.randn(2, 4, 3, 3)).shape
        torch.Size([2, 4, 3, 3])
    """

    def __init__(
        self,
        chs: int,
        groups: int,
        act: Callable[..., Any] | None = None,
        *,
        affine: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.chs = _check_channels("GroupNorm", chs)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"GroupNorm: groups must be a positive integer, got {groups!r}")
        if chs % groups:
            raise ValueError(f"GroupNorm: the number of groups ({groups}) must divide {chs}")
        self.groups = groups
        self.act = act_or_identity(act)
        self.eps = float(eps)
        self.affine = bool(affine)
        if affine:
            self.weight = nn.Parameter(torch.ones(chs))
            self.bias = nn.Parameter(torch.zeros(chs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Any) -> torch.Tensor:
        if self.weight is not None:
            x = match_input(x, self.weight, self)
        check_size(self, x, 1, self.chs, "channels")
        return self.act(F.group_norm(x, self.groups, self.weight, self.bias, self.eps))

    def _flux_line(self) -> str:
        extra = act_suffix(self.act) + ("" if self.affine else ", affine=False")
        return f"GroupNorm({self.chs}, {self.groups}{extra})"
