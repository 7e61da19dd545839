"""``ToDevice``: moves the model (with its optimiser state) once, and every batch, to a device.

FluxTraining.jl's ``ToDevice``/``ToGPU`` moves the model and rebuilds the optimiser state; here
the momenta are moved along with the parameters, so nothing is reset.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...optimisers import leaves
from ...tree import children
from ..callback import Callback
from ..events import EpochBegin, Event, FitBegin, StepBegin

__all__ = ["ToDevice", "check_device_available", "move"]


def check_device_available(device: torch.device, where: str) -> None:
    """Raise a ``ValueError`` naming ``where`` when ``device`` is not usable on this machine
    (torch's own error for a missing CUDA is a bare ``AssertionError``).

    Example:
        >>> import torch
        >>> check_device_available(torch.device("cpu"), "ToDevice('cpu')")
    """
    kind = device.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build"
            raise ValueError(
                f"{where}: no CUDA device is available (torch {torch.__version__} is {build}, "
                "torch.cuda.is_available() is False); use device=None to take CUDA when present "
                "and the CPU otherwise, or install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{where}: there is no CUDA device {device.index}; this machine has {count} "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"{where}: Apple's MPS device is not available on this machine "
                "(torch.backends.mps.is_available() is False)"
            )


def move(x: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """A copy of the batch ``x`` (a tensor or tuples/lists/dicts of them) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, dict):
        return type(x)((k, move(v, device, non_blocking)) for k, v in x.items())
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):
        return type(x)(*(move(v, device, non_blocking) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(move(v, device, non_blocking) for v in x)
    return x


def _move_tree_in_place(x: Any, device: torch.device) -> None:
    """Move every tensor of a model tree to ``device`` keeping the tensor objects (so
    references held elsewhere stay valid)."""
    if isinstance(x, nn.Module):
        x.to(device)
        return
    if isinstance(x, torch.Tensor):
        if x.device != device:
            x.data = x.data.to(device)
        return
    ch = children(x)
    if ch is not None:
        for v in ch.values():
            _move_tree_in_place(v, device)


def _move_state(s: Any, device: torch.device) -> Any:
    if isinstance(s, torch.Tensor):
        return s.to(device)
    if isinstance(s, tuple):
        return tuple(_move_state(v, device) for v in s)
    if isinstance(s, list):
        return [_move_state(v, device) for v in s]
    return s


def _first_tensor_device(x: Any) -> torch.device | None:
    if isinstance(x, torch.Tensor):
        return x.device
    if isinstance(x, nn.Module):
        for t in x.parameters():
            return t.device
        for t in x.buffers():
            return t.device
        return None
    ch = children(x)
    if ch is not None:
        for v in ch.values():
            d = _first_tensor_device(v)
            if d is not None:
                return d
    return None


def move_model_and_state(model: Any, opt_state: Any, device: torch.device) -> None:
    """Move ``model`` in place and its optimiser state's tensors (momenta kept) to ``device``."""
    _move_tree_in_place(model, device)
    if opt_state is None:
        return
    for leaf in leaves(opt_state):
        like = getattr(leaf, "_like", None)
        if like is not None:
            leaf._like = (like[0], like[1], device)
        # Assigning the state unpacks the leaf from the engine's flat buffers; the engine
        # packs it again, on the new device, at the next update.
        leaf.state = _move_state(leaf.state, device)


class ToDevice(Callback):
    """Moves the model and its optimiser state to ``device`` once (at ``FitBegin``, or the first
    epoch outside ``fit_``), and each batch (``step.xs``, ``step.ys``) at ``StepBegin``.

    ``device=None`` picks CUDA when available, else the CPU.  Runs before every other callback,
    so they all see data on the device.  The optimiser state is moved, never re-created.
    A device this machine does not have (``"cuda"`` on a CPU-only torch, ``"cuda:3"`` with
    one GPU) is a ``ValueError`` at construction, before anything is moved.

    Example:
        >>> from fluxtrain.callbacks import ToDevice
        >>> ToDevice("cpu")
        ToDevice(device='cpu')
    """

    writes = ("model", "opt_state", "step.xs", "step.ys")
    runbefore = (Callback,)
    handles = (FitBegin, EpochBegin, StepBegin)

    def __init__(self, device: str | torch.device | None = None, non_blocking: bool = False):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        check_device_available(self.device, f"ToDevice({str(device)!r})")
        self.non_blocking = non_blocking
        self._moved: int | None = None

    def move(self, x: Any) -> Any:
        """``x`` (a batch) on this callback's device."""
        return move(x, self.device, self.non_blocking)

    def _same_device(self, d: torch.device | None) -> bool:
        if d is None:
            return True
        return d.type == self.device.type and (
            self.device.index is None or d.index == self.device.index
        )

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        if isinstance(event, StepBegin):
            step = learner.step
            step.xs = self.move(step.xs)
            step.ys = self.move(step.ys)
            return
        model = learner.model
        if self._moved == id(model):
            return
        if not self._same_device(_first_tensor_device(model)):
            move_model_and_state(model, learner.opt_state, self.device)
        self._moved = id(model)

    def __repr__(self) -> str:
        return f"ToDevice(device={str(self.device)!r})"
