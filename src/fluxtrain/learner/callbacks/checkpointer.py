"""``Checkpointer``: saves model, optimiser state and learner state at the end of epochs.

Files go through ``fluxtrain.checkpoint.save(path, model=..., opt_state=..., learner=...)``
(or a ``save_fn`` with that signature), so ``fit_(learner, n, resume=path)`` can continue the
run.  Only the main process writes.  FluxTraining.jl ``src/callbacks/checkpointer.jl``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ... import distributed
from ..callback import Callback
from ..events import EpochEnd, Event
from ..phases import AbstractTrainingPhase

__all__ = ["Checkpointer"]


def _torch_save(path: Any, model: Any, opt_state: Any, learner: dict[str, Any]) -> None:
    # Stand-in while fluxtrain.checkpoint has no save(): one torch.save file, written under a
    # temporary name and renamed so that a failure leaves the previous file as it was.
    tmp = Path(str(path) + ".partial")
    try:
        torch.save({"model": model, "opt_state": opt_state, "learner": learner}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def default_save() -> Callable[..., None]:
    """``fluxtrain.checkpoint.save`` when available, else a ``torch.save`` of everything."""
    from ... import checkpoint

    return getattr(checkpoint, "save", None) or _torch_save


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


class Checkpointer(Callback):
    """Saves a checkpoint at the end of every ``every``-th epoch, keeping the last ``keep``.

    Inside [`fit_`][fluxtrain.learner.fit_] a checkpoint is written once both phases of an epoch are
    done, named from ``filename`` (a format string with ``epoch``, 1-based) in ``folder``;
    outside ``fit_`` after each training epoch.  ``save_fn(path, model=, opt_state=, learner=)``
    writes it (default ``fluxtrain.checkpoint.save``, which writes atomically, so a failed save
    leaves earlier checkpoints as they were).  ``saved`` lists the checkpoints written (oldest
    first); resume from one with ``ft.fit_(learner, n, resume=path)``.

    Example:
        >>> from fluxtrain.callbacks import Checkpointer
        >>> Checkpointer("runs/ckpt", keep=2)
        Checkpointer('runs/ckpt', every=1, keep=2)
    """

    reads = ("*",)
    handles = (EpochEnd,)

    def __init__(
        self,
        folder: str | os.PathLike[str],
        every: int = 1,
        keep: int | None = None,
        filename: str = "epoch_{epoch:03d}.safetensors",
        save_fn: Callable[..., None] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"Checkpointer: every must be >= 1, got {every}")
        if keep is not None and keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1 or None, got {keep}")
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.filename = filename
        self.save_fn = save_fn
        self.saved: list[Path] = []
        self._epochs = 0

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        progress = learner.progress
        if progress is not None:
            if progress.phases_done < progress.nphases:
                return
            epoch = learner.epoch + 1
        else:
            if not isinstance(phase, AbstractTrainingPhase):
                return
            self._epochs += 1
            epoch = self._epochs
        if epoch % self.every == 0 and distributed.is_main_process():
            self.save(learner, self.folder / self.filename.format(epoch=epoch))

    def save(self, learner: Any, path: Path) -> None:
        """Write one checkpoint of ``learner`` to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        save = self.save_fn or default_save()
        save(path, model=learner.model, opt_state=learner.opt_state, learner=learner.state_dict())
        self.saved = [p for p in self.saved if p != path] + [path]
        if self.keep is not None:
            while len(self.saved) > self.keep:
                _remove(self.saved.pop(0))

    def state_dict(self) -> dict[str, Any]:
        return {"saved": [str(p) for p in self.saved], "epochs": self._epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = [Path(p) for p in state["saved"]]
        self._epochs = int(state["epochs"])

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.folder)!r}, every={self.every}, keep={self.keep})"
