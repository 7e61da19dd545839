"""Tree-shaped optimiser state (Optimisers.jl): setup, update_, adjust_, freeze_, thaw_, reset_.

``setup(rule, model)`` returns a tree of the model's shape with a [`Leaf`][fluxtrain.optimisers.state.Leaf] at each trainable
tensor.  ``update_`` first walks state, model and gradient together and checks everything (no
mutation happens before the walk succeeds: a bad gradient anywhere leaves the model and the state
as they were), then hands the work to `fluxtrain.optimisers.engine`, which updates leaves
that share a rule, dtype and device together.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..tree import (
    KeyPath,
    Node,
    _child_of,
    children,
    is_trainable_tensor,
    make_node,
    node_kind,
    trainables,
)
from ..tree import trainable_children as _trainable_children
from . import engine
from .rules import ClipNorm, OptimiserChain, Rule

__all__ = [
    "Leaf",
    "adjust",
    "adjust_",
    "freeze_",
    "leaves",
    "reset_",
    "setup",
    "thaw_",
    "update",
    "update_",
]


class Leaf:
    """The optimiser state of one trainable tensor: its ``rule``, ``state`` and ``frozen`` flag.

    ``state`` holds tensors of fluxtrain's own (momenta...), never the parameter's storage.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.setup(ft.Momentum(0.1), torch.zeros(2))
        Leaf(Momentum(eta=0.1, rho=0.9), tensor([0., 0.]))
    """

    __slots__ = ("__weakref__", "_kernel_cache", "_like", "_plan", "frozen", "rule", "state")

    def __init__(self, rule: Rule, state: Any, frozen: bool = False, like: Any = None):
        self.rule = rule
        self.state = state
        self.frozen = bool(frozen)
        # (shape, dtype, device) of the parameter, so that reset_ can rebuild the state and
        # the engine can follow a parameter moved to another dtype or device.
        self._like = like
        self._kernel_cache: Any = None  # the compiled kernels' views of this leaf's tensors

    def __repr__(self) -> str:
        extra = ", frozen=True" if self.frozen else ""
        return f"Leaf({self.rule!r}, {_short(self.state)}{extra})"

    def __reduce__(self):
        return (Leaf, (self.rule, self.state, self.frozen, self._like))


def _short(state: Any) -> str:
    if isinstance(state, tuple):
        inner = ", ".join(_short(s) for s in state)
        return f"({inner},)" if len(state) == 1 else f"({inner})"
    if isinstance(state, torch.Tensor) and state.numel() > 6:
        return f"<tensor {tuple(state.shape)} {str(state.dtype).removeprefix('torch.')}>"
    return repr(state)


# ---------------------------------------------------------------------------------------------
# Walking state trees


def unwrap(model: Any) -> Any:
    """The model inside DistributedDataParallel / DataParallel / FSDP1's FullyShardedDataParallel
    / torch.compile wrappers.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(1, 1)
        >>> unwrap(torch.nn.DataParallel(m)) is m
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _is_fsdp1(model):
            model = model.module
        elif isinstance(model, nn.Module) and "_orig_mod" in model._modules:
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def _is_fsdp1(model: Any) -> bool:
    """True for FSDP1's ``FullyShardedDataParallel`` wrapper (FSDP2's ``fully_shard`` keeps the
    model's own class, so there is nothing to unwrap for it)."""
    if type(model).__name__ != "FullyShardedDataParallel":
        return False  # the import below is slow: only done for a likely candidate
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return isinstance(model, FullyShardedDataParallel)


def leaves(tree: Any) -> Iterator[Leaf]:
    """Every [`Leaf`][fluxtrain.optimisers.state.Leaf] below ``tree`` (tied ones once), in tree order."""
    seen: set[int] = set()

    def walk(t: Any) -> Iterator[Leaf]:
        if isinstance(t, Leaf):
            if id(t) not in seen:
                seen.add(id(t))
                yield t
            return
        if isinstance(t, (Node, Mapping, list, tuple)):
            ch = children(t)
            for v in ch.values():
                yield from walk(v)

    return walk(tree)


def _check_rule(rule: Any) -> Rule:
    if isinstance(rule, type) and issubclass(rule, Rule):
        raise TypeError(f"setup needs a rule instance, e.g. {rule.__name__}(), not the class")
    if not isinstance(rule, Rule):
        raise TypeError(f"setup needs an optimisation rule such as ft.Adam(), got {rule!r}")
    _check_global_clip(rule, first=True)
    return rule


def _check_global_clip(rule: Rule, first: bool) -> None:
    if isinstance(rule, ClipNorm) and rule.scope == "global" and not first:
        raise ValueError(
            "ClipNorm(scope='global') must be the rule itself or the first rule of an "
            "OptimiserChain: the global norm is taken of the raw gradients"
        )
    if isinstance(rule, OptimiserChain):
        for i, r in enumerate(rule.opts):
            _check_global_clip(r, first and i == 0)


# ---------------------------------------------------------------------------------------------
# setup


def setup(rule: Rule, model: Any) -> Any:
    """Make the optimiser state for ``model``: a tree of its shape with a [`Leaf`][fluxtrain.optimisers.state.Leaf] per
    trainable tensor and ``None`` elsewhere (Optimisers.jl ``setup``).

    Tied tensors (the same tensor reached twice) share one Leaf.  Children are reached as in the
    model: ``opt_state.layers.enc``, ``opt_state.layers[0]``, ``opt_state["a"]``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> model = {"w": torch.ones(2), "f": abs}
        >>> ft.setup(ft.Momentum(0.1), model)
        {'w': Leaf(Momentum(eta=0.1, rho=0.9), tensor([0., 0.])), 'f': None}
    """
    rule = _check_rule(rule)
    cache: dict[int, Leaf] = {}
    keep: list[torch.Tensor] = []

    real_only = [type(r).__name__ for r in engine.rules_in(rule) if r._real_only]

    def build(node: Any, path: tuple = ()) -> Any:
        if isinstance(node, torch.Tensor):
            if not is_trainable_tensor(node):
                return None
            if node.is_complex() and real_only:
                raise TypeError(
                    f"the parameter at {KeyPath(path)} is complex ({node.dtype}) but "
                    f"{', '.join(real_only)} compares values, which complex numbers cannot do "
                    f"(Optimisers.jl raises too); use a rule such as Adam, Momentum or Descent"
                )
            if id(node) not in cache:
                keep.append(node)
                with torch.no_grad():
                    st = rule.init(node.detach())
                cache[id(node)] = Leaf(rule, st, like=(node.shape, node.dtype, node.device))
            return cache[id(node)]
        ch = _trainable_children(node)
        if ch is None:
            return None
        return make_node(
            node, {k: (None if v is None else build(v, (*path, k))) for k, v in ch.items()}
        )

    return build(unwrap(model))


# ---------------------------------------------------------------------------------------------
# update_


class GradientMismatchError(ValueError):
    """The gradient tree does not fit the model (structure, type or shape), at a named path."""


_MISSING = object()


def _model_child(x: Any, k: Any) -> Any:
    """Child ``k`` of a model node (``_MISSING`` if absent), without building a children dict."""
    if isinstance(x, nn.Module):
        v = x._parameters.get(k, _MISSING)
        if v is _MISSING:
            v = x._modules.get(k, _MISSING)
            if v is _MISSING:
                v = x._buffers.get(k, _MISSING)
        return v
    if isinstance(x, Mapping):
        return x.get(k, _MISSING)
    ch = children(x)
    if ch is None:
        return _MISSING
    return ch.get(k, _MISSING)


def _extra_gradient_key(g: Any, st_children: dict) -> Any:
    """A key of the gradient node that the state node lacks, or ``_MISSING``."""
    if isinstance(g, Node):
        keys = g._children.keys()
    elif isinstance(g, Mapping):
        keys = g.keys()
    elif isinstance(g, (list, tuple)) and node_kind(g) in ("list", "tuple"):
        keys = range(len(g))
    else:
        return _MISSING
    if keys == st_children.keys():
        return _MISSING
    valid = {str(k) for k in st_children}
    for k in keys:
        if str(k) not in valid:
            return k
    return _MISSING


def _collect(state: Any, model: Any, grads: Any, use_dot_grad: bool) -> list[engine.Work]:
    """Walk state, model and gradient in parallel; return the work, mutating nothing.

    With ``use_dot_grad`` every Leaf is listed (gradients are read later, from ``.grad``).
    """
    work: dict[int, engine.Work] = {}

    def walk(st: Any, x: Any, g: Any, path: tuple) -> None:
        if type(st) is Leaf or isinstance(st, Leaf):
            if not isinstance(x, torch.Tensor):
                raise GradientMismatchError(
                    f"the state has a Leaf at {KeyPath(path)} but the model has "
                    f"{type(x).__name__} there"
                )
            if use_dot_grad:
                g = None
            elif g is None:
                return
            elif not isinstance(g, torch.Tensor):
                raise GradientMismatchError(
                    f"gradient at {KeyPath(path)} should be a tensor of shape {tuple(x.shape)}, "
                    f"got {type(g).__name__}"
                )
            elif g.shape != x.shape:
                raise GradientMismatchError(
                    f"gradient at {KeyPath(path)} has shape {tuple(g.shape)} but the parameter "
                    f"has shape {tuple(x.shape)}"
                )
            item = work.get(id(st))
            if item is None:
                work[id(st)] = engine.Work(st, x, [] if g is None else [g], KeyPath(path))
            elif item.x is not x:
                raise GradientMismatchError(
                    f"the Leaf at {KeyPath(path)} is shared with {item.path}, but the model has "
                    f"different tensors there: was the state set up for another model?"
                )
            elif g is not None and all(g is not h for h in item.grads):
                item.grads.append(g)  # tied parameter: gradients are summed
            return
        if g is not None and not use_dot_grad and type(g) is not Node and node_kind(g) is None:
            what = "a tensor" if isinstance(g, torch.Tensor) else f"{type(g).__name__} {g!r:.40}"
            raise GradientMismatchError(
                f"gradient at {KeyPath(path)} is {what} but the model has a "
                f"{type(x).__name__} there"
            )
        st_children = st._children if type(st) is Node else children(st)
        if st_children is None:
            return
        if g is not None and not use_dot_grad:
            extra = _extra_gradient_key(g, st_children)
            if extra is not _MISSING:
                raise GradientMismatchError(
                    f"gradient has a child {extra!r} at {KeyPath(path)} that the model does not "
                    f"have (model has {list(st_children)})"
                )
        for k, sub in st_children.items():
            if sub is None:
                continue
            xk = _model_child(x, k)
            if xk is _MISSING:
                raise GradientMismatchError(
                    f"the model has no child {k!r} at {KeyPath(path)}: was the state set up for "
                    f"another model?"
                )
            if use_dot_grad or g is None:
                gk = None
            elif type(g) is Node:
                gk = g._children.get(k)
            else:
                gk = _child_of(g, k)
            walk(sub, xk, gk, (*path, k))

    if grads is None and not use_dot_grad:
        return []
    walk(state, model, grads, ())
    return list(work.values())


def _structure(model: Any) -> list[tuple[Any, tuple]]:
    """Every mutable container of ``model`` with a snapshot of its children (see engine)."""
    out: list[tuple[Any, tuple]] = []
    seen: set[int] = set()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor) or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, nn.Module):
            tables = [x._parameters, x._modules]
        elif isinstance(x, (dict, list)):
            tables = [x]
        elif dataclasses.is_dataclass(x) and hasattr(x, "__dict__"):
            tables = [x.__dict__]
        else:
            tables = []
        for t in tables:
            # An empty container can only gain children, which neither the state nor a plan
            # knows of (the walk goes by the state's keys): it needs no watching.
            if len(t):
                out.append((t, tuple(t.values() if isinstance(t, dict) else t)))
        ch = children(x)
        for v in (ch or {}).values():
            walk(v)

    walk(model)
    return out


def _implicit_target(model: Any) -> bool:
    # On the class: an nn.Module's instance lookup would raise and catch an AttributeError
    return hasattr(type(model), "_implicit_update")


def update_(
    state: Any, model: Any, grads: Any = None, *, check_finite: bool = False
) -> tuple[Any, Any]:
    """Update ``model``'s parameters in place from ``grads`` and the optimiser ``state``.

    ``grads`` is a gradient tree (``ft.gradient(...)[0]``), plain nested dicts/lists/tuples that
    mirror the model, a tensor for a bare-tensor model, or ``None`` to read each parameter's
    ``.grad`` (after ``loss.backward()``).  A ``None`` branch or a frozen Leaf is skipped with its
    state unchanged; tied parameters get the sum of their gradients.  Returns ``(state, model)``.

    Everything is checked before the first parameter changes, and an error names the path:
    a gradient tree that does not fit the model, sparse or integer gradients, a complex
    gradient for a real parameter, a parameter resized since ``setup``, a throwing ClipNorm's
    non-finite norm.  With ``check_finite=True`` any Inf or NaN in a gradient is refused too
    (``NonFiniteGradientError``; one reduction over all gradients).

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = {"x": torch.tensor([1.0, 2.0])}
        >>> st = ft.setup(ft.Descent(0.1), m)
        >>> _ = ft.update_(st, m, {"x": torch.tensor([10.0, 10.0])})
        >>> m["x"]
        tensor([0., 1.])
    """
    if _implicit_target(model):
        return model._implicit_update(state, grads)
    if isinstance(state, Rule):
        raise TypeError(
            "update_ needs the state from ft.setup(rule, model), not a rule; "
            "call opt_state = ft.setup(rule, model) once before training"
        )
    model = unwrap(model)
    with torch.no_grad():
        plan = _cached_plan(state, model)
        if plan is not None and plan.replay is not None:
            if grads is None:
                if plan.replay(check_finite):
                    return state, model  # the last step's kernels again, on the new .grads
            else:
                along = plan.gradients_along(grads, state)
                if along is not None and plan.replay.with_gradients(along, check_finite):
                    return state, model
            plan.replay = None
        cacheable = hasattr(type(state), "_plan")  # not a plain dict of Leafs
        if grads is None:
            plan = plan or _new_plan(state, model, cacheable)
            items = _dot_grad_items(plan.pairs)
        else:
            items = _collect(state, model, grads, use_dot_grad=False)  # validates, mutates nothing
            if plan is None and cacheable:  # (else the walk for the pairs would be wasted)
                plan = _new_plan(state, model, cacheable)
        keep = cacheable and plan is not None
        replay = engine.step(items, check_finite=check_finite, pairs=plan.pairs if keep else None)
        if keep:
            plan.replay = replay
    return state, model


class _Plan:
    """What ``update_`` keeps on a state's root between steps (while the model's containers
    hold the same children): every ``(leaf, parameter, path)`` of the state, the engine's
    Replay of the last step, and the state tree's skeleton for reading gradient trees."""

    __slots__ = ("model", "pairs", "replay", "skeleton", "structure")

    def __init__(self, model: Any, pairs: list, kept: bool) -> None:
        self.model, self.pairs = model, pairs
        self.structure = _structure(model) if kept else []  # only a kept plan is checked
        self.replay: Any = None
        self.skeleton: Any = None

    def gradients_along(self, grads: Any, state: Any) -> list | None:
        """The gradient of every pair, read from a gradient tree of ``Node``s or dicts whose
        every node has the state's keys (as ``ft.gradient`` returns); ``None`` for any other
        tree, which ``_collect`` then walks and checks."""
        if self.skeleton is None:
            self.skeleton = _skeleton(self.pairs, state)
        if self.skeleton is False:
            return None
        out: list = []
        return out if _along(grads, self.skeleton, out) else None


def _cached_plan(state: Any, model: Any) -> _Plan | None:
    plan = getattr(state, "_plan", None)
    if plan is not None and plan.model is model and _unchanged(plan.structure):
        return plan
    return None


def _new_plan(state: Any, model: Any, cacheable: bool) -> _Plan:
    pairs = [(w.leaf, w.x, w.path) for w in _collect(state, model, None, use_dot_grad=True)]
    plan = _Plan(model, pairs, kept=cacheable)
    if cacheable:
        object.__setattr__(state, "_plan", plan)
    return plan


class _NoSkeleton(Exception):
    pass


def _skeleton(pairs: list, state: Any) -> Any:
    """The state tree's shape for ``_along``: for a Leaf its position among ``pairs``, for a
    node its keys and its children's skeletons (``None`` children, which ``_collect`` skips,
    left out); ``False`` if a Leaf is reached twice (tied: ``_collect`` sums the gradients)."""
    index = {id(leaf): i for i, (leaf, _, _) in enumerate(pairs)}
    seen: set[int] = set()

    def build(st: Any) -> Any:
        if isinstance(st, Leaf):
            i = index.get(id(st))
            if i is None or i in seen:
                raise _NoSkeleton
            seen.add(i)
            return i
        ch = st._children if type(st) is Node else children(st)
        if ch is None:
            raise _NoSkeleton
        return ch.keys(), [(k, build(sub)) for k, sub in ch.items() if sub is not None]

    try:
        return build(state)
    except _NoSkeleton:
        return False


def _along(g: Any, skeleton: Any, out: list) -> bool:
    """Append to ``out`` the gradients of ``skeleton``'s leaves read from ``g``, or return
    ``False`` if ``g`` is not a tree of ``Node``s or dicts with exactly the state's keys."""
    if type(skeleton) is int:
        out.append(g)
        return True
    if type(g) is Node:
        ch = g._children
    elif type(g) is dict:
        ch = g
    else:
        return False
    keys, kids = skeleton
    if ch.keys() != keys:
        return False
    for k, sub in kids:
        if not _along(ch[k], sub, out):
            return False
    return True


def _dot_grad_items(pairs: list) -> list[engine.Work]:
    """The leaves to update from each parameter's ``.grad``."""
    items = [engine.Work(leaf, x, [x.grad], path) for leaf, x, path in pairs if x.grad is not None]
    if not items and any(not leaf.frozen for leaf, _, _ in pairs):
        warnings.warn(
            "update_: no trainable parameter has a .grad, so nothing was updated; call "
            "loss.backward() first, or pass the gradient tree: ft.update_(state, model, grads[0])",
            stacklevel=3,
        )
    return items


def _unchanged(structure: list[tuple[Any, tuple]]) -> bool:
    for container, kids in structure:
        now = container.values() if isinstance(container, dict) else container
        if len(now) != len(kids) or not all(map(operator.is_, now, kids)):
            return False
    return True


def update(state: Any, model: Any, grads: Any = None) -> tuple[Any, Any]:
    """Like [`update_`][fluxtrain.optimisers.state.update_] but returns new state and model, leaving the originals untouched.

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = torch.tensor([1.0])
        >>> st = ft.setup(ft.Descent(0.5), m)
        >>> st2, m2 = ft.update(st, m, torch.tensor([1.0]))
        >>> m, m2
        (tensor([1.]), tensor([0.5000]))
    """
    memo: dict[int, Any] = {}
    model = unwrap(model)
    new_model = copy.deepcopy(model, memo)
    new_state = copy.deepcopy(state, memo)
    if grads is None:
        grads = _grads_of(model)
    update_(new_state, new_model, grads)
    return new_state, new_model


def _grads_of(model: Any) -> Any:
    """The ``.grad`` of every tensor in ``model``, as a tree (for ``update`` with grads=None)."""
    if isinstance(model, torch.Tensor):
        return model.grad
    ch = children(model)
    if ch is None:
        return None
    return {k: _grads_of(v) for k, v in ch.items()}


# ---------------------------------------------------------------------------------------------
# adjust, freeze, thaw, reset


def _changes(eta: Any, hyper: dict[str, Any]) -> dict[str, Any]:
    changes = dict(hyper)
    if "lr" in changes:
        if eta is not None or "eta" in changes:
            raise TypeError("give the learning rate once: eta or its alias lr, not both")
        changes["eta"] = changes.pop("lr")
    if eta is not None:
        if "eta" in changes:
            raise TypeError("eta given both positionally and by keyword")
        changes["eta"] = eta
    if not changes:
        raise TypeError("adjust needs a learning rate (eta) or hyperparameter keywords")
    return changes


def _unknown_error(unknown: set[str], rules: list[Rule]) -> ValueError:
    names = sorted({f"{type(r).__name__}" for r in rules})
    return ValueError(
        f"no rule in this subtree has hyperparameter(s) {sorted(unknown)} "
        f"(rules here: {', '.join(names) or 'none'}); Optimisers.jl would ignore this silently"
    )


def adjust_(tree: Any, eta: float | None = None, **hyper: Any) -> None:
    """Change hyperparameters of every rule below ``tree``, keeping the stored momenta.

    ``adjust_(st, 0.01)`` sets the learning rate; keywords set any field
    (``adjust_(st, beta=(0.8, 0.99))``); ``lr`` is an alias of ``eta``.  Works on any subtree
    (``adjust_(st.layers.enc, 0.03)``).  A keyword that no rule there has is an error.

    Example:
        >>> import torch, fluxtrain as ft
        >>> st = ft.setup(ft.Adam(0.1), {"w": torch.zeros(1)})
        >>> ft.adjust_(st, 0.01); st["w"].rule.eta
        0.01
    """
    if isinstance(tree, Rule):
        raise TypeError(
            "adjust_ changes a state tree in place; for a rule use ft.adjust(rule, ...)"
        )
    changes = _changes(eta, hyper)
    found = list(leaves(tree))
    if not found:
        raise ValueError("adjust_: there is no Leaf (trainable parameter) in this subtree")
    new_rules = []
    used: set[str] = set()
    for leaf in found:
        r, u = leaf.rule._adjust(changes)
        new_rules.append(r)
        used |= u
    unknown = set(changes) - used
    if unknown:
        raise _unknown_error(unknown, [leaf.rule for leaf in found])
    for leaf, r in zip(found, new_rules):
        leaf.rule = r


def adjust(tree_or_rule: Any, eta: float | None = None, **hyper: Any) -> Any:
    """Copying version of [`adjust_`][fluxtrain.optimisers.state.adjust_]: returns a new rule or a new state tree.

    Example:
        >>> import fluxtrain as ft
        >>> ft.adjust(ft.Adam(), beta=(0.8, 0.99))
        Adam(eta=0.001, beta=(0.8, 0.99), epsilon=1e-08)
    """
    if isinstance(tree_or_rule, Rule):
        changes = _changes(eta, hyper)
        r, used = tree_or_rule._adjust(changes)
        unknown = set(changes) - used
        if unknown:
            raise _unknown_error(unknown, [tree_or_rule])
        return r
    new = copy.deepcopy(tree_or_rule)
    adjust_(new, eta, **hyper)
    return new


def _state_leaves(tree: Any, verb: str) -> list[Leaf]:
    """The Leafs below ``tree``; a model in place of the state tree is an error."""
    if isinstance(tree, (nn.Module, torch.Tensor)) or (
        not isinstance(tree, Leaf) and trainables(tree)
    ):
        raise TypeError(
            f"{verb} takes the optimiser state from ft.setup (or a subtree of it, e.g. "
            f"opt_state.layers.enc), not the model: {verb}(opt_state...) "
            f"(got a {type(tree).__name__} holding parameters)"
        )
    return list(leaves(tree))


def freeze_(tree: Any) -> None:
    """Stop updating every parameter below ``tree`` until [`thaw_`][fluxtrain.optimisers.state.thaw_] (state is kept).

    ``tree`` is the optimiser state from ``setup`` or a subtree of it; passing the model
    instead is an error (it would silently do nothing).

    Example:
        >>> import torch, fluxtrain as ft
        >>> st = ft.setup(ft.Adam(), {"a": torch.zeros(1), "b": torch.zeros(1)})
        >>> ft.freeze_(st["a"]); st["a"].frozen, st["b"].frozen
        (True, False)
    """
    for leaf in _state_leaves(tree, "freeze_"):
        leaf.frozen = True


def thaw_(tree: Any) -> None:
    """Undo [`freeze_`][fluxtrain.optimisers.state.freeze_] on every Leaf below ``tree`` (the state
    tree, not the model).

    Example:
        >>> import torch, fluxtrain as ft
        >>> st = ft.setup(ft.Adam(), torch.zeros(1)); ft.freeze_(st); ft.thaw_(st)
        >>> st.frozen
        False
    """
    for leaf in _state_leaves(tree, "thaw_"):
        leaf.frozen = False


def _assign_state(old: Any, new: Any) -> Any:
    """Copy tensors of ``new`` into ``old`` in place (so views stay valid); return the result."""
    if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
        with torch.no_grad():
            old.copy_(new)
        return old
    if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
        return tuple(_assign_state(o, n) for o, n in zip(old, new))
    return new


def reset_(tree: Any) -> None:
    """Zero the stored state (momenta, counters) of every Leaf below ``tree``, keeping rules.

    Also resets a [`Stateful`][fluxtrain.schedules.Stateful] schedule.

    Example:
        >>> import torch, fluxtrain as ft
        >>> st = ft.setup(ft.Momentum(), torch.zeros(1))
        >>> st.state += 1; ft.reset_(st); st.state
        tensor([0.])
    """
    if hasattr(tree, "_reset_"):
        tree._reset_()
        return
    for leaf in leaves(tree):
        leaf.state = _assign_state(leaf.state, leaf.rule.init(_template(leaf)))


def _template(leaf: Leaf) -> torch.Tensor:
    """Zeros shaped like the Leaf's parameter, for ``rule.init`` to rebuild its state.

    The state of a sharded parameter (FSDP2's DTensor) is sharded like it: the template is then
    a DTensor on the same mesh with the same placements, so each rank makes only its shard.
    """
    shape, dtype, device = leaf._like
    for a in engine.atoms(leaf.state):
        mesh = getattr(a, "device_mesh", None)
        if mesh is not None and tuple(a.shape) == tuple(shape):
            from torch.distributed.tensor import zeros

            return zeros(shape, dtype=dtype, device_mesh=mesh, placements=a.placements)
    return torch.zeros(shape, dtype=dtype, device=device)
