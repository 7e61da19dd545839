"""``SanityCheck``: runs one batch through model, loss and gradient before fitting, and turns
what fails into one readable error (FluxTraining.jl ``src/callbacks/sanitycheck.jl``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ...gradient import gradient
from ...tree import children
from ..callback import Callback
from ..control import _modules
from ..events import EpochBegin, Event, FitBegin
from ..phases import AbstractTrainingPhase, autocast_context

__all__ = ["SanityCheck", "SanityCheckError"]


class SanityCheckError(ValueError):
    """One or more sanity checks failed; the message lists each with its cause."""


class _Failed(Exception):
    pass


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {str(x.dtype).removeprefix('torch.')}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)}: [" + ", ".join(_describe(v) for v in x) + "]"
    return type(x).__name__


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    ch = children(tree)
    if ch is None:
        return []
    return [t for v in ch.values() for t in _leaves(v)]


class SanityCheck(Callback):
    """Checks, once before the first training epoch, that:

    1. there is training data, and its first batch is a pair ``(xs, ys)``;
    2. ``model(xs)`` runs;
    3. ``lossfn(model(xs), ys)`` is a real scalar, and finite;
    4. its gradient reaches the parameters and is finite.

    All failures are reported together in a [`SanityCheckError`][fluxtrain.callbacks.SanityCheckError] naming each check, the
    exception it met and the shapes involved.  Missing validation data only warns.  The
    model's buffers (e.g. BatchNorm statistics), the torch random state and the training
    loader's state are restored afterwards, and no update is made: training runs as it would
    without the check.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.ones(4, 3), torch.ones(4, 1))]
        >>> learner = ft.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.SanityCheck()], data=(data, data))
        >>> try:
        ...     ft.fit_(learner, 1)
        ... except ft.callbacks.SanityCheckError as e:
        ...     print(str(e).splitlines()[0])
        SanityCheck: the check 'model(xs) runs' failed before training:
    """

    reads = ("data", "model", "lossfn", "callbacks", "autocast")
    handles = (FitBegin, EpochBegin)

    def __init__(self) -> None:
        self.checked = False

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if self.checked or (
            isinstance(event, EpochBegin) and not isinstance(phase, AbstractTrainingPhase)
        ):
            return
        self.checked = True
        self.run(learner)

    def run(self, learner: Any) -> None:
        """Run the checks now; raise [`SanityCheckError`][fluxtrain.callbacks.SanityCheckError] if any fails."""
        ctx: dict[str, Any] = {}
        checks: list[tuple[str, Callable[[Any, dict[str, Any]], None]]] = [
            ("training data yields (xs, ys) pairs", self._check_data),
            ("model(xs) runs", self._check_forward),
            ("lossfn(model(xs), ys) is a finite real scalar", self._check_loss),
            ("the gradient reaches the parameters and is finite", self._check_gradient),
        ]
        failed: tuple[str, str] | None = None
        saved = _save_buffers(learner.model)
        # Drawing a batch and running Dropout use random numbers and may advance the loader:
        # put both back so that checking does not change what training sees.
        rng = torch.get_rng_state()
        train = learner.data.training
        loader_state = train.state_dict() if callable(getattr(train, "state_dict", None)) else None
        try:
            for name, check in checks:
                try:
                    check(learner, ctx)
                except _Failed as e:
                    failed = (name, str(e))
                    break
                except Exception as e:
                    failed = (name, f"{type(e).__name__}: {e}")
                    break
        finally:
            _restore_buffers(saved)
            torch.set_rng_state(rng)
            if loader_state is not None:
                train.load_state_dict(loader_state)
        if learner.data.validation is None:
            warnings.warn(
                "SanityCheck: the learner has no validation data, so fit_ runs training epochs "
                "only (pass Learner(..., data=(train, valid)) to validate)",
                stacklevel=2,
            )
        if failed is not None:
            lines = [f"SanityCheck: the check {failed[0]!r} failed before training:"]
            state = "passed"
            for name, _ in checks:
                if name == failed[0]:
                    lines.append(f"  FAILED   {name}: {failed[1]}")
                    state = "not run"
                else:
                    lines.append(f"  {state:<8} {name}")
            raise SanityCheckError("\n".join(lines))

    def _check_data(self, learner: Any, ctx: dict[str, Any]) -> None:
        train = learner.data.training
        if train is None:
            raise _Failed(
                "the learner has no training data; pass Learner(..., data=(train, valid))"
            )
        try:
            batch = next(iter(train))
        except StopIteration:
            raise _Failed("the training data is empty") from None
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise _Failed(f"the first batch is a {_describe(batch)}, not a pair (xs, ys)")
        xs, ys = batch
        mover = _mover(learner)
        ctx["xs"], ctx["ys"] = mover(xs), mover(ys)

    def _check_forward(self, learner: Any, ctx: dict[str, Any]) -> None:
        xs = ctx["xs"]
        try:
            with torch.no_grad(), autocast_context(learner, xs):
                ctx["ys_pred"] = learner.model(xs)
        except Exception as e:
            raise _Failed(f"{type(e).__name__}: {e} (xs is a {_describe(xs)})") from e

    def _check_loss(self, learner: Any, ctx: dict[str, Any]) -> None:
        yp, ys = ctx["ys_pred"], ctx["ys"]
        try:
            with autocast_context(learner, ctx["xs"]):
                loss = learner.lossfn(yp, ys)
        except Exception as e:
            raise _Failed(
                f"{type(e).__name__}: {e} (ys_pred is a {_describe(yp)}, ys is a {_describe(ys)})"
            ) from e
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1 or loss.dim() != 0:
                raise _Failed(
                    f"lossfn returned a tensor of shape {tuple(loss.shape)}; it must be a scalar "
                    f"(reduce with .mean() or .sum())"
                )
            if not loss.is_floating_point():
                raise _Failed(f"lossfn returned a {loss.dtype} tensor; it must be floating point")
            v = float(loss.detach())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            v = float(loss)
        else:
            raise _Failed(f"lossfn returned a {type(loss).__name__}, not a scalar")
        if not math.isfinite(v):
            raise _Failed(f"the loss of the first batch is {v}")

    def _check_gradient(self, learner: Any, ctx: dict[str, Any]) -> None:
        xs, ys = ctx["xs"], ctx["ys"]

        def loss_of(model: Any) -> Any:
            with autocast_context(learner, xs):
                return learner.lossfn(model(xs), ys)

        (grads,) = gradient(loss_of, learner.model)
        found = _leaves(grads)
        if not found:
            raise _Failed(
                "no parameter gets a gradient: does the model have trainable parameters, and "
                "does the loss depend on them (no .detach(), no torch.no_grad inside)?"
            )
        bad = sum(1 for g in found if not bool(torch.isfinite(g).all()))
        if bad:
            raise _Failed(f"{bad} of {len(found)} parameter gradients contain NaN or Inf")

    def __repr__(self) -> str:
        return "SanityCheck()"


def _mover(learner: Any) -> Callable[[Any], Any]:
    from .device import ToDevice

    for cb in learner.callbacks:
        if cb.is_a(ToDevice):
            target = cb if isinstance(cb, ToDevice) else cb.callback
            return target.move
    return lambda x: x


def _save_buffers(model: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b, b.detach().clone()) for top in _modules(model) for b in top.buffers()]


def _restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for b, copy in saved:
            b.copy_(copy)
