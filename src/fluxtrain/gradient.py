"""Explicit gradients (Zygote's ``gradient``/``withgradient``/``pullback``) on ``torch.autograd``.

``gradient(f, *args)`` calls ``f(*args)`` and returns one gradient per argument: a tensor for a
tensor, a tree of the argument's shape for a model (a [`Node`][fluxtrain.tree.Node] with attribute
and index access), ``None`` where nothing was differentiable or nothing depended on it.

Plain tensors inside an argument are differentiated by calling ``f`` on a copy of the argument's
containers holding ``tensor.detach().requires_grad_()`` (same storage, no data copy); a Module's
own parameters are used as they are, so ``f`` sees the real model.

Gradients nest as Zygote's do: a ``gradient`` (or ``withgradient``, or a pullback's ``back``)
taken while an outer one is running its function keeps its graph (``create_graph=True``) and
differentiates through tensors that depend on the outer arguments instead of detaching them, so
the outer gradient sees through it (a gradient penalty, a Hessian-vector product). At top level
the graph is freed as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from .mode import differentiating
from .optimisers.state import unwrap
from .tree import children, is_trainable_tensor, make_node, rebuild

__all__ = ["gradient", "pullback", "withgradient"]


# True while the function of an outer gradient runs: an inner gradient must then keep its graph.
_OUTER: ContextVar[bool] = ContextVar("fluxtrain_outer_gradient", default=False)


def _nested() -> bool:
    """Whether a gradient taken now is inside another one that may differentiate through it."""
    return _OUTER.get() and torch.is_grad_enabled()


class _Inputs:
    """The differentiable tensors found in the arguments, each once (ties share one entry)."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.slot: dict[int, int] = {}  # id(original tensor) -> index in ``tensors``
        self._keep: list[Any] = []  # keeps originals alive so ids stay unique

    def add(self, original: torch.Tensor, differentiable: torch.Tensor) -> torch.Tensor:
        key = id(original)
        if key not in self.slot:
            self.slot[key] = len(self.tensors)
            self.tensors.append(differentiable)
            self._keep.append(original)
        return self.tensors[self.slot[key]]


def _substitute(x: Any, inputs: _Inputs) -> Any:
    """``x`` with every differentiable tensor replaced by one autograd can track."""
    if isinstance(x, torch.Tensor):
        if not is_trainable_tensor(x):
            return x
        if x.requires_grad and x.is_leaf:
            return inputs.add(x, x)
        if id(x) in inputs.slot:
            return inputs.tensors[inputs.slot[id(x)]]
        if x.requires_grad and _nested():
            # Inside an outer gradient: differentiate through x, which depends on its arguments.
            return inputs.add(x, x)
        return inputs.add(x, x.detach().requires_grad_(True))
    if isinstance(x, nn.Module):
        # The model is called as it is: register its parameters, do not copy it.
        for p in x.parameters():
            if p.requires_grad and is_trainable_tensor(p):
                inputs.add(p, p)
        return x
    ch = children(x)
    if ch is None:
        return x
    return rebuild(x, {k: _substitute(v, inputs) for k, v in ch.items()})


def _gradient_tree(x: Any, grads: dict[int, torch.Tensor | None]) -> Any:
    """The gradient of ``x`` in ``x``'s shape; all-``None`` subtrees collapse to ``None``."""
    if isinstance(x, torch.Tensor):
        return grads.get(id(x))
    if isinstance(x, nn.Module):
        # Same keys, in the same order, as tree.children: parameters, buffers, submodules.
        out = {k: grads.get(id(v)) for k, v in x._parameters.items() if v is not None}
        out.update((k, None) for k, v in x._buffers.items() if v is not None)
        out.update((k, _gradient_tree(v, grads)) for k, v in x._modules.items() if v is not None)
    else:
        ch = children(x)
        if ch is None:
            return None
        out = {k: _gradient_tree(v, grads) for k, v in ch.items()}
    if all(v is None for v in out.values()):
        return None
    return make_node(x, out)


def _split_output(out: Any) -> tuple[Any, Any]:
    """(loss, value to return) from what ``f`` returned; checks the loss is a real scalar."""
    loss = out[0] if isinstance(out, tuple) and len(out) > 0 else out
    if isinstance(loss, torch.Tensor):
        if loss.is_complex():
            raise TypeError("the function must return a real scalar, got a complex tensor")
        if not loss.is_floating_point():
            raise TypeError(
                f"the function must return a real floating-point scalar, got a tensor of dtype "
                f"{loss.dtype}"
            )
        if loss.dim() != 0:
            raise ValueError(
                f"the function must return a scalar (0-d tensor or float), got a tensor of shape "
                f"{tuple(loss.shape)}; reduce it first, e.g. with .sum() or .mean()"
            )
    elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise TypeError(
            f"the function must return a real scalar (0-d tensor or float), or a tuple whose first "
            f"element is one; got {type(loss).__name__}"
        )
    return loss, out


def _value(loss: Any, out: Any) -> Any:
    val = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if isinstance(out, tuple):
        return (val, *out[1:])
    return val


def _forward(f: Callable[..., Any], args: tuple) -> tuple[_Inputs, Any, Any]:
    inputs = _Inputs()
    call_args = tuple(_substitute(a, inputs) for a in args)
    token = _OUTER.set(True)
    try:
        with torch.enable_grad(), differentiating():
            out = f(*call_args)
    finally:
        _OUTER.reset(token)
    loss, out = _split_output(out)
    return inputs, loss, out


def _backward(
    inputs: _Inputs, loss: Any, args: tuple, seed: Any = None, retain: bool = False
) -> tuple:
    if isinstance(loss, torch.Tensor) and loss.requires_grad and inputs.tensors:
        grad_output = None if seed is None else torch.as_tensor(seed, dtype=loss.dtype)
        nested = _nested()
        sharded = any(_sharded(a) for a in args)
        if sharded or any(isinstance(a, _DDP) for a in args):
            if nested:
                # DDP and FSDP reduce gradients in hooks that do not build a graph: an outer
                # gradient would silently see None through this one.
                raise NotImplementedError(
                    "gradient: a gradient of a DistributedDataParallel or FSDP model taken "
                    "inside another gradient cannot be differentiated again (their gradient "
                    "reduction keeps no graph); take the inner gradient with respect to the "
                    "inner model (ddp.module) instead"
                )
            raw = _backward_through_ddp(
                loss, inputs.tensors, grad_output, retain, restrict=not sharded
            )
        else:
            raw = torch.autograd.grad(
                loss,
                inputs.tensors,
                grad_outputs=grad_output,
                allow_unused=True,
                retain_graph=retain or nested,
                create_graph=nested,
            )
    else:
        raw = (None,) * len(inputs.tensors)
    by_id = {key: raw[i] for key, i in inputs.slot.items()}
    # A model wrapped by DistributedDataParallel, DataParallel or torch.compile has the gradient
    # of the model inside (as its optimiser state does): no ``module`` or ``_orig_mod`` level.
    return tuple(_gradient_tree(unwrap(a), by_id) for a in args)


_DDP = nn.parallel.DistributedDataParallel
_FSDP: tuple[type, ...] | None = None


def _sharded(a: Any) -> bool:
    """True for a model sharded by FSDP (``FullyShardedDataParallel`` or ``fully_shard``), or
    holding a sub-module that is (only some layers sharded): those parameters receive gradients
    only in FSDP's backward hooks."""
    global _FSDP
    if not isinstance(a, nn.Module):
        return False
    if _FSDP is None:
        try:
            from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
        except ImportError:  # a torch built without distributed support
            _FSDP = ()
        else:
            _FSDP = (FSDPModule, FullyShardedDataParallel)
    return bool(_FSDP) and any(isinstance(m, _FSDP) for m in a.modules())


def _backward_through_ddp(
    loss: torch.Tensor,
    tensors: list[torch.Tensor],
    seed: Any,
    retain: bool,
    restrict: bool = True,
) -> tuple:
    """Gradients via ``backward`` (DDP averages over ranks in its hooks on ``.grad``, which
    ``torch.autograd.grad`` never runs); the tensors' own ``.grad`` is left as it was.

    FSDP's parameters are not the tensors its forward differentiates (it gathers them first),
    so for a sharded model backward is not restricted to ``tensors`` (``restrict=False``).
    """
    saved = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    try:
        torch.autograd.backward(
            loss, grad_tensors=seed, retain_graph=retain, inputs=tensors if restrict else None
        )
        return tuple(t.grad for t in tensors)
    finally:
        for t, g in zip(tensors, saved):
            t.grad = g


def _implicit(args: tuple) -> Any:
    # The implicit style (``gradient(lambda: loss(x, y), params(model))``) hands over to the
    # object itself: Params implements ``_implicit_gradient``.
    if len(args) == 1 and hasattr(args[0], "_implicit_gradient"):
        return args[0]
    return None


def gradient(f: Callable[..., Any], *args: Any) -> Any:
    """Gradient of the scalar ``f(*args)`` with respect to each argument (Zygote's ``gradient``).

    Returns a tuple with one entry per argument: a tensor for a tensor argument; for a model or any
    tree, a tree of the same shape whose children are reached as the model's are
    (``grads[0].layers[0].weight``, ``grads[0]["a"]``); ``None`` for parts that are not
    differentiable or that the result does not depend on.  Tied tensors get their total gradient
    at each place they appear.  ``f`` must return a real scalar (0-d tensor or float), or a tuple
    whose first element is one.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.gradient(lambda x: (x ** 2).sum(), torch.tensor([1.0, 2.0]))
        (tensor([2., 4.]),)
    """
    implicit = _implicit(args)
    if implicit is not None:
        return implicit._implicit_gradient(f)
    inputs, loss, _ = _forward(f, args)
    return _backward(inputs, loss, args)


def withgradient(f: Callable[..., Any], *args: Any) -> tuple[Any, tuple]:
    """Like [`gradient`][fluxtrain.gradient.gradient], also returning the value: ``(val, grads)``.

    If ``f`` returns a tuple, its first element is the loss that is differentiated and ``val`` is
    the whole tuple with the loss as a float (the seed's ``return my_loss(result, label), result``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> val, (g,) = ft.withgradient(lambda x: (x ** 2).sum(), torch.tensor([3.0]))
        >>> val, g
        (9.0, tensor([6.]))
    """
    implicit = _implicit(args)
    if implicit is not None:
        return implicit._implicit_withgradient(f)
    inputs, loss, out = _forward(f, args)
    grads = _backward(inputs, loss, args)
    return _value(loss, out), grads


def pullback(f: Callable[..., Any], *args: Any) -> tuple[Any, Callable[[Any], tuple]]:
    """``(val, back)``: the value of ``f(*args)`` and a function giving its gradients.

    ``back(1.0)`` returns what [`gradient`][fluxtrain.gradient.gradient] would; ``back(dy)`` scales it by ``dy``.  ``back``
    may be called more than once.

    Example:
        >>> import torch, fluxtrain as ft
        >>> val, back = ft.pullback(lambda x: (3 * x).sum(), torch.tensor([1.0, 1.0]))
        >>> val, back(2.0)
        (6.0, (tensor([6., 6.]),))
    """
    implicit = _implicit(args)
    if implicit is not None:
        return implicit._implicit_pullback(f)
    inputs, loss, out = _forward(f, args)

    def back(dy: Any = 1.0) -> tuple:
        if isinstance(dy, (int, float)) and not math.isfinite(dy):
            raise ValueError(f"pullback seed must be finite, got {dy}")
        return _backward(inputs, loss, args, seed=dy, retain=True)

    return _value(loss, out), back
