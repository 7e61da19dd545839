"""Activation functions with Flux's (NNlib.jl's) names, defaults and formulas, on torch tensors.

Each function acts elementwise, except [`softmax`][fluxtrain.layers.softmax], [`logsoftmax`][fluxtrain.layers.logsoftmax] and
[`logsumexp`][fluxtrain.layers.logsumexp], which act along a dimension.  Formulas follow NNlib.jl ``src/activations.jl``
and ``src/softmax.jl``.

**The softmax dimension.**  Flux normalises over ``dims=1``, the feature dimension, because Flux
puts features first and the batch last.  fluxtrain puts the batch first (PyTorch's layout), so the
features sit in dimension 1, just after the batch dimension: ``softmax(x)`` normalises over
``dims=1`` for ``x`` with two or more dimensions (the classes of an ``(N, C)`` batch, the channels
of an ``(N, C, H, W)`` batch, as ``torch.nn.CrossEntropyLoss`` and [`fluxtrain.losses`][fluxtrain.losses] count
them) and over the only dimension of a 1-d vector (a single sample without batch dimension).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "celu",
    "elu",
    "gelu",
    "gelu_erf",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "hardσ",
    "identity",
    "leakyrelu",
    "lisht",
    "logcosh",
    "logsigmoid",
    "logsoftmax",
    "logsumexp",
    "logσ",
    "mish",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "softmax",
    "softplus",
    "softshrink",
    "softsign",
    "swish",
    "tanh",
    "tanhshrink",
    "trelu",
    "σ",
]

Tensor = torch.Tensor


def identity(x):
    """Return ``x`` unchanged (the default activation of ``Dense``, ``Conv``...).

    Example:
        >>> identity(3)
        3
    """
    return x


def σ(x: Tensor) -> Tensor:
    """Logistic sigmoid, ``σ(x) = 1 / (1 + exp(-x))``; ``sigmoid`` is the ASCII alias.

    Example:
        >>> import torch
        >>> σ(torch.tensor([0.0]))
        tensor([0.5000])
    """
    return torch.sigmoid(x)


sigmoid = σ


def hardσ(x: Tensor) -> Tensor:
    """Piecewise linear sigmoid, ``hardσ(x) = clamp((x + 3) / 6, 0, 1)``; alias ``hardsigmoid``.

    Example:
        >>> import torch
        >>> hardσ(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    return F.hardsigmoid(x)


hardsigmoid = hardσ


def logσ(x: Tensor) -> Tensor:
    """``log(σ(x)) = -softplus(-x)``, computed stably; alias ``logsigmoid``.

    Example:
        >>> import torch
        >>> logσ(torch.tensor([-200.0]))
        tensor([-200.])
    """
    return F.logsigmoid(x)


logsigmoid = logσ


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent.

    Example:
        >>> import torch
        >>> tanh(torch.tensor([0.0]))
        tensor([0.])
    """
    return torch.tanh(x)


def hardtanh(x: Tensor) -> Tensor:
    """``hardtanh(x) = clamp(x, -1, 1)``, a cheap piecewise linear ``tanh``.

    Example:
        >>> import torch
        >>> hardtanh(torch.tensor([-3.0, 0.5, 3.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """
    return F.hardtanh(x)


def relu(x: Tensor) -> Tensor:
    """Rectified linear unit, ``relu(x) = max(0, x)``.

    Example:
        >>> import torch
        >>> relu(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    return torch.relu(x)


def leakyrelu(x: Tensor, a: float = 0.01) -> Tensor:
    """Leaky ReLU, ``leakyrelu(x, a=0.01) = x if x > 0 else a * x`` (NNlib's default slope 0.01).

    Example:
        >>> import torch
        >>> leakyrelu(torch.tensor([-10.0, 3.0]))
        tensor([-0.1000,  3.0000])
    """
    return F.leaky_relu(x, a)


def relu6(x: Tensor) -> Tensor:
    """``relu6(x) = clamp(x, 0, 6)``.

    Example:
        >>> import torch
        >>> relu6(torch.tensor([-1.0, 7.0]))
        tensor([0., 6.])
    """
    return F.relu6(x)


def trelu(x: Tensor, theta: float = 1.0) -> Tensor:
    """Threshold ReLU, ``trelu(x, θ=1) = x if x > θ else 0``.

    Example:
        >>> import torch
        >>> trelu(torch.tensor([0.5, 2.0]))
        tensor([0., 2.])
    """
    return torch.where(x > theta, x, torch.zeros_like(x))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """Exponential linear unit, ``elu(x, α=1) = x if x ≥ 0 else α (exp(x) - 1)``.

    Clevert et al., "Fast and Accurate Deep Network Learning by ELUs", arXiv:1511.07289.

    Example:
        >>> import torch
        >>> elu(torch.tensor([1.0]))
        tensor([1.])
    """
    return F.elu(x, alpha)


def celu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """Continuously differentiable ELU, ``celu(x, α=1) = x if x ≥ 0 else α (exp(x/α) - 1)``.

    Example:
        >>> import torch
        >>> celu(torch.tensor([2.0]))
        tensor([2.])
    """
    return F.celu(x, alpha)


def selu(x: Tensor) -> Tensor:
    """Scaled ELU, ``selu(x) = λ (x if x > 0 else α (exp(x) - 1))`` with λ ≈ 1.0507, α ≈ 1.6733.

    Klambauer et al., "Self-Normalizing Neural Networks", arXiv:1706.02515.

    Example:
        >>> import torch
        >>> selu(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.selu(x)


def gelu(x: Tensor) -> Tensor:
    """GELU in NNlib's form, the tanh approximation:
    ``gelu(x) = x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))``.

    Hendrycks & Gimpel, "Gaussian Error Linear Units", arXiv:1606.08415.  The exact form
    ``x Φ(x)`` is [`gelu_erf`][fluxtrain.layers.gelu_erf] (``torch.nn.functional.gelu``'s default).

    Example:
        >>> import torch
        >>> gelu(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.gelu(x, approximate="tanh")


def gelu_erf(x: Tensor) -> Tensor:
    """Exact GELU, ``gelu_erf(x) = x/2 (1 + erf(x / √2))``.

    Example:
        >>> import torch
        >>> gelu_erf(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.gelu(x)


def swish(x: Tensor) -> Tensor:
    """``swish(x) = x σ(x)`` (also called SiLU). Ramachandran et al., arXiv:1710.05941.

    Example:
        >>> import torch
        >>> swish(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.silu(x)


def hardswish(x: Tensor) -> Tensor:
    """``hardswish(x) = x hardσ(x)``.

    Example:
        >>> import torch
        >>> hardswish(torch.tensor([3.0]))
        tensor([3.])
    """
    return F.hardswish(x)


def lisht(x: Tensor) -> Tensor:
    """``lisht(x) = x tanh(x)``. Roy et al., arXiv:1901.05894.

    Example:
        >>> import torch
        >>> lisht(torch.tensor([0.0]))
        tensor([0.])
    """
    return x * torch.tanh(x)


def softplus(x: Tensor) -> Tensor:
    """``softplus(x) = log(1 + exp(x))``, computed stably as ``log1p(exp(-|x|)) + max(x, 0)``.

    Example:
        >>> import torch
        >>> softplus(torch.tensor([0.0]))
        tensor([0.6931])
    """
    return torch.log1p(torch.exp(-x.abs())) + torch.relu(x)


def softsign(x: Tensor) -> Tensor:
    """``softsign(x) = x / (1 + |x|)``.

    Example:
        >>> import torch
        >>> softsign(torch.tensor([1.0]))
        tensor([0.5000])
    """
    return F.softsign(x)


def logcosh(x: Tensor) -> Tensor:
    """``logcosh(x) = log(cosh(x))``, computed stably as ``x + softplus(-2x) - log(2)``.

    Example:
        >>> import torch
        >>> logcosh(torch.tensor([0.0]))
        tensor([0.])
    """
    return x + softplus(-2 * x) - math.log(2.0)


def mish(x: Tensor) -> Tensor:
    """``mish(x) = x tanh(softplus(x))``. Misra, arXiv:1908.08681.

    Example:
        >>> import torch
        >>> mish(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.mish(x)


def tanhshrink(x: Tensor) -> Tensor:
    """``tanhshrink(x) = x - tanh(x)``.

    Example:
        >>> import torch
        >>> tanhshrink(torch.tensor([0.0]))
        tensor([0.])
    """
    return F.tanhshrink(x)


def softshrink(x: Tensor, lambd: float = 0.5) -> Tensor:
    """``softshrink(x, λ=0.5) = x - λ if x > λ; x + λ if x < -λ; else 0``.

    Example:
        >>> import torch
        >>> softshrink(torch.tensor([-1.0, 0.2, 1.0]))
        tensor([-0.5000,  0.0000,  0.5000])
    """
    return F.softshrink(x, lambd)


def _feature_dim(x: Tensor, dims: int | None) -> int:
    if dims is not None:
        return dims
    return 1 if x.dim() >= 2 else 0


def softmax(x: Tensor, dims: int | None = None) -> Tensor:
    """``softmax(x)ᵢ = exp(xᵢ) / Σⱼ exp(xⱼ)`` along ``dims``, computed stably.

    ``dims`` defaults to 1, the feature dimension just after the batch dimension (Flux's
    ``dims=1`` with the batch moved first), or 0 for a 1-d vector.

    Example:
        >>> import torch
        >>> softmax(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))
        tensor([[0.5000, 0.5000],
                [0.2500, 0.7500]])
    """
    return torch.softmax(x, _feature_dim(x, dims))


def logsoftmax(x: Tensor, dims: int | None = None) -> Tensor:
    """``logsoftmax(x) = x - logsumexp(x)`` along ``dims`` (default as for [`softmax`][fluxtrain.layers.softmax]).

    Example:
        >>> import torch
        >>> logsoftmax(torch.tensor([0.0, 0.0])).exp()
        tensor([0.5000, 0.5000])
    """
    return torch.log_softmax(x, _feature_dim(x, dims))


def logsumexp(x: Tensor, dims: int | None = None) -> Tensor:
    """``log Σ exp(x)`` along ``dims`` (default as for [`softmax`][fluxtrain.layers.softmax]), keeping that dimension.

    Example:
        >>> import torch
        >>> logsumexp(torch.tensor([[0.0, 0.0]]))
        tensor([[0.6931]])
    """
    return torch.logsumexp(x, _feature_dim(x, dims), keepdim=True)
