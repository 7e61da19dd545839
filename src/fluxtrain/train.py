"""``train_``: one pass of gradient descent over the data (Flux's ``train!``).

For each item ``d`` of ``data`` it evaluates ``loss(model, *d)`` (or ``loss(model, d)`` when ``d``
is not a tuple), takes the gradient with respect to the model and calls [`update_`][fluxtrain.optimisers.state.update_].
That is all it does besides stopping on a non-finite loss and showing a progress bar: anything
fancier is a loop you write yourself (seed 000, "Training Loops").

Given ``ft.params(model)`` instead of a model, it runs the implicit (Flux <= 0.13) loop of
[`fluxtrain.implicit`][fluxtrain.implicit].
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _losscall
from .gradient import _sharded, _split_output, withgradient
from .mode import _DIFFERENTIATING
from .optimisers.rules import NonFiniteGradientError, Rule
from .optimisers.state import setup, unwrap, update_
from .tree import trainables

__all__ = ["NonFiniteLossError", "train_"]


class NonFiniteLossError(ArithmeticError):
    """The loss was ``nan`` or ``inf``; training stopped before updating anything from that item.

    ``loss`` is the value, ``index`` the 0-based position of the data item and ``item`` its
    1-based number (as Flux counts).  Flux raises a ``DomainError`` here.

    Example:
        >>> str(NonFiniteLossError(float("nan"), 50))
        'loss is nan at data item 51 (index 50); stopped before updating from this item'
    """

    def __init__(self, loss: float, index: int) -> None:
        self.loss = loss
        self.index = index
        self.item = index + 1
        super().__init__(
            f"loss is {loss} at data item {index + 1} (index {index}); "
            f"stopped before updating from this item"
        )

    def __reduce__(self):
        return (type(self), (self.loss, self.index))


def _arguments(d: Any) -> tuple:
    """Flux's rule: a tuple is splatted into the loss, anything else is passed whole."""
    return d if isinstance(d, tuple) else (d,)


def _loss_value(val: Any) -> float:
    return val[0] if isinstance(val, tuple) else val


def _call_loss(loss: Callable[..., Any], model: Any, args: tuple, index: int) -> Any:
    """``loss(model, *args)`` for data item ``index``, with errors that say what was wrong."""
    try:
        out = loss(model, *args)
    except TypeError as e:
        # The call itself did not fit the signature: most likely a loss of (ŷ, y).
        if _losscall.accepts(loss, len(args) + 1) is False:
            raise _losscall.train_convention_error(loss, len(args) + 1) from e
        raise
    _losscall.check_scalar(out, f"the loss at data item {index + 1} (index {index})")
    return out


def _warn_no_gradient(index: int) -> None:
    warnings.warn(
        f"train_: the loss at data item {index + 1} (index {index}) does not depend on any "
        f"trainable parameter of the model, so nothing was updated from it; the loss must "
        f"compute with model(x), and not under torch.no_grad() nor from .item() or .detach() "
        f"values",
        UserWarning,
        stacklevel=4,
    )


def _autocast(dtype: torch.dtype | None, tensors: Iterable[torch.Tensor]) -> Any:
    """``torch.autocast`` on the device of the first parameter, or nothing without a dtype."""
    if dtype is None:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"autocast must be torch.bfloat16, torch.float16 or None, got {dtype!r}")
    first = next(iter(tensors), None)
    device_type = "cpu" if first is None else first.device.type
    return torch.autocast(device_type=device_type, dtype=dtype)


class _Progress:
    """A tqdm bar showing the running mean loss, or nothing at all.

    Shown when ``progress`` is True, or when it is None, ``data`` has a length and stderr is a
    terminal (so logs and CI output stay clean).
    """

    def __init__(self, data: Any, progress: bool | None, desc: str) -> None:
        try:
            total: int | None = len(data)
        except TypeError:
            total = None
        show = progress if progress is not None else total is not None and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False) if show else None
        self.sum = 0.0
        self.count = 0

    def step(self, loss: float) -> None:
        if self.bar is None:
            return
        self.sum += loss
        self.count += 1
        self.bar.set_postfix_str(f"loss={self.sum / self.count:.4g}", refresh=False)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scaled(scaler: Any, out: Any) -> tuple:
    """``(scaled loss, unscaled loss)``: the first is differentiated, the second reported."""
    lossval, _ = _split_output(out)
    detached = lossval.detach() if isinstance(lossval, torch.Tensor) else lossval
    return (scaler.scale(lossval), detached)


def _state_from_rule(rule: Rule, model: Any) -> Any:
    warnings.warn(
        f"train_ was given the rule {rule!r} instead of an optimiser state, so it calls "
        f"ft.setup for this call only and its state (momenta, step counts) is lost when train_ "
        f"returns; call opt_state = ft.setup(rule, model) once and pass opt_state instead",
        UserWarning,
        stacklevel=3,
    )
    return setup(rule, model)


def train_(
    loss: Callable[..., Any],
    model: Any,
    data: Iterable[Any],
    opt_state: Any,
    *,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    scaler: Any = None,
    cb: Any = None,
    check_gradients: bool = True,
) -> list[float]:
    """Train ``model`` for one pass over ``data`` (Flux's ``train!``); returns the losses.

    For each ``d`` in ``data``: ``loss(model, *d)`` if ``d`` is a tuple, else ``loss(model, d)``;
    the gradient with respect to ``model``; then ``ft.update_(opt_state, model, grads)``.  The
    loss may return ``(loss, aux)``; the first element is differentiated and recorded.

    - A ``nan``/``inf`` loss raises [`NonFiniteLossError`][fluxtrain.train.NonFiniteLossError] naming the value and the item,
      before any update from that item: the model keeps its values from the item before.
    - A finite loss with an Inf or NaN in its gradient (``sqrt`` at 0, an overflow in
      backward) raises ``NonFiniteGradientError`` naming the item and the parameter, again
      before any update from that item.  This costs one reduction over the gradients per item
      (and, on a GPU, one wait for it); ``check_gradients=False`` leaves it out.  With a
      ``scaler`` the scaler handles such steps (it skips them).
    - A tqdm progress bar with the running mean loss appears when ``data`` has a length and
      stderr is a terminal; ``progress=True``/``False`` forces it on/off.
    - A rule (``ft.Adam()``) instead of ``ft.setup(rule, model)`` warns and sets up for this
      call only (momenta are then lost between calls).
    - ``autocast=torch.bfloat16`` (or ``float16``) runs the loss under ``torch.autocast`` on
      the device of the model's parameters (mixed precision; parameters stay as they are).
      bfloat16 is the safe choice: float16 gradients can underflow without loss scaling.
    - ``scaler=ft.LossScaler()`` scales the loss before differentiating (float16 training);
      a step whose gradients overflow is skipped and counted in ``scaler.skipped``, and the
      optimiser (with any schedule in it) is not advanced for it.
    - With ``ft.params(model)`` as ``model`` and a rule as ``opt_state`` it is the implicit
      (Flux <= 0.13) ``train!``: ``loss(*d)``, callbacks ``cb`` after every item, ``ft.stop()``
      and ``ft.skip()`` (see [`fluxtrain.implicit`][fluxtrain.implicit]).

    Example:
        >>> import torch, fluxtrain as ft
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> data = [(torch.ones(1), torch.full((1,), 2.0))] * 3
        >>> opt_state = ft.setup(ft.Descent(0.1), model)
        >>> losses = ft.train_(lambda m, x, y: ((m(x) - y) ** 2).sum(), model, data, opt_state)
        >>> [round(v, 4) for v in losses], model.weight
        ([4.0, 2.56, 1.6384], Parameter containing:
        tensor([[0.9760]], requires_grad=True))
    """
    if hasattr(model, "_implicit_train"):
        return model._implicit_train(
            loss, data, opt_state, cb=cb, progress=progress, autocast=autocast
        )
    if cb is not None:
        raise TypeError(
            "train_ with a model takes no callbacks (cb=), as in Flux >= 0.14: write the loop "
            "yourself (ft.withgradient + ft.update_), or use the implicit style "
            "train_(loss, ft.params(model), data, rule, cb=...)"
        )
    if isinstance(opt_state, Rule):
        opt_state = _state_from_rule(opt_state, model)
    elif opt_state is None or isinstance(opt_state, type):
        raise TypeError(
            f"train_ needs the optimiser state from ft.setup(rule, model) as its 4th argument, "
            f"got {opt_state!r}"
        )
    if _losscall.is_prediction_loss(loss):
        raise _losscall.train_convention_error(loss)
    bar = _Progress(data, progress, "train_")
    try:
        if isinstance(model, nn.Module):
            return _train_module(
                loss, model, data, opt_state, bar, autocast, scaler, check_gradients
            )
        return _train_tree(loss, model, data, opt_state, bar, autocast, scaler, check_gradients)
    finally:
        bar.close()


def _update_checked(
    opt_state: Any, model: Any, grads: Any, check: bool, val: float, index: int
) -> None:
    try:
        update_(opt_state, model, grads, check_finite=check)
    except NonFiniteGradientError as e:
        if e.path is None:
            raise
        raise NonFiniteGradientError(
            f"the gradient at {e.path} contains Inf or NaN at data item {index + 1} (index "
            f"{index}), though its loss {val} is finite; stopped before updating from this item "
            f"(check_gradients=False skips this check)",
            path=e.path,
        ) from None


def _train_tree(
    loss: Callable[..., Any],
    model: Any,
    data: Iterable[Any],
    opt_state: Any,
    bar: _Progress,
    autocast: torch.dtype | None,
    scaler: Any = None,
    check: bool = True,
) -> list[float]:
    """The loop as Flux writes it: ``withgradient`` then ``update_`` with the gradient tree."""
    losses: list[float] = []
    warned = False
    amp = _autocast(autocast, trainables(model) if autocast else ())
    for i, d in enumerate(data):
        args = _arguments(d)
        with amp:
            if scaler is None:
                val, grads = withgradient(lambda m: _call_loss(loss, m, args, i), model)  # noqa: B023
            else:
                val, grads = withgradient(
                    lambda m: _scaled(scaler, _call_loss(loss, m, args, i)),  # noqa: B023
                    model,
                )
        # with a scaler, the unscaled loss rides along as the second element (see _scaled)
        val = _loss_value(val) if scaler is None else float(val[1])
        if not math.isfinite(val):
            raise NonFiniteLossError(val, i)
        if grads[0] is None:
            if not warned:
                _warn_no_gradient(i)
                warned = True
        elif scaler is None:
            _update_checked(opt_state, model, grads[0], check, val, i)
        else:
            scaler.step_(opt_state, model, grads[0])
        losses.append(val)
        bar.step(val)
    return losses


def _train_module(
    loss: Callable[..., Any],
    model: nn.Module,
    data: Iterable[Any],
    opt_state: Any,
    bar: _Progress,
    autocast: torch.dtype | None,
    scaler: Any = None,
    check: bool = True,
) -> list[float]:
    """The same loop for a Module, with gradients going through ``.grad`` (no per-step walks).

    ``backward(inputs=params)`` fills ``.grad`` of the model's parameters only (never of other
    tensors the loss touches), ``update_`` reads them, and they are cleared again.  Gradients the
    user had in ``.grad`` before are put back at the end, so ``.grad`` looks untouched.  This
    is also the path DistributedDataParallel needs, as it averages gradients in backward hooks.
    """
    params = [p for p in unwrap(model).parameters() if p.requires_grad]
    # FSDP's parameters are not in the graph (its forward uses gathered copies; its backward
    # hooks write the sharded .grad): backward is then not restricted to them.
    inputs = None if _sharded(model) else params
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    losses: list[float] = []
    warned = False
    amp = _autocast(autocast, params)
    try:
        # Grad mode is switched on once for the loop; the automatic train mode (a context
        # variable, set directly as this is the hot path) only while the loss runs.
        with torch.enable_grad():
            for i, d in enumerate(data):
                args = _arguments(d)
                token = _DIFFERENTIATING.set(True)
                try:
                    with amp:
                        out = _call_loss(loss, model, args, i)
                finally:
                    _DIFFERENTIATING.reset(token)
                lossval, _ = _split_output(out)
                val = lossval.item() if isinstance(lossval, torch.Tensor) else float(lossval)
                if not math.isfinite(val):
                    raise NonFiniteLossError(val, i)
                if isinstance(lossval, torch.Tensor) and lossval.requires_grad:
                    if scaler is None:
                        torch.autograd.backward(lossval, inputs=inputs)
                    else:
                        torch.autograd.backward(scaler.scale(lossval), inputs=inputs)
                    # A loss can require grad through other tensors and miss every parameter;
                    # checked on the first item only, to keep the loop free of per-step walks.
                    if i == 0 and not any(p.grad is not None for p in params):
                        _warn_no_gradient(i)
                        warned = True
                    elif scaler is None:
                        _update_checked(opt_state, model, None, check, val, i)
                    else:
                        scaler.step_(opt_state, model)
                    for p in params:
                        p.grad = None
                elif not warned:
                    _warn_no_gradient(i)
                    warned = True
                losses.append(val)
                bar.step(val)
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    return losses
