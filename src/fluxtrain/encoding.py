"""One-hot encoding of class labels: ``onehot`` and its inverse ``onecold`` (Flux's OneHotArrays).

The class dimension is dimension 1, just after the batch dimension, as in PyTorch and as in
[`fluxtrain.losses`][fluxtrain.losses] (Flux puts classes first and the batch last). Classes are either a count
``C`` (labels are the integers ``0..C-1``, as in ``torch.nn.functional.one_hot``) or a sequence
of class values, as in Flux's ``onehotbatch(labels, 0:9)`` or ``onehotbatch("abca", 'a':'c')``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["onecold", "onehot"]

_NO_DEFAULT = object()


def _class_list(classes: int | Sequence[Any] | torch.Tensor) -> tuple[int, list[Any] | None]:
    """Number of classes and, when classes are values rather than a count, their list."""
    if isinstance(classes, bool):
        raise TypeError("onehot: classes must be a number of classes or a sequence of classes")
    if isinstance(classes, int | np.integer):
        if classes < 1:
            raise ValueError(f"onehot: the number of classes must be positive, got {classes}")
        return int(classes), None
    if isinstance(classes, torch.Tensor | np.ndarray):
        classes = classes.tolist()
    values = list(classes)
    if not values:
        raise ValueError("onehot: classes is empty")
    return len(values), values


def onehot(
    labels: Any,
    classes: int | Sequence[Any] | torch.Tensor,
    *,
    default: Any = _NO_DEFAULT,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One-hot encode ``labels`` (Flux's ``onehot``/``onehotbatch``), classes along dimension 1.

    ``classes`` is either the number of classes ``C`` (labels are integers ``0..C-1``) or a
    sequence of class values (``range(10)``, ``"abc"``, ``["cat", "dog"]``), a label being encoded
    by its position in that sequence. A single label gives a vector of length ``C``; labels of
    shape ``(N,)`` give ``(N, C)``; labels of shape ``(N, *rest)`` give ``(N, C, *rest)``.

    A label that is not a class raises ``ValueError`` naming it and its position, unless
    ``default`` names the class to use instead (Flux's ``onehotbatch(data, labels, default)``).

    Example:
        >>> onehot(torch.tensor([2, 0, 1]), 3)
        tensor([[0., 0., 1.],
                [1., 0., 0.],
                [0., 1., 0.]])
        >>> onehot(list("abca"), "abc")[3]
        tensor([1., 0., 0.])
    """
    n_classes, values = _class_list(classes)
    if values is not None and not all(isinstance(v, int | float | bool) for v in values):
        return _onehot_values(labels, values, default, dtype)
    if isinstance(labels, torch.Tensor):
        t = labels
    else:
        t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, int) else labels)
    if t.is_floating_point() and values is None:
        raise TypeError(f"onehot: labels must be integers when classes is a count, got {t.dtype}")
    if values is None:
        index = t.long()
        known = (index >= 0) & (index < n_classes)
    else:
        table = torch.as_tensor(values, device=t.device)
        matches = t.unsqueeze(-1) == table
        known = matches.any(-1)
        index = matches.long().argmax(-1)
    if not bool(known.all()):
        if default is _NO_DEFAULT:
            where = torch.nonzero(~known)[0].tolist()
            bad = t[tuple(where)].item() if t.dim() else t.item()
            raise ValueError(
                f"onehot: label {bad!r} at position {tuple(where)} is not one of the "
                f"{n_classes} classes {_show_classes(n_classes, values)}; pass default= "
                "to map unknown labels to a class"
            )
        index = torch.where(known, index, _position(default, n_classes, values))
    out = torch.nn.functional.one_hot(index, n_classes).to(dtype)
    # one_hot appends classes last; ours go just after the batch dimension.
    return out if out.dim() <= 2 else out.movedim(-1, 1)


def _onehot_values(labels: Any, values: list[Any], default: Any, dtype: torch.dtype):
    """onehot for non-numeric classes (characters, strings): a lookup per label."""
    lookup = {v: i for i, v in enumerate(values)}
    single = isinstance(labels, str) and labels in lookup
    items = [labels] if single else list(labels)
    index = []
    for i, label in enumerate(items):
        if label in lookup:
            index.append(lookup[label])
        elif default is not _NO_DEFAULT:
            index.append(_position(default, len(values), values))
        else:
            raise ValueError(
                f"onehot: label {label!r} at position {i} is not one of the {len(values)} "
                f"classes {_show_classes(len(values), values)}; pass default= to map unknown "
                "labels to a class"
            )
    out = torch.nn.functional.one_hot(torch.tensor(index), len(values)).to(dtype)
    return out[0] if single else out


def _position(default: Any, n_classes: int, values: list[Any] | None) -> int:
    if values is None:
        if not 0 <= int(default) < n_classes:
            raise ValueError(f"onehot: default={default!r} is not a class 0..{n_classes - 1}")
        return int(default)
    if default not in values:
        raise ValueError(f"onehot: default={default!r} is not one of the classes")
    return values.index(default)


def _show_classes(n_classes: int, values: list[Any] | None) -> str:
    if values is None:
        return f"0..{n_classes - 1}"
    shown = ", ".join(repr(v) for v in values[:10])
    return f"[{shown}{', ...' if len(values) > 10 else ''}]"


def onecold(
    y: torch.Tensor | np.ndarray,
    classes: Sequence[Any] | torch.Tensor | None = None,
    *,
    dims: int = 1,
) -> Any:
    """The inverse of [`onehot`][fluxtrain.encoding.onehot]: the class of the largest entry along the class dimension.

    Flux's ``onecold``. ``y`` is one-hot labels or scores/probabilities of shape ``(N, C, *rest)``
    (or a single vector of length ``C``). Returns the class indices (int64 tensor of shape
    ``(N, *rest)``, or an ``int`` for a vector); with ``classes`` given, the class values
    instead: a tensor when the classes are numbers, a list (or one value) otherwise.

    Example:
        >>> onecold(torch.tensor([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]]))
        tensor([1, 0])
        >>> onecold(torch.tensor([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]]), "abc")
        ['b', 'a']
        >>> onecold(onehot(torch.tensor([3, 1]), range(1, 5)), range(1, 5))
        tensor([3, 1])
    """
    t = torch.as_tensor(y)
    if t.dim() == 0:
        raise ValueError("onecold: y is a scalar; it needs a class dimension")
    dim = 0 if t.dim() == 1 else dims
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"onecold: dims={dims} is out of range for y of shape {tuple(t.shape)}")
    index = t.argmax(dim)
    if classes is None:
        return int(index) if index.dim() == 0 else index
    n = t.shape[dim]
    n_classes, values = _class_list(classes)
    if values is None:
        values = list(range(n_classes))
    if n_classes != n:
        raise ValueError(
            f"onecold: y has {n} entries along the class dimension {dim} but {n_classes} "
            "classes were given"
        )
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        picked = torch.as_tensor(values, device=index.device)[index]
        return picked.item() if picked.dim() == 0 else picked
    if index.dim() == 0:
        return values[int(index)]
    flat = [values[i] for i in index.flatten().tolist()]
    if index.dim() == 1:
        return flat
    return np.array(flat, dtype=object).reshape(tuple(index.shape)).tolist()
