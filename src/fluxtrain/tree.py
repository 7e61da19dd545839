"""Trees: walking and rebuilding nested models (Functors.jl for PyTorch).

A *model* is any nesting of ``torch.nn.Module``, ``dict``, ``list``, ``tuple``, named tuples and
dataclasses, with tensors and other objects (functions, numbers, strings) as leaves.  Everything in
fluxtrain that must mirror a model's shape (gradients, optimiser state, checkpoints) walks it with
the functions here, so there is exactly one notion of "the children of a node".

Trainable leaves are floating-point tensors; inside a Module, its registered parameters that
require grad (buffers such as BatchNorm's running statistics are not trainable).  A class narrows
its trainable children with [`layer`][fluxtrain.tree.layer].  The same tensor reached twice (tied weights) is one
parameter.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "KeyPath",
    "Node",
    "children",
    "fmap",
    "is_trainable_tensor",
    "layer",
    "leaves_with_path",
    "trainable_children",
    "trainables",
]

_TRAINABLE_ATTR = "__fluxtrain_trainable__"


# ---------------------------------------------------------------------------------------------
# Key paths


class KeyPath(tuple):
    """The address of a node inside a tree: a tuple of keys, printed as ``layers.enc.weight``.

    Example:
        >>> str(KeyPath(("layers", 0, "weight")))
        'layers.0.weight'
    """

    __slots__ = ()

    def __str__(self) -> str:
        return ".".join(str(k) for k in self) if self else "<root>"

    def __repr__(self) -> str:
        return f"KeyPath({str(self)!r})"

    def __add__(self, other: tuple) -> KeyPath:  # type: ignore[override]
        return KeyPath(tuple(self) + tuple(other))


# ---------------------------------------------------------------------------------------------
# Children of a node


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def node_kind(x: Any) -> str | None:
    """The kind of container ``x`` is, or ``None`` for a leaf."""
    if isinstance(x, torch.Tensor):
        return None
    if isinstance(x, nn.Module):
        return "module"
    if isinstance(x, Node):
        return x._kind
    if _is_namedtuple(x):
        return "namedtuple"
    if isinstance(x, tuple):
        return "tuple"
    if isinstance(x, list):
        return "list"
    if isinstance(x, Mapping):
        return "dict"
    if _is_dataclass_instance(x):
        return "dataclass"
    return None


def children(x: Any) -> dict[Any, Any] | None:
    """The children of a tree node as an ordered ``{key: child}`` dict, or ``None`` for a leaf.

    Modules give their registered parameters, buffers and submodules (in that order); sequences
    give integer keys; dataclasses and named tuples give their fields.

    Example:
        >>> children({"a": 1, "b": [2, 3]})
        {'a': 1, 'b': [2, 3]}
    """
    if isinstance(x, Node):
        return dict(x._children)
    kind = node_kind(x)
    if kind is None:
        return None
    if kind == "module":
        out: dict[Any, Any] = {}
        for k, v in x._parameters.items():
            if v is not None:
                out[k] = v
        for k, v in x._buffers.items():
            if v is not None:
                out[k] = v
        for k, v in x._modules.items():
            if v is not None:
                out[k] = v
        return out
    if kind == "namedtuple":
        return dict(zip(type(x)._fields, x))
    if kind in ("tuple", "list"):
        return dict(enumerate(x))
    if kind == "dict":
        return dict(x.items())
    # dataclass
    return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}


def is_trainable_tensor(x: Any) -> bool:
    """A floating-point (or complex) tensor: the kind of leaf an optimiser updates."""
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def trainable_children(x: Any) -> dict[Any, Any] | None:
    """Like `children`, but with non-trainable children replaced by ``None``.

    Inside a Module only registered parameters that require grad (and submodules) can be
    trainable; buffers never are.  A class decorated with ``@layer(trainable=...)`` narrows
    this further to the named children.
    """
    ch = children(x)
    if ch is None:
        return None
    allowed = getattr(type(x), _TRAINABLE_ATTR, None)
    if isinstance(x, nn.Module):
        params = x._parameters
        out = {}
        for k, v in ch.items():
            if allowed is not None and k not in allowed:
                out[k] = None
            elif k in params:
                out[k] = v if v.requires_grad else None
            elif k in x._buffers:
                out[k] = None
            else:
                out[k] = v
        return out
    if allowed is not None:
        return {k: (v if k in allowed else None) for k, v in ch.items()}
    return ch


def layer(cls: type | None = None, *, trainable: tuple[str, ...] | list[str] | None = None):
    """Class decorator (Flux's ``@layer``): mark which children of a layer are trainable.

    Example:
        >>> import torch
        >>> @layer(trainable=("weight",))
        ... class Scale(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = torch.nn.Parameter(torch.ones(2))
        ...         self.shift = torch.nn.Parameter(torch.zeros(2))
        >>> [str(p) for p, _ in trainables(Scale(), path=True)]
        ['weight']
    """

    def decorate(c: type) -> type:
        if trainable is not None:
            names = (trainable,) if isinstance(trainable, str) else tuple(trainable)
            setattr(c, _TRAINABLE_ATTR, names)
        return c

    if cls is not None:
        return decorate(cls)
    return decorate


# ---------------------------------------------------------------------------------------------
# Tree nodes for gradients and optimiser state


class Node:
    """A node of a gradient or optimiser-state tree, mirroring one container of the model.

    Children are reached as attributes (``st.layers.enc``, ``g.weight``) or by index/key
    (``st.layers[0]``, ``g["a"]``), whichever the model used.  ``Node`` deliberately has no public
    methods, so any child name works as an attribute.

    Example:
        >>> n = Node("dict", {"a": 1, "b": None})
        >>> n.a, n["a"]
        (1, 1)
    """

    __slots__ = ("__weakref__", "_children", "_kind", "_plan")

    def __init__(self, kind: str, children: dict[Any, Any]):
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_children", children)

    def __getattr__(self, name: str) -> Any:
        ch = object.__getattribute__(self, "_children")
        if name in ch:
            return ch[name]
        if name.isdigit() and int(name) in ch:
            return ch[int(name)]
        raise AttributeError(f"this tree node has no child {name!r}; it has {list(ch)}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("tree nodes are read-only; use ft.adjust_/freeze_ to change state")

    def _lookup_key(self, key: Any) -> Any:
        ch = self._children
        if key in ch and not isinstance(key, bool):
            return key
        if isinstance(key, int) and not isinstance(key, bool):
            if str(key) in ch:
                return str(key)
            # Negative positions count from the end, as on the tuple, list, namedtuple or
            # nn.Sequential/ModuleList (children "0", "1", ...) the node mirrors.
            if self._kind in ("tuple", "list", "namedtuple", "module") and -len(ch) <= key < 0:
                key += len(ch)
                if key in ch:
                    return key
                if str(key) in ch:
                    return str(key)
            if self._kind in ("namedtuple", "module", "dataclass") and 0 <= key < len(ch):
                return list(ch)[key]
        if isinstance(key, str) and key.isdigit() and int(key) in ch:
            return int(key)
        raise KeyError(key)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._children[self._lookup_key(key)]
        except KeyError:
            raise KeyError(
                f"this tree node has no child {key!r}; it has {list(self._children)}"
            ) from None

    def __contains__(self, key: Any) -> bool:
        try:
            self._lookup_key(key)
            return True
        except KeyError:
            return False

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Any]:
        # A dict-shaped node iterates like a dict (keys); every other node like a tuple (values),
        # so ``ga, gb = grads`` unpacks a tuple-shaped gradient.
        if self._kind == "dict":
            return iter(self._children)
        return iter(self._children.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Node):
            return self._kind == other._kind and _tree_equal(self._children, other._children)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (Node, (self._kind, self._children))

    def __dir__(self) -> list[str]:
        return [str(k) for k in self._children]

    def __repr__(self) -> str:
        return _format(self, 0)


def _tree_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool((a == b).all())
        )
    return a == b


def _format(x: Any, indent: int) -> str:
    if not isinstance(x, Node):
        return repr(x)
    items = list(x._children.items())
    if x._kind in ("tuple", "list"):
        parts = [_format(v, indent + 2) for _, v in items]
        open_, close = ("[", "]") if x._kind == "list" else ("(", ")")
        if x._kind == "tuple" and len(parts) == 1:
            close = ",)"
    elif x._kind == "dict":
        parts = [f"{k!r}: {_format(v, indent + 2)}" for k, v in items]
        open_, close = "{", "}"
    else:
        parts = [f"{k}={_format(v, indent + 2)}" for k, v in items]
        open_, close = "(", ")"
    one_line = open_ + ", ".join(parts) + close
    if len(one_line) + indent <= 100 and "\n" not in one_line:
        return one_line
    pad = " " * (indent + 2)
    return open_ + "\n" + ",\n".join(pad + p for p in parts) + ",\n" + " " * indent + close


def make_node(template: Any, new_children: dict[Any, Any]) -> Node:
    """A [`Node`][fluxtrain.tree.Node] of the same kind as the model node ``template``."""
    kind = node_kind(template)
    assert kind is not None
    return Node(kind, new_children)


# ---------------------------------------------------------------------------------------------
# Rebuilding


def rebuild(x: Any, new_children: dict[Any, Any]) -> Any:
    """A copy of the container ``x`` with its children replaced (same type as ``x``)."""
    if isinstance(x, Node):
        return Node(x._kind, {k: new_children[k] for k in x._children})
    kind = node_kind(x)
    if kind == "module":
        new = copy.copy(x)
        new._parameters = dict(x._parameters)
        new._buffers = dict(x._buffers)
        new._modules = dict(x._modules)
        for k, v in new_children.items():
            if k in x._parameters:
                old = x._parameters[k]
                if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                    v = nn.Parameter(v, requires_grad=old.requires_grad and v.is_floating_point())
                new._parameters[k] = v
            elif k in x._buffers:
                new._buffers[k] = v
            else:
                new._modules[k] = v
        return new
    if kind == "namedtuple":
        return type(x)(**{k: new_children[k] for k in type(x)._fields})
    if kind == "tuple":
        return tuple(new_children[i] for i in range(len(x)))
    if kind == "list":
        return [new_children[i] for i in range(len(x))]
    if kind == "dict":
        try:
            out = type(x)()
        except TypeError:
            out = {}
        for k in x:
            out[k] = new_children[k]
        return out
    if kind == "dataclass":
        new = copy.copy(x)
        for k, v in new_children.items():
            object.__setattr__(new, k, v)
        return new
    raise TypeError(f"cannot rebuild a leaf of type {type(x).__name__}")


def fmap(f: Callable[..., Any], x: Any, *ys: Any) -> Any:
    """Rebuild the tree ``x`` with ``f`` applied to each tensor leaf (Functors' ``fmap``).

    With extra trees ``ys``, they are walked in parallel and ``f(leaf, y_leaf, ...)`` is called;
    a ``None`` branch in a ``y`` gives ``None`` leaves below it.  A tensor or a submodule reached
    twice (tied weights, a shared block) is transformed once and the result is reused, so ties
    survive.  Modules are shallow-copied
    with their parameters replaced; the original model is not changed (unless ``f`` mutates).

    Example:
        >>> import torch
        >>> fmap(lambda t: t * 2, {"a": torch.tensor([1.0]), "f": len})["a"]
        tensor([2.])
    """
    cache: dict[int, Any] = {}

    def walk(node: Any, others: tuple) -> Any:
        if isinstance(node, torch.Tensor):
            key = id(node)
            if key not in cache:
                cache[key] = f(node, *others)
            return cache[key]
        if isinstance(node, nn.Module) and id(node) in modules:
            # A submodule reached twice (shared block) stays one module, as in Functors.jl,
            # whose fmap caches every mutable node, not only the leaves.
            return modules[id(node)]
        ch = children(node)
        if ch is None:
            return node
        new = {}
        for k, v in ch.items():
            new[k] = walk(v, tuple(_child_of(o, k) for o in others))
        if isinstance(node, nn.Module):
            # Wrap each new tensor in one Parameter, shared by every module that held the old
            # one: otherwise rebuild would give tied weights one Parameter per place.
            for k, old in node._parameters.items():
                v = new.get(k)
                if old is not None and type(v) is torch.Tensor:
                    if id(v) not in params:
                        grad = old.requires_grad and (v.is_floating_point() or v.is_complex())
                        params[id(v)] = nn.Parameter(v, requires_grad=grad)
                    new[k] = params[id(v)]
            modules[id(node)] = rebuild(node, new)
            return modules[id(node)]
        return rebuild(node, new)

    params: dict[int, nn.Parameter] = {}
    modules: dict[int, nn.Module] = {}
    return walk(x, ys)


def _child_of(tree: Any, key: Any) -> Any:
    """The child ``key`` of a parallel tree (gradient, state), tolerant of its container type."""
    if tree is None:
        return None
    if isinstance(tree, Node):
        try:
            return tree[key]
        except KeyError:
            return None
    if isinstance(tree, Mapping):
        if key in tree:
            return tree[key]
        if isinstance(key, str) and key.isdigit() and int(key) in tree:
            return tree[int(key)]
        if isinstance(key, int) and str(key) in tree:
            return tree[str(key)]
        return None
    if isinstance(tree, (list, tuple)) and not _is_namedtuple(tree):
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int) and 0 <= key < len(tree):
            return tree[key]
        return None
    if isinstance(key, str):
        return getattr(tree, key, None)
    return None


# ---------------------------------------------------------------------------------------------
# Trainable leaves


def leaves_with_path(model: Any) -> Iterator[tuple[KeyPath, torch.Tensor]]:
    """Every trainable tensor of ``model`` with its key path, ties reported once (first path)."""
    seen: set[int] = set()

    def walk(node: Any, path: KeyPath) -> Iterator[tuple[KeyPath, torch.Tensor]]:
        if isinstance(node, torch.Tensor):
            if is_trainable_tensor(node) and id(node) not in seen:
                seen.add(id(node))
                yield path, node
            return
        ch = trainable_children(node)
        if ch is None:
            return
        for k, v in ch.items():
            if v is not None:
                yield from walk(v, path + (k,))

    yield from walk(model, KeyPath())


def trainables(model: Any, path: bool = False) -> list:
    """The trainable tensors of ``model`` (Optimisers.jl ``trainables``), tied ones once.

    With ``path=True`` each entry is ``(keypath, tensor)``; ``str(keypath)`` reads like
    ``"layers.0.weight"``.

    Example:
        >>> import torch
        >>> m = {"w": torch.ones(2), "n": 3, "bn": torch.nn.BatchNorm1d(2)}
        >>> [str(p) for p, _ in trainables(m, path=True)]
        ['w', 'bn.weight', 'bn.bias']
    """
    items = list(leaves_with_path(model))
    if path:
        return items
    return [t for _, t in items]
