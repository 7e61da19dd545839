"""Mixed precision: autocast, dynamic loss scaling for float16, and a float32 master copy rule.

Three independent tools:

* [`autocast`][fluxtrain.precision.autocast] runs the forward pass in ``bfloat16`` or ``float16`` where that is safe
  (``torch.autocast``), keeping parameters and the optimiser in float32.
* [`LossScaler`][fluxtrain.precision.LossScaler] (PyTorch's ``GradScaler`` idea, Micikevicius et al. 2017) multiplies the
  loss before differentiation so that small float16 gradients do not flush to zero, divides the
  gradients back, and skips the optimiser step when they overflowed.  Skipped steps are counted;
  since the optimiser is not called, rule state and schedules do not advance.
* [`MixedPrecision`][fluxtrain.precision.MixedPrecision] (Optimisers.jl ``MixedPrecision``) is a rule for parameters that are
  themselves stored in low precision: it keeps a float32 master copy in its state, lets the
  wrapped rule update the master copy, and writes the rounded result back.

A hand-written float16 loop with loss scaling::

    scaler = ft.LossScaler()
    for x, y in loader:
        with ft.autocast("f16"):
            loss, grads = ft.withgradient(lambda m: scaler.scale(lossfn(m(x), y)), model)
        scaler.step_(opt_state, model, grads[0])   # unscale, check, update_ or skip, adapt scale
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch

from .optimisers.rules import Rule
from .optimisers.state import update_
from .tree import children

__all__ = ["LossScaler", "MixedPrecision", "autocast", "precision_dtype"]

_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "f16": torch.float16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "f32": torch.float32,
    "fp32": torch.float32,
    "float32": torch.float32,
    "f64": torch.float64,
    "float64": torch.float64,
}


def precision_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype meant by ``name``: ``"bf16"``, ``"f16"``/``"fp16"``, ``"f32"``, a dtype.

    Example:
        >>> precision_dtype("bf16")
        torch.bfloat16
    """
    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name.lower() in _NAMES:
        return _NAMES[name.lower()]
    raise ValueError(
        f"unknown precision {name!r}; use one of 'bf16', 'f16', 'f32' or a torch dtype"
    )


def autocast(
    dtype: str | torch.dtype | None = "bf16", device_type: str | None = None
) -> contextlib.AbstractContextManager:
    """A context in which matrix products and convolutions run in ``dtype`` (``torch.autocast``).

    ``dtype`` is ``"bf16"`` or ``"f16"`` (or a dtype); ``None``/``"f32"`` gives a context that
    does nothing, so code can take the precision as a setting.  ``device_type`` defaults to
    ``"cuda"`` when a GPU is available, else ``"cpu"``.  Use it around the forward pass and
    loss only; gradients come out in the parameters' dtype.  With float16 use a
    [`LossScaler`][fluxtrain.precision.LossScaler] too (bfloat16 has float32's range and needs none).

    Example:
        >>> import torch
        >>> with autocast("bf16", "cpu"):
        ...     y = torch.nn.Linear(2, 2)(torch.ones(1, 2))
        >>> y.dtype
        torch.bfloat16
    """
    if dtype is None:
        return contextlib.nullcontext()
    dt = precision_dtype(dtype)
    if dt in (torch.float32, torch.float64):
        return contextlib.nullcontext()
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device_type=device_type, dtype=dt)


# ---------------------------------------------------------------------------------------------
# Dynamic loss scaling


def _grad_tensors(grads: Any) -> Iterator[torch.Tensor]:
    """The gradient tensors of a gradient tree, or the ``.grad`` of a model's parameters."""
    seen: set[int] = set()

    def walk(g: Any) -> Iterator[torch.Tensor]:
        if isinstance(g, torch.Tensor):
            t = g.grad if isinstance(g, torch.nn.Parameter) else g
            if t is not None and id(t) not in seen and t.is_floating_point():
                seen.add(id(t))
                yield t
            return
        if isinstance(g, torch.nn.Module):
            for p in g.parameters():
                yield from walk(p)
            return
        ch = children(g)
        if ch:
            for v in ch.values():
                yield from walk(v)

    return walk(grads)


class LossScaler:
    """Dynamic loss scaling for float16 training (PyTorch ``GradScaler``, Micikevicius et al.
    2017, "Mixed Precision Training").

    ``scale(loss)`` returns ``loss * s``; after differentiation ``unscale_(grads)`` divides the
    gradients by ``s`` in place and reports whether any is Inf/NaN; ``update(found_inf)`` then
    halves ``s`` after an overflow (``backoff_factor``) or doubles it after ``growth_interval``
    clean steps in a row (``growth_factor``).  ``step_(opt_state, model, grads)`` does all three
    and calls ``ft.update_`` only when the gradients are finite: a skipped step leaves
    parameters, rule state (momenta, ``beta^t``, counters) and schedules untouched and adds one
    to ``skipped``.  ``state_dict()`` makes it part of a checkpoint (``ft.save(..., scaler=s)``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> w = torch.tensor([1.0])
        >>> st = ft.setup(ft.Descent(0.1), w)
        >>> scaler = ft.LossScaler(init_scale=1024.0)
        >>> g = ft.gradient(lambda w: scaler.scale((3 * w).sum()), w)[0]
        >>> scaler.step_(st, w, g), w
        (True, tensor([0.7000]))
        >>> scaler.step_(st, w, torch.tensor([float("inf")])), scaler.skipped, scaler.scale_value
        (False, 1, 512.0)
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"LossScaler: init_scale must be a positive number, got {init_scale}")
        if growth_factor <= 1:
            raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"LossScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if int(growth_interval) < 1:
            raise ValueError(f"LossScaler: growth_interval must be >= 1, got {growth_interval}")
        self.scale_value = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.enabled = bool(enabled)
        self.good_steps = 0  # clean steps since the scale last changed
        self.steps = 0  # steps taken (optimiser called)
        self.skipped = 0  # steps skipped because of Inf/NaN gradients

    def __repr__(self) -> str:
        return (
            f"LossScaler(scale={self.scale_value:g}, steps={self.steps}, skipped={self.skipped}, "
            f"growth_interval={self.growth_interval})"
        )

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` multiplied by the current scale (the loss itself when disabled)."""
        if not self.enabled:
            return loss
        return loss * self.scale_value

    def unscale_(self, grads: Any) -> bool:
        """Divide every gradient in ``grads`` by the scale, in place; True if any is Inf/NaN.

        ``grads`` is a gradient tree (``ft.gradient(...)[0]``), plain nested containers of
        tensors, or a model (its parameters' ``.grad``).
        """
        tensors = list(_grad_tensors(grads))
        if not self.enabled or not tensors:
            return False
        by_device: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            by_device.setdefault((t.device, t.dtype), []).append(t)
        found = False
        for (device, _), ts in by_device.items():
            found_inf = torch.zeros(1, device=device)
            inv = torch.full((1,), 1.0 / self.scale_value, device=device)
            try:
                # One fused kernel per device/dtype: multiplies by 1/scale and flags Inf/NaN.
                torch._amp_foreach_non_finite_check_and_unscale_(ts, found_inf, inv)
            except (RuntimeError, NotImplementedError):  # a backend without that kernel
                torch._foreach_mul_(ts, 1.0 / self.scale_value)
                # max |g| per tensor is finite exactly when every element is (NaN stays NaN)
                finite = torch.isfinite(torch.stack(torch._foreach_norm(ts, math.inf))).all()
                found_inf.fill_(float(not bool(finite)))
            found = found or bool(found_inf.item())
        return found

    def update(self, found_inf: bool) -> None:
        """Adapt the scale after a step: back off after an overflow, grow after a clean run."""
        if not self.enabled:
            return
        if found_inf:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            grown = self.scale_value * self.growth_factor
            if math.isfinite(grown):
                self.scale_value = grown
            self.good_steps = 0

    def step_(self, opt_state: Any, model: Any, grads: Any = None) -> bool:
        """Unscale ``grads`` (``None``: the model's ``.grad``), then ``ft.update_`` if they are
        finite, else skip; adapt the scale.  Returns True when the optimiser step was taken."""
        found_inf = self.unscale_(model if grads is None else grads)
        if found_inf:
            self.skipped += 1
        else:
            update_(opt_state, model, grads)
            self.steps += 1
        self.update(found_inf)
        return not found_inf

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: scale, counters and settings."""
        return {
            "scale": self.scale_value,
            "good_steps": self.good_steps,
            "steps": self.steps,
            "skipped": self.skipped,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "enabled": self.enabled,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore what [`state_dict`][fluxtrain.precision.LossScaler.state_dict] returned."""
        self.scale_value = float(sd["scale"])
        self.good_steps = int(sd["good_steps"])
        self.steps = int(sd["steps"])
        self.skipped = int(sd["skipped"])
        self.growth_factor = float(sd["growth_factor"])
        self.backoff_factor = float(sd["backoff_factor"])
        self.growth_interval = int(sd["growth_interval"])
        self.enabled = bool(sd["enabled"])


# ---------------------------------------------------------------------------------------------
# Master-copy rule


@dataclasses.dataclass(frozen=True, repr=True, eq=True)
class MixedPrecision(Rule):
    """Keep a higher-precision master copy of a low-precision parameter (Optimisers.jl
    ``MixedPrecision``; Micikevicius et al. 2017, "Mixed Precision Training").

    State: ``(master, inner_state)`` where ``master = x.to(dtype)``.  Each step the wrapped
    ``rule`` updates ``master`` with the gradient converted to ``dtype``, and the parameter
    becomes ``master`` rounded to its own dtype.  The update handed back is
    ``x - round(master)`` computed in ``dtype``, so that ``x -= update`` lands on the rounded
    master copy (exactly, unless one step changes a parameter's magnitude by a factor beyond
    ``2**13`` for float16 or ``2**16`` for bfloat16).  Small steps that round away in float16
    still accumulate in ``master``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> x = torch.tensor([1.0, 2.0], dtype=torch.float16)
        >>> st = ft.setup(ft.MixedPrecision(ft.Descent(1e-4)), x)
        >>> for _ in range(10):
        ...     _ = ft.update_(st, x, torch.ones(2, dtype=torch.float16))
        >>> st.state[0], x
        (tensor([0.9990, 1.9990]), tensor([0.9990, 1.9990], dtype=torch.float16))
    """

    rule: Rule
    dtype: torch.dtype = torch.float32
    _fixed = ("dtype",)
    _outermost = True  # owns the master copy: it must wrap the whole rule, never sit in a chain

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise TypeError(f"MixedPrecision wraps a rule such as ft.Adam(), got {self.rule!r}")
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", precision_dtype(self.dtype))
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise TypeError(f"MixedPrecision.dtype must be a floating dtype, got {self.dtype!r}")

    def init(self, x: torch.Tensor) -> Any:
        master = x.detach().to(self.dtype, copy=True)
        return (master, self.rule.init(master))

    def apply(self, state: Any, x: torch.Tensor, dx: torch.Tensor) -> tuple[Any, Any]:
        master, inner = state
        inner, upd = self.rule.apply(inner, master, dx.to(self.dtype))
        if upd is None:
            return (master, inner), None
        master.sub_(upd)
        update = x.to(self.dtype) - master.to(x.dtype).to(self.dtype)
        return (master, inner), update

    def _adjust(self, changes: dict[str, Any]) -> tuple[Rule, set[str]]:
        if "dtype" in changes:
            raise ValueError("adjust cannot change MixedPrecision.dtype; call setup again")
        inner, used = self.rule._adjust(changes)
        return (self if not used else dataclasses.replace(self, rule=inner)), used

    def hyperparameters(self) -> dict[str, Any]:
        return {"rule": self.rule, "dtype": self.dtype}
