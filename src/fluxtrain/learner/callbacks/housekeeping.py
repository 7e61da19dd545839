"""``GarbageCollect``: frees memory every few steps (FluxTraining.jl ``GarbageCollect``)."""

from __future__ import annotations

import gc
from typing import Any

import torch

from ..callback import Callback
from ..events import Event, StepEnd

__all__ = ["GarbageCollect"]


class GarbageCollect(Callback):
    """Runs Python's garbage collector, and empties the CUDA cache when CUDA is in use, after
    every ``every``-th step.

    Example:
        >>> from fluxtrain.callbacks import GarbageCollect
        >>> GarbageCollect(50)
        GarbageCollect(every=50)
    """

    handles = (StepEnd,)

    def __init__(self, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"GarbageCollect: every must be >= 1, got {every}")
        self.every = every
        self.count = 0

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        self.count += 1
        if self.count % self.every == 0:
            gc.collect()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"GarbageCollect(every={self.every})"
