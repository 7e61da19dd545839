"""Flux's automatic train/test mode, and ``trainmode_``/``testmode_`` to force it.

Layers that behave differently while training (Dropout, AlphaDropout, BatchNorm, InstanceNorm)
have an ``active`` attribute: ``None`` (automatic, the default), ``True`` or ``False``.  In
automatic mode a layer is active exactly while a function runs under ``ft.gradient``,
``ft.withgradient`` or ``ft.pullback`` (`fluxtrain.mode.is_differentiating`), as Flux's
layers are active exactly inside Zygote's ``gradient``.  So a training loop written with
``ft.gradient`` needs no mode switching, and evaluating the model outside it is in test mode.

Plain torch modules (``nn.Dropout``, ``nn.BatchNorm2d``...) placed directly in a fluxtrain
container (``Chain``, ``Parallel``, ``SkipConnection``) follow the same rule: the container calls
their ``.train(flag)`` before using them when the flag differs.  A loop that differentiates with
plain ``loss.backward()`` instead of ``ft.gradient`` should call ``trainmode_(model)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..mode import is_differentiating
from ..tree import children

__all__ = ["testmode_", "trainmode_"]

# Marks a plain torch module whose mode was forced by trainmode_/testmode_ (absent: automatic).
_FORCED = "_fluxtrain_active"


def is_active(layer: Any) -> bool:
    """Whether a modal layer behaves as in training right now."""
    active = layer.active
    return is_differentiating() if active is None else active


def auto_mode(module: nn.Module) -> None:
    """Put a plain torch module in the mode Flux's automatic rule gives, unless it was forced."""
    if hasattr(type(module), "_flux_line"):
        return  # fluxtrain layers decide for themselves when called
    d = module.__dict__  # plain lookups: Module.__getattr__ would raise and catch per call
    if d.get("active") is not None or d.get(_FORCED) is not None:
        return
    want = is_differentiating()
    if module.training != want:
        module.train(want)


def _tidy(mode: Any, name: str) -> bool | None:
    if mode is None or mode == "auto":
        return None
    if isinstance(mode, bool):
        return mode
    raise ValueError(f"{name}: mode must be True, False, None or 'auto', got {mode!r}")


def _set_active(model: Any, active: bool | None) -> None:
    seen: set[int] = set()

    def walk(x: Any, switched: bool) -> None:
        if id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, nn.Module):
            if "active" in x.__dict__:
                x.active = active
            else:
                setattr(x, _FORCED, active)
            if active is not None and not switched:
                # torch's own .train()/.eval(), once per outermost module: it recurses, and
                # calls any override a user's module has
                x.train(active)
                switched = True
        ch = children(x)
        if ch:
            for v in ch.values():
                walk(v, switched)

    walk(model, False)


def trainmode_(model: Any, mode: bool | str | None = True) -> Any:
    """Force training behaviour (Dropout drops, BatchNorm uses batch statistics) everywhere in
    ``model``, inside and outside ``gradient`` (Flux's ``trainmode!``); returns ``model``.

    ``trainmode_(m, False)`` is ``testmode_(m)``; ``trainmode_(m, None)`` (or ``'auto'``)
    returns every layer to automatic mode.  Plain torch modules get ``.train()``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = ft.Chain(ft.Dropout(0.5))
        >>> bool((ft.trainmode_(m)(torch.ones(1000)) == 0).any())
        True
        >>> bool((ft.trainmode_(m, None)(torch.ones(1000)) == 0).any())
        False
    """
    active = _tidy(mode, "trainmode_")
    _set_active(model, active)
    return model


def testmode_(model: Any, mode: bool | str | None = True) -> Any:
    """Force test behaviour (Dropout passes input through, BatchNorm uses its running
    statistics) everywhere in ``model``, even inside ``gradient`` (Flux's ``testmode!``);
    returns ``model``.

    ``testmode_(m, False)`` is ``trainmode_(m)``; ``testmode_(m, None)`` (or ``'auto'``) returns
    every layer to automatic mode.  Plain torch modules get ``.eval()``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = ft.testmode_(ft.Dropout(0.5))
        >>> m
        Dropout(0.5, active=False)
    """
    active = _tidy(mode, "testmode_")
    _set_active(model, None if active is None else not active)
    return model


# pytest collects functions named test* from files named on its command line: this is not a test.
testmode_.__test__ = False  # type: ignore[attr-defined]
