"""``lr_find``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training
Neural Networks", section 3.3; fastai's ``lr_find``).

The learning rate grows exponentially from ``start`` to ``stop`` over ``nsteps`` training steps,
``lr_i = start * (stop / start) ** (i / (nsteps - 1))``, while the loss is recorded and smoothed
with a bias-corrected exponential moving average (fastai: ``avg = beta*avg + (1-beta)*loss``,
``smoothed = avg / (1 - beta**(i+1))``).  The sweep stops early once the smoothed loss exceeds
``diverge`` times its minimum or is not finite.  The suggested rate is where the smoothed loss
falls fastest against ``log(lr)`` (the minimum of its numerical gradient, leaving out the
first tenth of the sweep, where the average is noisiest).

It runs on copies of the model and optimiser state and without the learner's callbacks, so the
learner is left exactly as it was (FluxTraining.jl ``src/advanced/lrfinder.jl`` does the sweep
on the learner itself).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..optimisers import adjust_
from .control import Handle, runepoch
from .phases import AbstractTrainingPhase, TrainingPhase, step_

__all__ = ["LRFinderResult", "lr_find"]


@dataclasses.dataclass
class LRFinderResult:
    """The outcome of `lr_find`: the rates tried, the raw and smoothed losses, and the
    suggested rate."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw smoothed loss against learning rate (log scale) to the PNG ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.axvline(self.suggestion, color="red", linestyle="--", label=f"{self.suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path

    def __repr__(self) -> str:
        return f"LRFinderResult({len(self.lrs)} steps, suggestion={self.suggestion:.3g})"


def _suggest(lrs: list[float], smoothed: list[float]) -> float:
    # The first points carry the most noise (few batches averaged): leave out the first tenth,
    # as fastai leaves out its first points (``skip_start``).
    skip = len(lrs) // 10
    lrs, smoothed = lrs[skip:], smoothed[skip:]
    if len(lrs) < 3:
        return lrs[int(np.argmin(smoothed))] / 10
    slope = np.gradient(np.asarray(smoothed), np.log(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slope))])


def lr_find(
    learner: Any,
    start: float = 1e-7,
    stop: float = 10.0,
    nsteps: int = 100,
    *,
    beta: float = 0.98,
    diverge: float = 4.0,
    phase: AbstractTrainingPhase | None = None,
    plot: str | os.PathLike[str] | None = None,
) -> LRFinderResult:
    """Sweep the learning rate exponentially from ``start`` to ``stop`` over ``nsteps`` steps
    of ``phase`` (``TrainingPhase()`` by default) on the learner's training data, cycling
    through it as needed; return the rates, losses and a suggested rate.

    The sweep works on copies: ``learner.model``, ``learner.opt_state`` and everything else are
    unchanged afterwards, and the torch random state and the training loader's position are
    restored, so a fit afterwards is the same as without the sweep.  ``plot`` saves the curve to a PNG file.

    Example:
        >>> import torch, fluxtrain as ft
        >>> x = torch.randn(64, 4)
        >>> data = [(x[i:i + 16], x[i:i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
        >>> model = torch.nn.Linear(4, 1)
        >>> learner = ft.Learner(model, torch.nn.functional.mse_loss, ft.Descent(),
        ...                      callbacks=[], data=data)
        >>> before = model.weight.clone()
        >>> result = ft.lr_find(learner, 1e-4, 10.0, nsteps=30)
        >>> torch.equal(model.weight, before), 1e-4 <= result.suggestion <= 10.0
        (True, True)
    """
    if not 0 < start < stop:
        raise ValueError(f"lr_find needs 0 < start < stop, got start={start}, stop={stop}")
    if isinstance(nsteps, bool) or not isinstance(nsteps, int) or nsteps < 2:
        raise ValueError(f"lr_find: nsteps must be an int >= 2, got {nsteps!r}")
    if not 0 <= beta < 1:
        raise ValueError(f"lr_find: beta must be in [0, 1), got {beta}")
    train = learner.data.training
    if train is None:
        raise ValueError("lr_find needs training data: Learner(..., data=(train, valid))")
    phase = phase if phase is not None else TrainingPhase()

    # One memo: tensors shared between model and state stay shared in the copies.
    memo: dict[int, Any] = {}
    model = copy.deepcopy(learner.model, memo)
    opt_state = copy.deepcopy(learner.opt_state, memo)

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []

    def sweep(handle: Handle) -> None:
        avg, best = 0.0, math.inf
        ratio = stop / start
        while len(lrs) < nsteps:
            nbatches = 0
            for batch in train:
                nbatches += 1
                i = len(lrs)
                lr = start * ratio ** (i / (nsteps - 1))
                adjust_(learner.opt_state, eta=lr)
                loss = float(step_(learner, phase, batch).loss)
                lrs.append(lr)
                losses.append(loss)
                avg = beta * avg + (1 - beta) * loss
                s = avg / (1 - beta ** (i + 1))
                smoothed.append(s)
                if not math.isfinite(s) or s > diverge * best:
                    return
                best = min(best, s)
                if len(lrs) == nsteps:
                    return
            if nbatches == 0:
                raise ValueError("lr_find: the training data is empty")

    saved = (learner.model, learner.opt_state, learner.step, learner._runner)
    # The sweep draws batches (a DataLoader advances its order) and random numbers (Dropout):
    # put both back so that training afterwards sees what it would have seen.
    rng = torch.get_rng_state()
    loader_state = train.state_dict() if callable(getattr(train, "state_dict", None)) else None
    try:
        learner.model, learner.opt_state = model, opt_state
        learner._runner = type(learner._runner)([], {})
        runepoch(sweep, learner, phase)
    finally:
        learner.model, learner.opt_state, learner.step, learner._runner = saved
        torch.set_rng_state(rng)
        if loader_state is not None:
            train.load_state_dict(loader_state)

    # Points after divergence would dominate the slope: leave the last one out when it diverged.
    keep = len(lrs) if len(lrs) == nsteps else max(len(lrs) - 1, 1)
    finite = [i for i in range(keep) if math.isfinite(smoothed[i])]
    sel_lrs = [lrs[i] for i in finite] or lrs[:1]
    sel_smooth = [smoothed[i] for i in finite] or smoothed[:1]
    result = LRFinderResult(lrs, losses, smoothed, _suggest(sel_lrs, sel_smooth))
    if plot is not None:
        result.plot(plot)
    return result
