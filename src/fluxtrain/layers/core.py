"""The base class of fluxtrain's layers, the wrapper for plain functions, and argument helpers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from . import show
from .activations import identity

__all__: list[str] = []


class Layer(nn.Module):
    """Base of fluxtrain's layers: a ``torch.nn.Module`` that prints as Flux prints.

    Subclasses implement ``_flux_line()`` (the one-line form, Julia's compact ``show``);
    containers also implement ``_flux_children()``.  ``repr`` gives the Flux display with
    parameter counts.
    """

    def _flux_line(self) -> str:
        return type(self).__name__ + "()"

    def __repr__(self) -> str:
        return show.big_show(self)


class Func(Layer):
    """A plain function used as a layer inside a container (``Chain(Dense(2, 3), softmax)``).

    Prints as the function's name; calling it calls the function.

    Example:
        >>> import fluxtrain as ft
        >>> Func(ft.relu)
        relu
    """

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"a layer must be a torch Module or a function, got {fn!r}")
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def _flux_line(self) -> str:
        return show.function_name(self.fn)


def as_module(layer: Any) -> nn.Module:
    """``layer`` itself if it is a Module, else wrapped in `Func` (lists become Chains)."""
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, (list, tuple)):
        from .basic import Chain

        return Chain(*layer)
    return Func(layer)


def unwrap(layer: nn.Module) -> Any:
    """The function inside a `Func`, any other layer as it is."""
    return layer.fn if type(layer) is Func else layer


def in_out(name: str, args: tuple, usage: str) -> tuple[int, int, tuple]:
    """Parse Flux's ``in => out`` written as ``(in, out)`` or as two integers.

    Returns ``(in, out, remaining positional args)``.
    """
    if args and isinstance(args[0], (tuple, list)) and len(args[0]) == 2:
        a, b = args[0]
        rest = args[1:]
    elif len(args) >= 2 and _is_int(args[0]) and _is_int(args[1]):
        a, b = args[0], args[1]
        rest = args[2:]
    else:
        raise TypeError(f"{name} needs sizes as {usage}, got {args!r}")
    if not (_is_int(a) and _is_int(b)) or a < 1 or b < 1:
        raise ValueError(f"{name}: sizes must be positive integers, got {a!r} => {b!r}")
    return int(a), int(b), rest


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def act_or_identity(act: Any) -> Callable[..., Any]:
    if act is None:
        return identity
    if not callable(act):
        raise TypeError(f"the activation must be a function such as ft.relu, got {act!r}")
    return act


def act_suffix(act: Callable[..., Any], default: Callable[..., Any] = identity) -> str:
    """``', relu'`` for a non-default activation, ``''`` otherwise (as Flux prints layers)."""
    return "" if act is default else ", " + show.function_name(act)


_warned: set[tuple[str, torch.dtype, torch.dtype]] = set()


def match_input(x: Any, ref: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``x`` as a tensor of ``ref``'s dtype and device.

    Like Flux, a floating input of another precision is converted, with a warning once per
    layer type and dtype pair (a float64 NumPy array fed to a float32 model is the usual case);
    integer input is converted silently.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype == ref.dtype and x.device == ref.device:
            return x
    else:
        x = torch.as_tensor(np.asarray(x))
    if x.dtype != ref.dtype:
        if x.is_floating_point() and ref.is_floating_point():
            key = (type(layer).__name__, x.dtype, ref.dtype)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"{type(layer).__name__} with {ref.dtype} parameters got {x.dtype} input; "
                    f"converting it (convert the data once, or the model with ft.f64/ft.f32, "
                    f"to avoid this)",
                    stacklevel=5,
                )
        x = x.to(ref.dtype)
    if x.device != ref.device:
        x = x.to(ref.device)
    return x


def check_size(layer: nn.Module, x: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """Raise a clear error when ``x.shape[dim] != expected``."""
    if x.dim() == 0 or x.dim() <= (dim if dim >= 0 else -dim - 1) or x.shape[dim] != expected:
        where = "its last dimension" if dim == -1 else f"dimension {dim}"
        raise ValueError(
            f"{layer._flux_line()} expects {expected} {what} in {where} of its input, "
            f"got input of shape {tuple(x.shape)}"
        )
