"""The two loss conventions, and errors that say which one was expected.

fluxtrain has two ways of calling a loss, both from the Julia packages:

- ``ft.train_`` (Flux's ``train!``) calls ``loss(model, x, y)``: the loss runs the model
  itself, so it can do anything with it (several outputs, a penalty on the weights...).
- ``ft.Learner`` (FluxTraining.jl) calls ``lossfn(ŷ, y)``: the phase runs the model and hands
  its output ``ŷ`` over, so callbacks can see ``ŷ`` and ``lossfn`` is any ``f(ŷ, y)`` such as
  ``ft.losses.mse`` or ``nn.CrossEntropyLoss()``.

Passing one where the other is expected otherwise fails deep inside with a bare ``TypeError``;
these helpers turn that into a message naming both conventions and the fix.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

# Losses of (ŷ, y) whatever their signature says: F.mse_loss(model, x, y) would bind (its third
# parameter is the old size_average) and fail inside with an AttributeError.
_YHAT_Y_MODULES = {
    "fluxtrain.losses": "ft.losses.",
    "torch.nn.functional": "torch.nn.functional.",
}


def describe(fn: Any) -> str:
    """How to write ``fn`` in a message: ``ft.losses.mse``, ``nn.CrossEntropyLoss()``..."""
    if isinstance(fn, nn.Module):
        cls = type(fn)
        prefix = "nn." if cls.__module__.startswith("torch.nn.") else ""
        return f"{prefix}{cls.__name__}()"
    name = getattr(fn, "__name__", None) or type(fn).__name__
    prefix = _YHAT_Y_MODULES.get(getattr(fn, "__module__", None) or "", "")
    return "a lambda" if name == "<lambda>" else f"{prefix}{name}"


def signature(fn: Any) -> inspect.Signature | None:
    """``fn``'s call signature (a Module's ``forward``), or ``None`` if Python cannot tell."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def accepts(fn: Any, nargs: int) -> bool | None:
    """Whether ``fn`` can be called with ``nargs`` positional arguments (``None``: unknown)."""
    sig = signature(fn)
    if sig is None:
        return None
    try:
        sig.bind(*range(nargs))
    except TypeError:
        return False
    return True


def is_prediction_loss(fn: Any) -> bool:
    """Whether ``fn`` is one of the library losses of ``(ŷ, y)``: ``ft.losses.*``,
    ``torch.nn.functional.*`` or a ``torch.nn`` loss module such as ``nn.CrossEntropyLoss()``."""
    if isinstance(fn, nn.Module):
        return type(fn).__module__ == "torch.nn.modules.loss"
    return getattr(fn, "__module__", None) in _YHAT_Y_MODULES


def _shown_signature(fn: Any) -> str:
    sig = signature(fn)
    return "" if sig is None else f" (its signature is {sig})"


def train_convention_error(loss: Any, nargs: int | None = None) -> TypeError:
    """The error for a loss that ``train_`` cannot call as ``loss(model, *item)``: a library
    loss of ``(ŷ, y)``, or one whose signature does not take ``nargs`` arguments."""
    name = describe(loss)
    if isinstance(loss, nn.Module):
        wrap = f"criterion = {name}; ft.train_(lambda model, x, y: criterion(model(x), y), ...)"
    else:
        call = "loss_fn" if name == "a lambda" else name
        wrap = f"ft.train_(lambda model, x, y: {call}(model(x), y), ...)"
    what = (
        "is a loss of (ŷ, y)"
        if nargs is None
        else f"cannot be called with the {nargs} arguments (model, *item)"
    )
    return TypeError(
        f"train_ calls loss(model, x, y) for each item (x, y) of the data: the loss runs the "
        f"model itself, as in Flux's train!. The loss given, {name}{_shown_signature(loss)}, "
        f"{what}. A loss of (ŷ, y) is the convention of ft.Learner's lossfn, where the Learner "
        f"runs the model and passes its output ŷ; for train_, wrap it: {wrap}"
    )


def learner_convention_error(lossfn: Any) -> TypeError:
    """The error for a ``train_``-style ``loss(model, x, y)`` given to a Learner."""
    name = describe(lossfn)
    return TypeError(
        f"the Learner calls lossfn(ŷ, y) with the model's output ŷ and the targets y: its "
        f"phase runs the model, as in FluxTraining.jl. The lossfn given, "
        f"{name}{_shown_signature(lossfn)}, cannot take these two arguments. A loss(model, x, "
        f"y) is the convention of ft.train_ (Flux's train!), where the loss runs the model "
        f"itself; the Learner needs a loss of (ŷ, y) such as ft.losses.mse, "
        f"torch.nn.CrossEntropyLoss() or lambda ŷ, y: ..."
    )


def check_scalar(out: Any, where: str) -> None:
    """Raise a ``ValueError`` naming ``where`` if the loss in ``out`` (or ``out[0]``) is a
    tensor with dimensions; the finer checks (dtype...) are left to the gradient code."""
    loss = out[0] if isinstance(out, tuple) and out else out
    if isinstance(loss, torch.Tensor) and loss.dim() != 0:
        raise ValueError(
            f"{where} is a tensor of shape {tuple(loss.shape)}, not a scalar: reduce it, e.g. "
            f"with .mean() or .sum() (a torch loss built with reduction='none' returns one "
            f"value per sample)"
        )
