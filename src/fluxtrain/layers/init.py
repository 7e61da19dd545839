"""Weight initialisers with Flux's formulas (Flux.jl ``src/utils.jl``), for PyTorch-shaped weights.

An initialiser is called with the weight's shape as separate integers, ``init(*shape)``, as in
Flux (``init(out, in)``) and as ``torch.randn``/``torch.ones`` accept it, so ``init=torch.ones``
works.  Shapes are PyTorch's: ``(out, in)`` for Dense, ``(out, in // groups, k...)`` for Conv.
Fans: a vector ``(n,)`` has ``fan_in = 1, fan_out = n``; a matrix ``(out, in)`` has
``fan_in = in, fan_out = out``; a conv kernel ``(out, in, k...)`` multiplies both by ``prod(k)``.
Values are drawn from torch's global generator unless ``generator=`` is given.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "glorot_normal",
    "glorot_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "ones32",
    "randn32",
    "zeros32",
]


def nfan(*shape: int) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a PyTorch-shaped weight.

    Example:
        >>> nfan(32, 784), nfan(16, 3, 5, 5), nfan(7)
        ((784, 32), (75, 400), (1, 7))
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[1], shape[0]
    k = math.prod(shape[2:])
    return shape[1] * k, shape[0] * k


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return torch.get_default_dtype() if dtype is None else dtype


def glorot_uniform(
    *shape: int,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform on ``[-x, x]`` with ``x = gain * sqrt(6 / (fan_in + fan_out))`` (Flux's default).

    Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural
    networks", AISTATS 2010.  Computed as Flux does: ``(rand - 1/2) * gain * sqrt(24 / (fan_in +
    fan_out))``.

    Example:
        >>> w = glorot_uniform(100, 10)
        >>> w.shape, bool(w.abs().max() <= (6 / 110) ** 0.5)
        (torch.Size([100, 10]), True)
    """
    scale = gain * math.sqrt(24.0 / sum(nfan(*shape)))
    u = torch.rand(shape, generator=generator, dtype=_dtype(dtype))
    return (u - 0.5) * scale


def glorot_normal(
    *shape: int,
    gain: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normal with standard deviation ``gain * sqrt(2 / (fan_in + fan_out))`` (Xavier normal).

    Example:
        >>> glorot_normal(3, 4).shape
        torch.Size([3, 4])
    """
    std = gain * math.sqrt(2.0 / sum(nfan(*shape)))
    return torch.randn(shape, generator=generator, dtype=_dtype(dtype)) * std


def kaiming_uniform(
    *shape: int,
    gain: float = math.sqrt(2.0),
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform on ``[-x, x]`` with ``x = gain * sqrt(3 / fan_in)``, ``gain = √2`` (He et al. 2015).

    Example:
        >>> bool(kaiming_uniform(4, 6).abs().max() <= 2 ** 0.5 * (3 / 6) ** 0.5)
        True
    """
    bound = gain * math.sqrt(3.0 / nfan(*shape)[0])
    u = torch.rand(shape, generator=generator, dtype=_dtype(dtype))
    return (2 * u - 1) * bound


def kaiming_normal(
    *shape: int,
    gain: float = math.sqrt(2.0),
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normal with standard deviation ``gain / sqrt(fan_in)``, ``gain = √2`` (He et al. 2015).

    Example:
        >>> kaiming_normal(4, 6).shape
        torch.Size([4, 6])
    """
    std = gain / math.sqrt(nfan(*shape)[0])
    return torch.randn(shape, generator=generator, dtype=_dtype(dtype)) * std


def zeros32(*shape: int) -> torch.Tensor:
    """Zeros of the default dtype (Flux's ``zeros32``).

    Example:
        >>> zeros32(2)
        tensor([0., 0.])
    """
    return torch.zeros(shape, dtype=_dtype(None))


def ones32(*shape: int) -> torch.Tensor:
    """Ones of the default dtype (Flux's ``ones32``).

    Example:
        >>> ones32(2)
        tensor([1., 1.])
    """
    return torch.ones(shape, dtype=_dtype(None))


def randn32(*shape: int) -> torch.Tensor:
    """Standard normal values of the default dtype (Flux's ``randn32``, Embedding's default).

    Example:
        >>> randn32(2, 3).shape
        torch.Size([2, 3])
    """
    return torch.randn(shape, dtype=_dtype(None))
