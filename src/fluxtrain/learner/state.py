"""The learner's state containers: the step state, the shared callback state, per-phase dicts.

- [`StepState`][fluxtrain.learner.StepState] is ``learner.step``: the last step's ``xs``, ``ys``, ``ys_pred`` (Flux's
  ``ŷs``, also reachable under that name), ``loss`` and ``grads``, plus anything step code stores.
- [`CallbackState`][fluxtrain.learner.CallbackState] is ``learner.cbstate``: what callbacks share (``history``,
  ``metrics_step``, ``metrics_epoch``, ``hyperparams`` ...), FluxTraining.jl's ``PropDict``.
- `PhaseDict` maps phases to values (``cbstate.history[TrainingPhase()]``), keyed by the
  phase's name so that it survives a checkpoint.

Values stored here are saved by [`state_dict`][fluxtrain.learner.Learner.state_dict] when they are plain data
(numbers, strings, lists, dicts, tensors) or one of the registered state types
(`register_state_type`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["CallbackState", "PhaseDict", "StepState"]

# Flux writes the model output as ``ŷs``; Python code reads better with ``ys_pred``.
_ALIASES = {"ŷs": "ys_pred"}


def _short(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            return f"{v.item():.4g}"
        return f"<tensor {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}>"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class StepState:
    """The state of one step, ``learner.step`` (FluxTraining.jl ``StepState``/``PropDict``).

    Step code stores what callbacks may read: ``xs`` (model input), ``ys`` (targets),
    ``ys_pred`` (model output, Flux's ``ŷs``: ``state.ŷs`` is the same attribute), ``loss`` and
    ``grads``.  These read as ``None`` until set; any other attribute may be stored too.

    Example:
        >>> import fluxtrain as ft
        >>> s = ft.StepState(xs=1, ys=2)
        >>> s.ŷs = 3
        >>> s.ys_pred, s.loss, "xs" in s
        (3, None, True)
    """

    _FIELDS = ("xs", "ys", "ys_pred", "loss", "grads")

    def __init__(self, **fields: Any) -> None:
        d = self.__dict__
        for k in self._FIELDS:
            d[k] = None
        for k, v in fields.items():
            d[_ALIASES.get(k, k)] = v

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[_ALIASES.get(name, name)] = value

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not in __dict__.
        if name in _ALIASES:
            return self.__dict__[_ALIASES[name]]
        raise AttributeError(
            f"the step state has no {name!r}; it holds {sorted(self.__dict__)} (step code sets "
            f"what callbacks read)"
        )

    def __contains__(self, name: str) -> bool:
        name = _ALIASES.get(name, name)
        return self.__dict__.get(name) is not None or (
            name in self.__dict__ and name not in self._FIELDS
        )

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def keys(self) -> list[str]:
        """The names holding a value (fields still ``None`` are left out)."""
        return [k for k, v in self.__dict__.items() if v is not None or k not in self._FIELDS]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={_short(self.__dict__[k])}" for k in self.keys())
        return f"StepState({inner})"


class CallbackState:
    """``learner.cbstate``: state that callbacks share, with attribute and item access.

    Example:
        >>> import fluxtrain as ft
        >>> cs = ft.CallbackState()
        >>> cs.history = {"epochs": 1}
        >>> "history" in cs, cs["history"], list(cs)
        (True, {'epochs': 1}, ['history'])
    """

    def __init__(self, **entries: Any) -> None:
        self.__dict__.update(entries)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"learner.cbstate has no {name!r} (it has {sorted(self.__dict__)}): is the callback "
            f"that writes it among the learner's callbacks?"
        )

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def __delitem__(self, name: str) -> None:
        del self.__dict__[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.__dict__))

    def get(self, name: str, default: Any = None) -> Any:
        """``cbstate.name`` if present, else ``default``."""
        return self.__dict__.get(name, default)

    def items(self) -> list[tuple[str, Any]]:
        """The ``(name, value)`` pairs."""
        return list(self.__dict__.items())

    def __repr__(self) -> str:
        return f"CallbackState({', '.join(sorted(self.__dict__))})"


def phase_key(phase: Any) -> str:
    """The name under which ``phase`` (an instance, a class or a name) is stored."""
    if isinstance(phase, str):
        return phase
    if isinstance(phase, type):
        return phase.__name__
    return type(phase).__name__


class PhaseDict(dict):
    """A dict keyed by phase: ``d[TrainingPhase()]``, ``d[TrainingPhase]`` and
    ``d["TrainingPhase"]`` are the same entry; missing entries are made by ``default``.

    Example:
        >>> import fluxtrain as ft
        >>> from fluxtrain.learner.state import PhaseDict
        >>> d = PhaseDict(list)
        >>> d[ft.TrainingPhase()].append(1)
        >>> d["TrainingPhase"], ft.TrainingPhase in d
        ([1], True)
    """

    def __init__(self, default: Callable[[], Any] | None = None, *args: Any) -> None:
        super().__init__(*args)
        self.default = default

    def __getitem__(self, phase: Any) -> Any:
        key = phase_key(phase)
        if key not in self and self.default is not None:
            super().__setitem__(key, self.default())
        return super().__getitem__(key)

    def __setitem__(self, phase: Any, value: Any) -> None:
        super().__setitem__(phase_key(phase), value)

    def __contains__(self, phase: object) -> bool:
        return super().__contains__(phase_key(phase))

    def get(self, phase: Any, default: Any = None) -> Any:
        return super().get(phase_key(phase), default)


# ---------------------------------------------------------------------------------------------
# Turning callback state into plain data and back (for Learner.state_dict)

_STATE_TYPES: dict[str, type] = {}
_TAG = "__type__"


def register_state_type(cls: type) -> type:
    """Make instances of ``cls`` storable in ``cbstate`` across checkpoints.

    ``cls`` needs ``state_dict() -> dict`` and a classmethod ``from_state_dict(d)``.  Usable as
    a class decorator.
    """
    _STATE_TYPES[cls.__name__] = cls
    return cls


class _Unsaveable(Exception):
    pass


_BUILTIN_FACTORIES: dict[str, Callable[[], Any]] = {"list": list, "dict": dict}


def _factory_name(f: Any) -> str | None:
    if f in (list, dict):
        return f.__name__
    if isinstance(f, type) and _STATE_TYPES.get(f.__name__) is f:
        return f.__name__
    return None


def _factory(name: str | None) -> Callable[[], Any] | None:
    if name is None:
        return None
    return _BUILTIN_FACTORIES.get(name) or _STATE_TYPES.get(name)


def to_plain(x: Any) -> Any:
    """``x`` as plain data (dicts, lists, numbers, strings, tensors), tagged where needed."""
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return x
    if isinstance(x, PhaseDict):
        return {
            _TAG: "PhaseDict",
            "default": _factory_name(x.default),
            "items": {k: to_plain(v) for k, v in dict.items(x)},
        }
    if type(x).__name__ in _STATE_TYPES and isinstance(x, _STATE_TYPES[type(x).__name__]):
        return {_TAG: type(x).__name__, "state": to_plain(x.state_dict())}
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise _Unsaveable("a dict with non-string keys")
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    raise _Unsaveable(f"a {type(x).__name__}")


def from_plain(x: Any) -> Any:
    """Inverse of `to_plain` (tuples come back as lists)."""
    if isinstance(x, dict):
        tag = x.get(_TAG)
        if tag == "PhaseDict":
            d = PhaseDict(_factory(x.get("default")))
            for k, v in x["items"].items():
                d[k] = from_plain(v)
            return d
        if tag is not None:
            if tag not in _STATE_TYPES:
                raise ValueError(f"unknown callback state type {tag!r} in the saved learner state")
            return _STATE_TYPES[tag].from_state_dict(from_plain(x["state"]))
        return {k: from_plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_plain(v) for v in x]
    return x


def cbstate_to_plain(cbstate: CallbackState) -> dict[str, Any]:
    """Every saveable entry of ``cbstate``; others are left out with a warning naming them."""
    out = {}
    for k, v in cbstate.items():
        try:
            out[k] = to_plain(v)
        except _Unsaveable as e:
            warnings.warn(
                f"learner.cbstate.{k} holds {e} and is left out of the saved learner state; "
                f"store plain data there or register its type with register_state_type",
                stacklevel=3,
            )
    return out
