"""Declared state access: permissions parsed from ``reads``/``writes`` and the guarded view.

Each callback sees the learner through a `GuardedView` built from its declarations.  A
read of an undeclared attribute, or a write that was not declared as one, raises
[`ProtectedAccessError`][fluxtrain.learner.ProtectedAccessError] naming the callback and the path to declare
(FluxTraining.jl ``src/callbacks/protect.jl``: ``Protected``, ``Read``, ``Write``).

Reading a declared container returns the real object, except the learner's own state bags
(``learner.step``, ``learner.cbstate``) which come back read-only unless declared as written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .exceptions import ProtectedAccessError
from .state import _ALIASES, CallbackState, StepState

__all__ = ["GuardedView", "Permissions", "parse_path", "paths_conflict"]


def parse_path(path: str, owner: Any = None) -> tuple[str, ...]:
    """``"step.loss"`` -> ``("step", "loss")``; ``"*"`` -> ``("*",)``.  Aliases are resolved."""
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise ValueError(
            f"{owner!r}: state paths are dotted names such as 'step.loss' or 'cbstate.history', "
            f"got {path!r}"
        )
    return tuple(_ALIASES.get(p, p) for p in path.split("."))


def paths_conflict(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two paths touch the same state when one is a prefix of the other (or either is ``*``)."""
    if a[0] == "*" or b[0] == "*":
        return True
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class Permissions:
    """A tree of permissions: ``read``/``write`` on this node (and all below) plus children."""

    __slots__ = ("children", "read", "write")

    def __init__(self) -> None:
        self.read = False
        self.write = False
        self.children: dict[str, Permissions] = {}

    @classmethod
    def from_paths(
        cls, reads: Iterable[tuple[str, ...]], writes: Iterable[tuple[str, ...]]
    ) -> Permissions:
        root = cls()
        for path, write in [(p, False) for p in reads] + [(p, True) for p in writes]:
            node = root
            if path != ("*",):
                for part in path:
                    node = node.children.setdefault(part, cls())
            node.read = True
            node.write = node.write or write
        root._inherit(False, False)
        return root

    def _inherit(self, read: bool, write: bool) -> None:
        self.read = self.read or read
        self.write = self.write or write
        for child in self.children.values():
            child._inherit(self.read, self.write)

    @property
    def full(self) -> bool:
        return self.read and self.write


_READ_ONLY_LEAF = Permissions()
_READ_ONLY_LEAF.read = True
_WRITE_LEAF = Permissions()
_WRITE_LEAF.read = _WRITE_LEAF.write = True
_BAGS = (StepState, CallbackState)
_BAG_METHODS = frozenset({"get", "keys", "items"})


def _needs_view(value: Any, node: Permissions) -> bool:
    if node.children:
        return not node.full
    return not node.write and isinstance(value, _BAGS)


class GuardedView:
    """What a callback receives instead of the learner: declared state only.

    Attribute access is checked against the callback's permissions; containers along a
    declared path are wrapped in turn.  ``in`` and iteration pass through.
    """

    __slots__ = ("_ft_cache", "_ft_node", "_ft_owner", "_ft_path", "_ft_target")

    def __init__(self, target: Any, node: Permissions, path: str, owner: Any) -> None:
        set_ = object.__setattr__
        set_(self, "_ft_target", target)
        set_(self, "_ft_node", node)
        set_(self, "_ft_path", path)
        set_(self, "_ft_owner", owner)
        # Views of children, reused while the child is the same object (learner.step changes
        # every step; learner.cbstate never): attribute access stays cheap on the hot path.
        set_(self, "_ft_cache", {})

    def _ft_where(self, name: str) -> str:
        return f"{self._ft_path}.{name}"

    def _ft_denied(self, name: str, kind: str) -> ProtectedAccessError:
        where = self._ft_where(name)
        decl = where.removeprefix("learner.")
        owner = self._ft_owner
        return ProtectedAccessError(
            f"{owner!r} {kind} {where} without declaring it: add {decl!r} to its "
            f"`{'reads' if kind == 'read' else 'writes'}` (it declares reads="
            f"{tuple(getattr(owner, 'reads', ()))}, writes={tuple(getattr(owner, 'writes', ()))})"
        )

    def __getattr__(self, name: str) -> Any:
        node = self._ft_node
        perm = node.children.get(name)
        if perm is None:
            if name.startswith("__"):
                raise AttributeError(name)
            if name in _BAG_METHODS and isinstance(self._ft_target, CallbackState):
                return getattr(self, "_ft_" + name)
            if name in _ALIASES:
                return self.__getattr__(_ALIASES[name])
            if not node.read:
                raise self._ft_denied(name, "read")
            # Everything below a declared node inherits its permission.
            perm = _WRITE_LEAF if node.write else _READ_ONLY_LEAF
        value = getattr(self._ft_target, name)
        if not _needs_view(value, perm):
            return value
        view = self._ft_cache.get(name)
        if view is None or view._ft_target is not value or view._ft_node is not perm:
            view = GuardedView(value, perm, self._ft_where(name), self._ft_owner)
            self._ft_cache[name] = view
        return view

    def __setattr__(self, name: str, value: Any) -> None:
        name = _ALIASES.get(name, name)
        node = self._ft_node
        child = node.children.get(name)
        if node.write or (child is not None and child.write):
            setattr(self._ft_target, name, value)
            return
        raise self._ft_denied(name, "wrote")

    def __delattr__(self, name: str) -> None:
        node = self._ft_node
        child = node.children.get(name)
        if node.write or (child is not None and child.write):
            delattr(self._ft_target, name)
            return
        raise self._ft_denied(name, "wrote")

    # The lookup methods of ``cbstate`` check each entry as attribute access does.
    def _ft_get(self, name: str, default: Any = None) -> Any:
        return self.__getattr__(name) if name in self._ft_target else default

    def _ft_keys(self) -> list[str]:
        return list(self._ft_target)

    def _ft_items(self) -> list[tuple[str, Any]]:
        return [(k, self.__getattr__(k)) for k in self._ft_target]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str) and isinstance(self._ft_target, _BAGS):
            return self.__getattr__(key)
        if self._ft_node.read:
            return self._ft_target[key]
        raise self._ft_denied(f"[{key!r}]", "read")

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, str) and isinstance(self._ft_target, _BAGS):
            self.__setattr__(key, value)
            return
        if self._ft_node.write:
            self._ft_target[key] = value
            return
        raise self._ft_denied(f"[{key!r}]", "wrote")

    def __contains__(self, key: Any) -> bool:
        return key in self._ft_target

    def __iter__(self) -> Iterator[Any]:
        return iter(self._ft_target)

    def __len__(self) -> int:
        return len(self._ft_target)

    def __repr__(self) -> str:
        return f"<{self._ft_path} as seen by {self._ft_owner!r}>"
