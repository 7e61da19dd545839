"""Flux's loss functions (``Flux.Losses``, Flux 0.16) for PyTorch tensors.

Every loss is ``loss(ŷ, y, *, agg=mean, ...)``: the prediction first, the target second, and
``agg`` reducing the elementwise (or per-sample) losses. ``agg`` is ``torch.mean`` (default),
``torch.sum``, Python's ``sum``, the strings ``"mean"``, ``"sum"`` or ``"none"`` (no reduction),
or any function of a tensor.

Layout: the batch is the FIRST dimension and classes are dimension ``dims=1``, just after the
batch, as in PyTorch (Flux puts classes first and the batch last). Losses over probability
distributions (``crossentropy``, ``logitcrossentropy``, ``kldivergence``, ``focal_loss``) sum over
the class dimension first and then aggregate the per-sample values, so ``agg=mean`` is the mean
over samples (and any further dimensions), not over every entry.

Prediction and target must have the same shape (Flux's ``_check_sizes``); a mismatch raises
``ValueError`` naming both shapes instead of broadcasting silently. A plain number is accepted as
a constant target. Stabilising ``eps`` defaults to the machine epsilon of ``ŷ``'s dtype, as
Flux's ``epseltype``.

Source of the maths: FluxML/Flux.jl ``src/losses/functions.jl``, ``utils.jl`` and ``ctc.jl``.
"""

from __future__ import annotations

import builtins
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .encoding import onehot  # noqa: F401  (used by the doctests)

__all__ = [
    "binary_focal_loss",
    "binarycrossentropy",
    "crossentropy",
    "ctc_loss",
    "dice_coeff_loss",
    "focal_loss",
    "hinge_loss",
    "huber_loss",
    "kldivergence",
    "label_smoothing",
    "logitbinarycrossentropy",
    "logitcrossentropy",
    "mae",
    "mse",
    "msle",
    "poisson_loss",
    "siamese_contrastive_loss",
    "squared_hinge_loss",
    "tversky_loss",
]

Agg = Callable[[torch.Tensor], Any] | str
Dims = int | Sequence[int]

_MEANS = (torch.mean, np.mean, statistics.mean, "mean")
_SUMS = (torch.sum, builtins.sum, np.sum, "sum")


def _aggregate(agg: Agg, x: torch.Tensor, name: str) -> torch.Tensor:
    """Reduce the elementwise losses ``x`` with ``agg`` (see the module docstring)."""
    if isinstance(agg, str):
        if agg == "mean":
            return x.mean()
        if agg == "sum":
            return x.sum()
        if agg == "none":
            return x
        raise ValueError(f"{name}: agg={agg!r} is not one of 'mean', 'sum', 'none' or a function")
    if any(agg is f for f in _MEANS):
        return x.mean()
    if any(agg is f for f in _SUMS):
        return x.sum()
    if not callable(agg):
        raise TypeError(f"{name}: agg must be a function or 'mean'/'sum'/'none', got {agg!r}")
    return agg(x)


def _prediction(ŷ: Any) -> torch.Tensor:
    t = ŷ if isinstance(ŷ, torch.Tensor) else torch.as_tensor(np.asarray(ŷ))
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.get_default_dtype())
    return t


def _target(y: Any, ŷ: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        return torch.as_tensor(np.asarray(y), dtype=ŷ.dtype, device=ŷ.device)
    return y if (y.is_floating_point() or y.is_complex()) else y.to(ŷ.dtype)


def _pair(ŷ: Any, y: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors of ``ŷ`` and ``y``, with Flux's size check (a number is a constant label)."""
    ŷ = _prediction(ŷ)
    constant = isinstance(y, int | float | bool) or (isinstance(y, torch.Tensor) and y.dim() == 0)
    y = _target(y, ŷ)
    if not constant and tuple(ŷ.shape) != tuple(y.shape):
        raise ValueError(
            f"{name} expects ŷ.shape = {tuple(ŷ.shape)} to match y.shape = {tuple(y.shape)} "
            "(batch first; reshape one of them instead of relying on broadcasting)"
        )
    return ŷ, y


def _eps(ŷ: torch.Tensor, eps: float | None) -> float:
    return torch.finfo(ŷ.dtype).eps if eps is None else eps


def _check_dims(t: torch.Tensor, dims: Dims, name: str) -> Dims:
    for d in (dims,) if isinstance(dims, int) else dims:
        if not -t.dim() <= d < t.dim():
            raise ValueError(
                f"{name}: dims={dims} is out of range for shape {tuple(t.shape)}; the class "
                "dimension is 1 for a batch (N, C, ...), 0 for a single distribution"
            )
    return dims


def _class_targets(ŷ: Any, y: Any, dims: Dims, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``_pair``, but integer class labels (one fewer dimension) become one-hot along dims."""
    ŷ = _prediction(ŷ)
    _check_dims(ŷ, dims, name)
    if (
        isinstance(y, torch.Tensor)
        and isinstance(dims, int)
        and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
        and y.dim() == ŷ.dim() - 1
    ):
        d = dims % ŷ.dim()
        y = F.one_hot(y.long(), ŷ.shape[d]).to(ŷ.dtype).movedim(-1, d)
    return _pair(ŷ, y, name)


def mae(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Mean absolute error, ``agg(|ŷ - y|)``.

    Example:
        >>> mae(torch.tensor([1.1, 1.9, 3.1]), torch.tensor([1.0, 2.0, 3.0]))
        tensor(0.1000)
    """
    ŷ, y = _pair(ŷ, y, "mae")
    return _aggregate(agg, (ŷ - y).abs(), "mae")


def mse(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Mean squared error, ``agg(|ŷ - y|²)`` (also for complex tensors).

    Example:
        >>> mse(torch.tensor([1.1, 1.9, 3.1]), torch.tensor([1.0, 2.0, 3.0]))
        tensor(0.0100)
        >>> mse(torch.tensor([1.1, 1.9, 3.1]), torch.tensor([1.0, 2.0, 3.0]), agg=sum)
        tensor(0.0300)
    """
    ŷ, y = _pair(ŷ, y, "mse")
    d = ŷ - y
    return _aggregate(agg, d.abs().square() if d.is_complex() else d * d, "mse")


def msle(ŷ: Any, y: Any, *, agg: Agg = torch.mean, eps: float | None = None) -> torch.Tensor:
    """Mean squared logarithmic error, ``agg((log((ŷ + ε) / (y + ε)))²)``.

    Penalises under-estimates more than over-estimates; ``ε`` (default: machine epsilon of
    ``ŷ``'s dtype) keeps the logarithm finite at zero.

    Example:
        >>> msle(torch.tensor([1.1, 2.2, 3.3]), torch.tensor([1.0, 2.0, 3.0]))
        tensor(0.0091)
    """
    ŷ, y = _pair(ŷ, y, "msle")
    ε = _eps(ŷ, eps)
    return _aggregate(agg, torch.log((ŷ + ε) / (y + ε)).square(), "msle")


def huber_loss(ŷ: Any, y: Any, *, agg: Agg = torch.mean, delta: float = 1.0) -> torch.Tensor:
    """Huber loss: quadratic for small errors, linear for large ones.

    With ``e = |ŷ - y|``: ``0.5 e²`` where ``e < δ``, else ``δ (e - 0.5 δ)``; then ``agg``.
    Same as ``torch.nn.functional.huber_loss(ŷ, y, delta=δ)``.

    Example:
        >>> huber_loss(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]))
        tensor(1.3125)
    """
    ŷ, y = _pair(ŷ, y, "huber_loss")
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    e = (ŷ - y).abs()
    small = e < delta
    return _aggregate(agg, torch.where(small, 0.5 * e * e, delta * (e - 0.5 * delta)), "huber_loss")


def label_smoothing(y: Any, α: float, dims: int = 1) -> torch.Tensor:
    """Smooth labels towards uniform: ``y (1 - α) + α / C`` (Flux's ``label_smoothing``).

    ``C`` is the size of the class dimension ``dims`` (1 for one-hot labels of shape ``(N, C)``).
    ``dims=0`` means binary labels held in one number each (not a dimension: the batch is never
    smoothed over): ``y (1 - α) + α / 2``, squeezing them towards 0.5. ``α`` must lie in (0, 1).

    Example:
        >>> label_smoothing(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 0.2)
        tensor([[0.1000, 0.9000],
                [0.9000, 0.1000]])
        >>> label_smoothing(torch.tensor([1.0, 0.0]), 0.2, dims=0)
        tensor([0.9000, 0.1000])
    """
    if not 0 < α < 1:
        raise ValueError(f"label_smoothing: α must be between 0 and 1 (exclusive), got {α}")
    t = _prediction(y)
    if dims == 0:
        return t * (1 - α) + α / 2
    if not -t.dim() <= dims < t.dim():
        raise ValueError(
            f"label_smoothing: dims={dims} is out of range for labels of shape {tuple(t.shape)}; "
            "use dims=0 for binary labels, or add the batch dimension to a single one-hot vector"
        )
    return t * (1 - α) + α / t.shape[dims]


def crossentropy(
    ŷ: Any, y: Any, *, dims: Dims = 1, agg: Agg = torch.mean, eps: float | None = None
) -> torch.Tensor:
    """Cross entropy between probability distributions, ``agg(-Σ_dims y log(ŷ + ε))``.

    ``ŷ`` holds probabilities (a ``softmax`` output) with classes along ``dims``; ``y`` is one-hot
    or soft labels of the same shape, or integer class indices of shape ``ŷ.shape`` without the
    class dimension. ``y log(…)`` is 0 where ``y == 0`` (Flux's ``xlogy``). Prefer
    [`logitcrossentropy`][fluxtrain.losses.logitcrossentropy] on logits: it is more stable.

    Example:
        >>> ŷ = torch.softmax(torch.arange(-7.0, 8.0).reshape(5, 3), dim=1)
        >>> y = torch.tensor([0, 1, 2, 1, 0])
        >>> crossentropy(ŷ, y)
        tensor(1.6076)
        >>> crossentropy(ŷ, label_smoothing(onehot(y, 3), 0.15))
        tensor(1.5776)
    """
    ŷ, y = _class_targets(ŷ, y, dims, "crossentropy")
    per_sample = -torch.xlogy(y, ŷ + _eps(ŷ, eps)).sum(dim=dims)
    return _aggregate(agg, per_sample, "crossentropy")


def logitcrossentropy(ŷ: Any, y: Any, *, dims: Dims = 1, agg: Agg = torch.mean) -> torch.Tensor:
    """Cross entropy from logits, ``agg(-Σ_dims y logsoftmax(ŷ))``.

    Mathematically ``crossentropy(softmax(ŷ), y)``, computed stably. With integer class labels
    or soft labels it equals ``torch.nn.functional.cross_entropy(ŷ, y)``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> logitcrossentropy(logits, torch.tensor([0, 1]))
        tensor(0.3964)
    """
    ŷ, y = _class_targets(ŷ, y, dims, "logitcrossentropy")
    dim = dims if isinstance(dims, int) else tuple(dims)
    logp = ŷ - torch.logsumexp(ŷ, dim=dim, keepdim=True)
    return _aggregate(agg, -(y * logp).sum(dim=dims), "logitcrossentropy")


def binarycrossentropy(
    ŷ: Any, y: Any, *, agg: Agg = torch.mean, eps: float | None = None
) -> torch.Tensor:
    """Binary cross entropy, ``agg(-y log(ŷ + ε) - (1 - y) log(1 - ŷ + ε))``.

    ``ŷ`` holds probabilities (a ``sigmoid`` output), ``y`` the labels in [0, 1] (each ``x log``
    term is 0 where its factor is 0). Prefer [`logitbinarycrossentropy`][fluxtrain.losses.logitbinarycrossentropy] on logits.

    Example:
        >>> binarycrossentropy(torch.tensor([0.7311, 0.5, 0.7311]), torch.tensor([1.0, 0.0, 1.0]))
        tensor(0.4399)
    """
    ŷ, y = _pair(ŷ, y, "binarycrossentropy")
    ε = _eps(ŷ, eps)
    losses = -torch.xlogy(y, ŷ + ε) - torch.xlogy(1 - y, 1 - ŷ + ε)
    return _aggregate(agg, losses, "binarycrossentropy")


def logitbinarycrossentropy(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Binary cross entropy from logits, ``agg((1 - y) ŷ - logσ(ŷ))``.

    Mathematically ``binarycrossentropy(sigmoid(ŷ), y)``, computed stably; equals
    ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Example:
        >>> logitbinarycrossentropy(torch.tensor([2.0, -1.0, 3.1416]), torch.tensor([1.0, 0.0, 1.0]))
        tensor(0.1608)
    """
    ŷ, y = _pair(ŷ, y, "logitbinarycrossentropy")
    return _aggregate(agg, (1 - y) * ŷ - F.logsigmoid(ŷ), "logitbinarycrossentropy")


def kldivergence(
    ŷ: Any, y: Any, *, dims: Dims = 1, agg: Agg = torch.mean, eps: float | None = None
) -> torch.Tensor:
    """Kullback-Leibler divergence of ``ŷ`` from ``y``: ``agg(Σ_dims y log y) + crossentropy``.

    That is ``agg(Σ_dims y log(y / (ŷ + ε)))`` with ``0 log 0 = 0``: non-negative, and zero when
    the distributions agree. Classes along ``dims``.

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> q = torch.full((2, 2), 0.5)
        >>> kldivergence(q, p)  # log 2
        tensor(0.6931)
    """
    ŷ, y = _pair(ŷ, y, "kldivergence")
    _check_dims(ŷ, dims, "kldivergence")
    entropy = _aggregate(agg, torch.xlogy(y, y).sum(dim=dims), "kldivergence")
    return entropy + crossentropy(ŷ, y, dims=dims, agg=agg, eps=eps)


def poisson_loss(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Poisson loss, ``agg(ŷ - y log ŷ)``: how far the rates ``ŷ`` are from counts ``y``.

    Equals ``torch.nn.functional.poisson_nll_loss(ŷ, y, log_input=False)`` (which adds 1e-8
    inside the logarithm).

    Example:
        >>> poisson_loss(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.1, 0.2, 0.3]))
        tensor(0.6278)
    """
    ŷ, y = _pair(ŷ, y, "poisson_loss")
    return _aggregate(agg, ŷ - torch.xlogy(y, ŷ), "poisson_loss")


def hinge_loss(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Hinge loss for labels ``y`` in {-1, 1}: ``agg(max(0, 1 - ŷ y))``.

    Example:
        >>> hinge_loss(torch.tensor([0.5, -2.0, 1.5]), torch.tensor([1.0, -1.0, -1.0]))
        tensor(1.)
    """
    ŷ, y = _pair(ŷ, y, "hinge_loss")
    return _aggregate(agg, torch.clamp(1 - ŷ * y, min=0), "hinge_loss")


def squared_hinge_loss(ŷ: Any, y: Any, *, agg: Agg = torch.mean) -> torch.Tensor:
    """Squared hinge loss for labels ``y`` in {-1, 1}: ``agg(max(0, 1 - ŷ y)²)``.

    Example:
        >>> squared_hinge_loss(torch.tensor([0.5, -2.0, 1.5]), torch.tensor([1.0, -1.0, -1.0]))
        tensor(2.1667)
    """
    ŷ, y = _pair(ŷ, y, "squared_hinge_loss")
    return _aggregate(agg, torch.clamp(1 - ŷ * y, min=0).square(), "squared_hinge_loss")


def dice_coeff_loss(ŷ: Any, y: Any, *, smooth: float = 1.0, agg: Agg | None = None) -> torch.Tensor:
    """Dice-coefficient loss (V-Net, Milletari et al. 2016, arXiv:1606.04797).

    ``1 - (2 Σ y ŷ + s) / (Σ y² + Σ ŷ² + s)`` with smoothing ``s``. With ``agg=None`` (default,
    as Flux) the sums run over the whole batch; with ``agg`` given, each sample (sums over all
    dimensions but the first) gets its own loss and ``agg`` reduces them.

    Example:
        >>> dice_coeff_loss(torch.tensor([0.0, 1.4, 0.5, 1.2]), torch.tensor([1.0, 0.5, 0.3, 2.4]))
        tensor(0.2800)
    """
    ŷ, y = _pair(ŷ, y, "dice_coeff_loss")
    num = 2 * y * ŷ
    den = y * y + ŷ * ŷ
    if agg is None:
        return 1 - (num.sum() + smooth) / (den.sum() + smooth)
    if ŷ.dim() == 0:
        raise ValueError("dice_coeff_loss: agg= needs a batch dimension to give per-sample losses")
    per = 1 - (num.flatten(1).sum(1) + smooth) / (den.flatten(1).sum(1) + smooth)
    return _aggregate(agg, per, "dice_coeff_loss")


def tversky_loss(ŷ: Any, y: Any, *, beta: float = 0.7, agg: Agg | None = None) -> torch.Tensor:
    """Tversky loss (Salehi et al. 2017, arXiv:1706.05721) for imbalanced segmentation.

    ``1 - (Σ y ŷ + 1) / (Σ (y ŷ + β (1 - y) ŷ + (1 - β) y (1 - ŷ)) + 1)``; larger ``β`` weighs
    false negatives (recall) more. Sums over the whole batch with ``agg=None`` (default, as
    Flux); per sample, reduced by ``agg``, otherwise.

    Example:
        >>> tversky_loss(torch.tensor([0.9, 0.1, 0.8]), torch.tensor([1.0, 0.0, 1.0]))
        tensor(0.0559)
    """
    ŷ, y = _pair(ŷ, y, "tversky_loss")
    tp = y * ŷ
    den = tp + beta * (1 - y) * ŷ + (1 - beta) * y * (1 - ŷ)
    if agg is None:
        return 1 - (tp.sum() + 1) / (den.sum() + 1)
    if ŷ.dim() == 0:
        raise ValueError("tversky_loss: agg= needs a batch dimension to give per-sample losses")
    per = 1 - (tp.flatten(1).sum(1) + 1) / (den.flatten(1).sum(1) + 1)
    return _aggregate(agg, per, "tversky_loss")


def binary_focal_loss(
    ŷ: Any, y: Any, *, agg: Agg = torch.mean, gamma: float = 2.0, eps: float | None = None
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017, arXiv:1708.02002) on probabilities ``ŷ``.

    With ``p = ŷ + ε`` and ``pₜ = y p + (1 - y)(1 - p)``: ``agg(-(1 - pₜ)^γ log pₜ)``.
    ``γ = 0`` gives [`binarycrossentropy`][fluxtrain.losses.binarycrossentropy]; larger ``γ`` down-weights easy examples.

    Example:
        >>> ŷ = torch.tensor([[0.268941, 0.731059], [0.5, 0.5], [0.268941, 0.731059]])
        >>> y = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        >>> binary_focal_loss(ŷ, y)
        tensor(0.0729)
    """
    ŷ, y = _pair(ŷ, y, "binary_focal_loss")
    p = ŷ + _eps(ŷ, eps)
    p_t = y * p + (1 - y) * (1 - p)
    return _aggregate(agg, -((1 - p_t) ** gamma) * torch.log(p_t), "binary_focal_loss")


def focal_loss(
    ŷ: Any,
    y: Any,
    *,
    dims: Dims = 1,
    agg: Agg = torch.mean,
    gamma: float = 2.0,
    eps: float | None = None,
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017, arXiv:1708.02002) on probabilities ``ŷ``.

    ``agg(Σ_dims -y (1 - p)^γ log p)`` with ``p = ŷ + ε``, classes along ``dims``. ``γ = 0``
    gives [`crossentropy`][fluxtrain.losses.crossentropy].

    Example:
        >>> ŷ = torch.softmax(torch.arange(-7.0, 8.0).reshape(5, 3), dim=1)
        >>> focal_loss(ŷ, onehot(torch.tensor([0, 1, 2, 1, 0]), 3))
        tensor(1.1278)
    """
    ŷ, y = _class_targets(ŷ, y, dims, "focal_loss")
    p = ŷ + _eps(ŷ, eps)
    per_sample = (-y * (1 - p) ** gamma * torch.log(p)).sum(dim=dims)
    return _aggregate(agg, per_sample, "focal_loss")


def siamese_contrastive_loss(
    ŷ: Any, y: Any, *, agg: Agg = torch.mean, margin: float = 1.0
) -> torch.Tensor:
    """Contrastive loss for Siamese networks (Hadsell, Chopra & LeCun 2006).

    ``agg((1 - y) ŷ² + y max(0, margin - ŷ)²)`` with ``ŷ`` the distances between pairs and
    ``y = 1`` for dissimilar pairs; ``margin`` (non-negative) is the distance beyond which
    dissimilar pairs cost nothing.

    Example:
        >>> siamese_contrastive_loss(torch.tensor([0.6, 0.4, 0.1]), torch.tensor([1.0, 0.0, 0.0]))
        tensor(0.1100)
    """
    if margin < 0:
        raise ValueError(f"siamese_contrastive_loss: margin must be non-negative, got {margin}")
    ŷ, y = _pair(ŷ, y, "siamese_contrastive_loss")
    losses = (1 - y) * ŷ * ŷ + y * torch.clamp(margin - ŷ, min=0).square()
    return _aggregate(agg, losses, "siamese_contrastive_loss")


def _logaddexp_many(*xs: torch.Tensor) -> torch.Tensor:
    """log Σ exp over the given tensors; -inf where all are -inf, with zero (not NaN) gradient."""
    x = torch.stack(xs)
    m = x.amax(0).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    s = torch.exp(x - m).sum(0)
    positive = s > 0
    return torch.where(
        positive, m + torch.log(torch.where(positive, s, torch.ones_like(s))), -torch.inf
    )


def ctc_loss(
    ŷ: torch.Tensor,
    y: Any,
    input_lengths: Any = None,
    target_lengths: Any = None,
    *,
    blank: int | None = None,
    agg: Agg = torch.mean,
) -> torch.Tensor:
    """Connectionist temporal classification loss (Graves et al. 2006), Flux's ``ctc_loss``.

    ``ŷ`` is raw scores (``logsoftmax`` is applied over classes here): ``(C, T)`` for one
    sequence, as in Flux, or ``(N, C, T)`` for a batch (classes at dimension 1, time last).
    ``y`` is the label sequence (class indices ``0..C-1``): a 1-D sequence for one input; for a
    batch, a list of sequences or a padded ``(N, S)`` tensor with ``target_lengths``.
    ``input_lengths`` (default: all ``T``) gives each input's number of valid time steps.
    ``blank`` is the blank class, by default the last one (``C - 1``) as in Flux (PyTorch uses
    0). Returns the negative log-likelihood of the labels: one number for a single sequence,
    ``agg`` over the per-sequence losses for a batch (``inf`` where no alignment exists).

    Matches ``torch.nn.functional.ctc_loss(logsoftmax(ŷ).permute(2, 0, 1), ..., blank=C - 1,
    reduction='none')`` per sequence; note that its ``reduction='mean'`` also divides by the
    target lengths, ours does not.

    Example:
        >>> scores = torch.zeros(3, 2)  # 3 classes (blank = 2), 2 time steps, uniform
        >>> ctc_loss(scores, [0])  # alignments "0 blank", "blank 0", "0 0": -log(3/9)
        tensor(1.0986)
    """
    ŷ = _prediction(ŷ)
    single = ŷ.dim() == 2
    if single:
        ŷ = ŷ.unsqueeze(0)
        y = [y]
    if ŷ.dim() != 3:
        raise ValueError(f"ctc_loss: ŷ must be (C, T) or (N, C, T), got shape {tuple(ŷ.shape)}")
    n, c, t_max = ŷ.shape
    blank = c - 1 if blank is None else blank % c
    targets, lengths = _ctc_targets(y, target_lengths, n, c, blank, ŷ.device)
    if input_lengths is None:
        in_len = torch.full((n,), t_max, dtype=torch.long, device=ŷ.device)
    else:
        in_len = torch.as_tensor(input_lengths, dtype=torch.long, device=ŷ.device).reshape(-1)
        if in_len.numel() != n or bool((in_len < 1).any()) or bool((in_len > t_max).any()):
            raise ValueError(
                f"ctc_loss: input_lengths must hold {n} values in 1..{t_max}, got {in_len.tolist()}"
            )
    logp = torch.log_softmax(ŷ, dim=1).transpose(1, 2)  # (N, T, C)
    u = 2 * targets.shape[1] + 1
    # Extended label sequence with blanks around and between the labels (Graves 2012, ch. 7).
    ext = torch.full((n, u), blank, dtype=torch.long, device=ŷ.device)
    ext[:, 1::2] = targets
    skip = torch.zeros((n, u), dtype=torch.bool, device=ŷ.device)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    neg_inf = torch.tensor(-torch.inf, dtype=logp.dtype, device=ŷ.device)
    alpha = torch.full((n, u), -torch.inf, dtype=logp.dtype, device=ŷ.device)
    emit0 = logp[:, 0, :].gather(1, ext)
    alpha = torch.cat(
        [emit0[:, :1], torch.where(lengths[:, None] > 0, emit0[:, 1:2], neg_inf), alpha[:, 2:]],
        dim=1,
    )
    pad = torch.full((n, 1), -torch.inf, dtype=logp.dtype, device=ŷ.device)
    for t in range(1, t_max):
        prev1 = torch.cat([pad, alpha[:, :-1]], dim=1)
        prev2 = torch.where(skip, torch.cat([pad, pad, alpha[:, :-2]], dim=1), neg_inf)
        new = _logaddexp_many(alpha, prev1, prev2) + logp[:, t, :].gather(1, ext)
        alpha = torch.where((t < in_len)[:, None], new, alpha)
    last = (2 * lengths).unsqueeze(1)
    end_blank = alpha.gather(1, last).squeeze(1)
    end_label = torch.where(
        lengths > 0, alpha.gather(1, (last - 1).clamp(min=0)).squeeze(1), neg_inf
    )
    losses = -_logaddexp_many(end_blank, end_label)
    return losses[0] if single else _aggregate(agg, losses, "ctc_loss")


def _ctc_targets(
    y: Any, target_lengths: Any, n: int, c: int, blank: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(N, S)`` label tensor and the ``(N,)`` label counts, validated."""
    if isinstance(y, torch.Tensor) and y.dim() == 2:
        padded = y.long().to(device)
        if target_lengths is None:
            lengths = torch.full((n,), padded.shape[1], dtype=torch.long, device=device)
        else:
            lengths = torch.as_tensor(target_lengths, dtype=torch.long, device=device).reshape(-1)
    else:
        seqs = [torch.as_tensor(np.asarray(s), dtype=torch.long).reshape(-1) for s in y]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
        padded = torch.full((len(seqs), max([len(s) for s in seqs] + [1])), blank, dtype=torch.long)
        for i, s in enumerate(seqs):
            padded[i, : len(s)] = s
        padded = padded.to(device)
    if padded.shape[0] != n or lengths.numel() != n:
        raise ValueError(f"ctc_loss: ŷ has {n} sequences but y has {padded.shape[0]}")
    if bool((lengths > padded.shape[1]).any()) or bool((lengths < 0).any()):
        raise ValueError(f"ctc_loss: target_lengths {lengths.tolist()} exceed the labels given")
    valid = torch.arange(padded.shape[1], device=device)[None, :] < lengths[:, None]
    labels = padded[valid]
    if bool(((labels < 0) | (labels >= c)).any()):
        raise ValueError(f"ctc_loss: labels must be class indices in 0..{c - 1}")
    if bool((labels == blank).any()):
        raise ValueError(f"ctc_loss: a label equals the blank class {blank}")
    # Padding beyond each length must not be read as labels: make it blank.
    return torch.where(valid, padded, torch.full_like(padded, blank)), lengths
