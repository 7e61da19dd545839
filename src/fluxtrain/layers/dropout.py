"""Dropout layers (Flux.jl ``src/layers/normalise.jl``): active only while training.

Both follow Flux's automatic mode (see `fluxtrain.layers.modes`): active inside
``ft.gradient``/``withgradient``/``pullback``, the identity outside, unless forced with
``trainmode_``/``testmode_`` or the ``active=`` keyword.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .core import Layer
from .modes import is_active

__all__ = ["AlphaDropout", "Dropout"]


def _check_p(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name} expects 0 ≤ p ≤ 1, got p = {p!r}")
    return float(p)


def _check_active(active: bool | None) -> bool | None:
    if active is not None and not isinstance(active, bool):
        raise ValueError(f"active must be True, False or None (automatic), got {active!r}")
    return active


class Dropout(Layer):
    """Dropout (Srivastava et al. 2014, arXiv:1207.0580): while active, each input is set to
    zero with probability ``p`` and the rest are scaled by ``1 / (1 - p)``; otherwise the layer
    is the identity (Flux's ``Dropout(p; dims, rng, active)``).

    ``dims`` (an int or tuple, batch-first numbering) draws one random choice per index along
    those dimensions only and shares it along the others: on ``(N, C, H, W)`` input,
    ``dims=(0, 1)`` drops whole channels of each sample.  ``rng`` is a ``torch.Generator``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> d = ft.Dropout(0.5)
        >>> bool((d(torch.ones(100)) == 1).all())  # outside gradient: test mode
        True
        >>> seen = []
        >>> _ = ft.gradient(lambda x: (seen.append(d(x)), x.sum())[1], torch.ones(100))
        >>> bool((seen[0] == 0).any()), sorted(set(seen[0].tolist()))  # inside: active
        (True, [0.0, 2.0])
    """

    def __init__(
        self,
        p: float,
        dims: int | Sequence[int] | None = None,
        rng: torch.Generator | None = None,
        active: bool | None = None,
    ):
        super().__init__()
        self.p = _check_p("Dropout", p)
        self.dims = (dims,) if isinstance(dims, int) else (None if dims is None else tuple(dims))
        self.rng = rng
        self.active = _check_active(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not is_active(self):
            return x
        if self.dims is None and self.rng is None:
            return F.dropout(x, self.p, training=True)
        if self.p == 1:
            return x * 0
        shape = list(x.shape) if self.dims is None else [1] * x.dim()
        if self.dims is not None:
            for d in self.dims:
                shape[d] = x.shape[d]
        u = torch.rand(shape, generator=self.rng, dtype=x.dtype, device=_device(self.rng, x))
        mask = (u >= self.p).to(device=x.device, dtype=x.dtype) / (1 - self.p)
        return x * mask

    def _flux_line(self) -> str:
        extra = "" if self.dims is None else f", dims={_dims_str(self.dims)}"
        if self.active is not None:
            extra += f", active={self.active}"
        return f"Dropout({self.p:g}{extra})"


def _device(rng: torch.Generator | None, x: torch.Tensor) -> torch.device:
    # Draw where the generator lives (a CPU generator for reproducible masks), else with x.
    return rng.device if rng is not None else x.device


def _dims_str(dims: tuple[int, ...]) -> str:
    return str(dims[0]) if len(dims) == 1 else str(dims)


class AlphaDropout(Layer):
    """Alpha dropout for self-normalising networks (Klambauer et al. 2017, arXiv:1706.02515):
    dropped inputs are set to ``α' = -λα ≈ -1.7581`` (the limit of ``selu``), then
    ``A x + B`` with ``A = ((1 - p)(1 + p α'²))^(-1/2)``, ``B = -A α' p`` restores the mean and
    variance.  Identity when not active (Flux's ``AlphaDropout``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.AlphaDropout(0.2)(torch.ones(3))
        tensor([1., 1., 1.])
    """

    ALPHA_PRIME = -1.7580993408473766  # selu(-inf) = -λα

    def __init__(self, p: float, rng: torch.Generator | None = None, active: bool | None = None):
        super().__init__()
        self.p = _check_p("AlphaDropout", p)
        self.rng = rng
        self.active = _check_active(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not is_active(self):
            return x
        if self.p == 1:
            return x * 0
        p, a1 = self.p, self.ALPHA_PRIME
        A = 1 / math.sqrt((1 - p) * (1 + p * a1 * a1))
        B = -A * a1 * p
        noise = torch.rand(x.shape, generator=self.rng, dtype=x.dtype, device=_device(self.rng, x))
        keep = (noise > p).to(x.device)
        return A * torch.where(keep, x, torch.full_like(x, a1)) + B

    def _flux_line(self) -> str:
        extra = "" if self.active is None else f", active={self.active}"
        return f"AlphaDropout({self.p:g}{extra})"
