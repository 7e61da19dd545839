"""``Checkpointer``: saves model, optimiser state and learner state at the end of epochs.

Files go through ``fluxtrain.checkpoint.save(path, model=..., opt_state=..., learner=...)``
(or a ``save_fn`` with that signature), so ``fit_(learner, n, resume=path)`` can continue the
run.  Only the main process writes, except for a sharded model (FSDP2), whose checkpoint every
rank writes its shards of (``ft.save`` makes it a directory, see ``fluxtrain.sharded_checkpoint``).
FluxTraining.jl ``src/callbacks/checkpointer.jl``.
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
from ..phases import AbstractTrainingPhase, AbstractValidationPhase
from ..state import phase_key
from .stopping import EarlyStopping

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
    """Saves a checkpoint at the end of every ``every``-th epoch, keeping the last ``keep``
    and, with ``keep_best``, the best ``keep_best`` by a metric.

    Inside [`fit_`][fluxtrain.learner.fit_] a checkpoint is written once both phases of an epoch are
    done, named from ``filename`` (a format string with ``epoch``, 1-based) in ``folder``;
    outside ``fit_`` after each training epoch.  ``save_fn(path, model=, opt_state=, learner=)``
    writes it (default ``fluxtrain.checkpoint.save``, which writes atomically, so a failed save
    leaves earlier checkpoints as they were).  Resume from one with
    ``ft.fit_(learner, n, resume=path)``.

    Which files stay (the others this callback wrote are deleted after each save):

    - ``keep=None`` and no ``keep_best``: all of them;
    - ``keep=k``: the last ``k``;
    - ``keep_best=k`` (FluxTraining.jl's ``keep_top_k``): the ``k`` with the best ``metric``
      (recorded by ``Metrics``) of the last epoch of ``phase`` before each save, lower is
      better with ``mode="min"``, higher with ``"max"``; plus the last ``keep`` (default 1, so
      that the run can be resumed).

    ``saved`` lists the files kept (oldest first) and ``best`` the ``(value, path)`` pairs of
    the best ones (best first).  Both are part of the learner state stored in each checkpoint,
    as they are after that checkpoint is written, so ``keep`` and ``keep_best`` hold across
    resumes: the checkpoint a run resumed from is rotated out like any other.

    At ``EpochEnd`` it runs after every callback that writes learner state, and after
    ``EarlyStopping``, so that the checkpoint of the last epoch holds their final state.

    Example:
        >>> from fluxtrain.callbacks import Checkpointer
        >>> Checkpointer("runs/ckpt", keep=2)
        Checkpointer('runs/ckpt', every=1, keep=2)
        >>> Checkpointer("runs/ckpt", keep_best=3, metric="Accuracy", mode="max")
        Checkpointer('runs/ckpt', every=1, keep=None, keep_best=3, metric='Accuracy', mode='max')
    """

    reads = ("*",)
    handles = (EpochEnd,)
    runafter = (EarlyStopping,)

    def __init__(
        self,
        folder: str | os.PathLike[str],
        every: int = 1,
        keep: int | None = None,
        filename: str = "epoch_{epoch:03d}.safetensors",
        save_fn: Callable[..., None] | None = None,
        *,
        keep_best: int | None = None,
        metric: str = "Loss",
        mode: str = "min",
        phase: type = AbstractValidationPhase,
    ) -> None:
        if every < 1:
            raise ValueError(f"Checkpointer: every must be >= 1, got {every}")
        if keep is not None and keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1 or None, got {keep}")
        if keep_best is not None and (
            isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 1
        ):
            raise ValueError(
                f"Checkpointer: keep_best must be an int >= 1 or None, got {keep_best!r}"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"Checkpointer: mode must be 'min' or 'max', got {mode!r}")
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.filename = filename
        self.save_fn = save_fn
        self.keep_best = keep_best
        self.metric = metric
        self.mode = mode
        self.phase = phase
        self.saved: list[Path] = []
        self.best: list[tuple[float, Path]] = []
        self._epochs = 0
        self._value: float | None = None  # the metric of the last epoch of `phase`

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if self.keep_best is not None and isinstance(phase, self.phase):
            hist = learner.cbstate.metrics_epoch[phase]
            if self.metric not in hist:
                raise KeyError(
                    f"Checkpointer(keep_best={self.keep_best}) ranks by {self.metric!r}, which "
                    f"Metrics does not record for {phase_key(phase)} (recorded: "
                    f"{hist.names()}); add it to Metrics(...)"
                )
            self._value = float(hist.last(self.metric))
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
        if epoch % self.every == 0 and (distributed.is_main_process() or self._sharded(learner)):
            self.save(learner, self.folder / self.filename.format(epoch=epoch))

    @staticmethod
    def _sharded(learner: Any) -> bool:
        """A sharded model (FSDP2) is saved by every rank, each writing its own shards."""
        from ...sharded_checkpoint import is_sharded

        return is_sharded(learner.model, learner.opt_state)

    def _ranked(self, path: Path) -> list[tuple[float, Path]]:
        """``best`` with ``path`` entered at this epoch's metric value, best first."""
        if self._value is None:
            raise ValueError(
                f"Checkpointer(keep_best={self.keep_best}) has no {self.metric} of "
                f"{self.phase.__name__} for this epoch: that phase did not run (pass "
                f"phase=ft.AbstractTrainingPhase when there is no validation data)"
            )
        others = [b for b in self.best if b[1] != path]
        sign = 1.0 if self.mode == "min" else -1.0
        # Stable sort: of equal values, the earlier checkpoint stays ahead.
        ranked = sorted([*others, (self._value, path)], key=lambda b: sign * b[0])
        return ranked[: self.keep_best]

    def save(self, learner: Any, path: Path) -> None:
        """Write one checkpoint of ``learner`` to ``path``, then delete the files no longer
        kept.  If writing fails, nothing is deleted and ``saved``/``best`` stay as they were."""
        path.parent.mkdir(parents=True, exist_ok=True)
        save = self.save_fn or default_save()
        written = [p for p in self.saved if p != path] + [path]
        best = self._ranked(path) if self.keep_best is not None else []
        last = self.keep if self.keep is not None else (1 if self.keep_best is not None else None)
        kept = set(written if last is None else written[-last:]) | {p for _, p in best}
        before = self.saved, self.best
        # The learner state stored in the checkpoint lists the files as they are after it.
        self.saved = [p for p in written if p in kept]
        self.best = best
        try:
            save(
                path, model=learner.model, opt_state=learner.opt_state, learner=learner.state_dict()
            )
        except BaseException:
            self.saved, self.best = before
            raise
        if distributed.is_main_process():  # every rank keeps the same lists; rank 0 deletes
            for p in written:
                if p not in kept:
                    _remove(p)

    def state_dict(self) -> dict[str, Any]:
        return {
            "saved": [str(p) for p in self.saved],
            "epochs": self._epochs,
            "best": [[v, str(p)] for v, p in self.best],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [Path(p) for p in state["saved"]]
        best = [(float(v), Path(p)) for v, p in state.get("best", [])]
        self.saved, self.best, self._epochs = saved, best, int(state["epochs"])

    def __repr__(self) -> str:
        out = f"Checkpointer({str(self.folder)!r}, every={self.every}, keep={self.keep}"
        if self.keep_best is not None:
            out += f", keep_best={self.keep_best}, metric={self.metric!r}, mode={self.mode!r}"
        return out + ")"
