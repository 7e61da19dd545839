"""Upsampling layers (Flux.jl ``src/layers/upsample.jl``) on ``(N, C, spatial...)`` input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .core import Layer

__all__ = ["PixelShuffle", "Upsample"]

_MODES = {"nearest": None, "bilinear": 2, "trilinear": 3, "linear": 1}


class Upsample(Layer):
    """Resize the spatial dimensions by ``scale`` (a number or one per dimension) or to
    ``size`` (Flux's ``Upsample(mode; scale, size)``).

    ``mode`` is ``"nearest"`` (default), ``"linear"``, ``"bilinear"`` or ``"trilinear"``; the
    interpolating modes align corners, as NNlib's ``upsample_linear`` does by default.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.Upsample(scale=2)(torch.ones(1, 3, 4, 5)).shape
        torch.Size([1, 3, 8, 10])
        >>> ft.Upsample("bilinear", size=(7, 7))
        Upsample(bilinear, size=(7, 7))
    """

    def __init__(
        self,
        mode: str = "nearest",
        *,
        scale: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        if isinstance(mode, (int, float)) and not isinstance(mode, bool):
            mode, scale = "nearest", mode  # Flux's Upsample(scale) shorthand
        if mode not in _MODES:
            raise ValueError(f"Upsample: mode must be one of {sorted(_MODES)}, got {mode!r}")
        if (scale is None) == (size is None):
            raise ValueError("Upsample needs exactly one of scale= or size=")
        self.mode = mode
        self.scale = None if scale is None else (tuple(scale) if not _num(scale) else scale)
        self.size = None if size is None else (tuple(size) if not isinstance(size, int) else size)

    def forward(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        need = _MODES[self.mode]
        if x.dim() < 3 or (need is not None and x.dim() != need + 2):
            raise ValueError(
                f"{self._flux_line()} expects input (N, C, spatial...) with "
                f"{'some' if need is None else need} spatial dimensions, got {tuple(x.shape)}"
            )
        align = None if self.mode == "nearest" else True
        return F.interpolate(
            x, size=self.size, scale_factor=self.scale, mode=self.mode, align_corners=align
        )

    def _flux_line(self) -> str:
        what = f"scale={self.scale}" if self.scale is not None else f"size={self.size}"
        return f"Upsample({self.mode}, {what})"


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class PixelShuffle(Layer):
    """Rearrange ``(N, C r², H, W)`` into ``(N, C, H r, W r)`` (Shi et al. 2016,
    arXiv:1609.05158; Flux's ``PixelShuffle(r)``), with PyTorch's channel order.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.PixelShuffle(2)(torch.ones(1, 8, 3, 3)).shape
        torch.Size([1, 2, 6, 6])
    """

    def __init__(self, r: int):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"PixelShuffle: the factor must be a positive integer, got {r!r}")
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.r)

    def _flux_line(self) -> str:
        return f"PixelShuffle({self.r})"
