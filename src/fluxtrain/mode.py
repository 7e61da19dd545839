"""Flux's automatic train/test mode: layers such as Dropout are active inside ``gradient``.

``gradient``/``withgradient``/``pullback`` run the user's function inside `differentiating`;
layers ask `is_differentiating` when their mode is automatic (``None``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["differentiating", "is_differentiating"]

_DIFFERENTIATING = contextvars.ContextVar("fluxtrain_differentiating", default=False)


def is_differentiating() -> bool:
    """True while a function runs under ``ft.gradient``/``withgradient``/``pullback``."""
    return _DIFFERENTIATING.get()


@contextlib.contextmanager
def differentiating(active: bool = True) -> Iterator[None]:
    """Context in which automatic-mode layers behave as in training."""
    token = _DIFFERENTIATING.set(active)
    try:
        yield
    finally:
        _DIFFERENTIATING.reset(token)
