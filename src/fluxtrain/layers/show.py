"""Flux-style printing of models, and [`summary`][fluxtrain.layers.summary] with parameter counts.

A leaf layer prints on one line with its parameter count (Flux's ``_layer_show``)::

    Dense(784 => 32, σ)  # 25_120 parameters

A container (``Chain``, ``Parallel``, ``SkipConnection``) prints one child per line, indented,
each with its count, and ends with a total when it holds more than two trainable arrays
(Flux's ``_big_show``/``_big_finale``, Flux.jl ``src/layers/show.jl``).  Trainable means what
[`fluxtrain.trainables`][fluxtrain.tree.trainables] returns; everything else reachable (BatchNorm's running statistics,
frozen parameters) is "non-trainable".  Sizes are the bytes of the distinct tensors (Flux prints
Julia's ``summarysize``, which has no torch equivalent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..tree import children, trainables

__all__ = ["ModelSummary", "summary"]


def underscorise(n: int) -> str:
    """``25120 -> '25_120'``, Julia's digit grouping as Flux prints it.

    Example:
        >>> underscorise(1234567)
        '1_234_567'
    """
    return f"{n:_}"


def format_bytes(n: int) -> str:
    """Bytes in Julia's ``Base.format_bytes`` style: ``'96 bytes'``, ``'99.664 KiB'``.

    Example:
        >>> format_bytes(102056)
        '99.664 KiB'
    """
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.3f} {unit}"
    raise AssertionError("unreachable")


def function_name(f: Callable[..., Any]) -> str:
    """How a function inside a layer prints: its name (``σ``, ``relu``, ``+`` for ``operator.add``)."""
    import operator

    symbols = {
        operator.add: "+",
        operator.mul: "*",
        operator.sub: "-",
        operator.truediv: "/",
        operator.matmul: "@",
        torch.add: "+",
        torch.mul: "*",
    }
    try:
        if f in symbols:
            return symbols[f]
    except TypeError:  # unhashable callables
        pass
    if isinstance(f, nn.Module):
        return layer_line(f)
    name = getattr(f, "__name__", None)
    if name is not None:
        return name
    return repr(f)


def layer_line(m: Any) -> str:
    """The one-line form of a layer (Julia's compact ``show``): ``Dense(2 => 3, relu)``."""
    line = getattr(m, "_flux_line", None)
    if line is not None:
        return line()
    if isinstance(m, nn.Module):
        r = repr(m)
        return r if "\n" not in r else type(m).__name__ + "(...)"
    if callable(m):
        return function_name(m)
    return repr(m)


# ---------------------------------------------------------------------------------------------
# Counting


def _all_tensors(model: Any) -> list[torch.Tensor]:
    """Every distinct tensor reachable in ``model`` (parameters, buffers, tensor leaves)."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
            return
        ch = children(x)
        if ch:
            for v in ch.values():
                walk(v)

    walk(model)
    return out


def _counts(model: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(trainable tensors, non-trainable tensors) of ``model``, each tensor once."""
    train = trainables(model)
    ids = {id(t) for t in train}
    rest = [t for t in _all_tensors(model) if id(t) not in ids]
    return train, rest


def _nan_note(tensors: list[torch.Tensor]) -> str:
    # Flux flags layers whose parameters are all zero or not finite; cheap enough for printing.
    if not tensors:
        return ""
    with torch.no_grad():
        if all(not bool(t.any()) for t in tensors):
            return "  (all zero)"
        if any(bool(t.isnan().any()) for t in tensors if t.is_floating_point()):
            return "  (some NaN)"
        if any(bool(t.isinf().any()) for t in tensors if t.is_floating_point()):
            return "  (some Inf)"
    return ""


# ---------------------------------------------------------------------------------------------
# Printing


def _is_container(m: Any) -> bool:
    if getattr(m, "_flux_children", None) is not None:
        return True
    # A plain torch module with submodules (nn.Sequential, a user's nn.Module) is expanded,
    # as Flux expands structs it does not know.
    return isinstance(m, nn.Module) and not hasattr(m, "_flux_line") and bool(m._modules)


def _container_children(m: Any) -> list[tuple[Any, Any]]:
    if getattr(m, "_flux_children", None) is not None:
        return m._flux_children()
    return [(None if k.isdigit() else k, v) for k, v in m._modules.items()]


def _leaf_lines(m: Any, indent: int, name: Any) -> list[str]:
    text = ("" if name is None else f"{name} = ") + layer_line(m)
    train, rest = _counts(m)
    line = " " * indent + text + ("," if indent else "")
    return [line + _comment(train, rest, indent, len(text))]


def _comment(train: list, rest: list, indent: int, width: int) -> str:
    if not train:
        return ""
    npar = sum(t.numel() for t in train)
    pad = " " * max(2, (20 if indent == 0 else 39) - indent - width)
    out = f"{pad}# {underscorise(npar)} parameters"
    nonpar = sum(t.numel() for t in rest)
    if nonpar > 0:
        out += f", plus {underscorise(nonpar)}" + (" non-trainable" if indent == 0 else "")
    return out + _nan_note(train)


def _big_lines(m: Any, indent: int, name: Any) -> list[str]:
    if not _is_container(m):
        return _leaf_lines(m, indent, name)
    pre = ("" if name is None else f"{name} = ") + type(m).__name__ + "("
    lines = [" " * indent + pre]
    for child_name, child in _container_children(m):
        if isinstance(child, nn.Module) or child is None:
            lines.extend(_big_lines(child, indent + 2, child_name))
        else:  # a function, e.g. the connection of Parallel / SkipConnection
            lines.append(" " * (indent + 2) + function_name(child) + ",")
    lines.append(" " * indent + ")" + ("," if indent else ""))
    return lines


def _finale(model: Any, force: bool) -> str:
    train, rest = _counts(model)
    if len(train) <= 2 and not force:
        return ""
    npar = underscorise(sum(t.numel() for t in train))
    size = format_bytes(sum(t.numel() * t.element_size() for t in train + rest))
    if rest:
        nonpar = underscorise(sum(t.numel() for t in rest))
        return (
            f"         # Total: {len(train)} trainable arrays, {npar} parameters,\n"
            f"          # plus {len(rest)} non-trainable, {nonpar} parameters, {size}."
        )
    return f"                   # Total: {len(train)} arrays, {npar} parameters, {size}."


def big_show(model: Any, force_total: bool = False) -> str:
    """The multi-line Flux display of ``model`` (what ``repr`` of a fluxtrain layer gives)."""
    if not _is_container(model):
        return "\n".join(_leaf_lines(model, 0, None))
    lines = _big_lines(model, 0, None)
    fin = _finale(model, force_total)
    if fin:
        lines[-1] = lines[-1] + fin
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# summary


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Parameter counts of a model; ``str()`` gives Flux's display with the totals.

    Attributes: ``trainable_arrays``, ``trainable_params`` (tensors and their elements that an
    optimiser updates), ``nontrainable_arrays``, ``nontrainable_params`` (buffers such as
    BatchNorm's running statistics, frozen parameters), ``nbytes`` (all distinct tensors).

    Example:
        >>> import fluxtrain as ft
        >>> ft.summary(ft.Dense(2, 3)).nbytes
        36
    """

    trainable_arrays: int
    trainable_params: int
    nontrainable_arrays: int
    nontrainable_params: int
    nbytes: int
    text: str

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def summary(model: Any) -> ModelSummary:
    """Count the trainable and non-trainable parameters of ``model`` (any tree or Module).

    ``print(summary(model))`` shows the model as Flux prints it, always ending with the totals,
    e.g. ``# Total: 4 trainable arrays, 15 parameters, / # plus 2 non-trainable, 6 parameters``.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.summary(ft.Chain(ft.Dense(2, 3), ft.BatchNorm(3)))
        >>> s.trainable_arrays, s.trainable_params, s.nontrainable_arrays, s.nontrainable_params
        (4, 15, 2, 6)
    """
    train, rest = _counts(model)
    nbytes = sum(t.numel() * t.element_size() for t in train + rest)
    if _is_container(model) or isinstance(model, nn.Module):
        text = big_show(model, force_total=True)
        if not _is_container(model):
            text += "\n" + _finale(model, True).strip()
    else:
        text = _finale(model, True).strip()
    return ModelSummary(
        trainable_arrays=len(train),
        trainable_params=sum(t.numel() for t in train),
        nontrainable_arrays=len(rest),
        nontrainable_params=sum(t.numel() for t in rest),
        nbytes=nbytes,
        text=text,
    )
