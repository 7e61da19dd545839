"""The ``Scheduler`` rule: an optimisation rule whose hyperparameters follow schedules.

ParameterSchedulers.jl v0.4 ``src/scheduler.jl``: ``Scheduler(constructor, schedules...)`` is an
Optimisers.jl rule whose state is ``(t, inner_state)``; each update evaluates the schedules at
``t``, builds ``constructor(values...)`` and applies it.  The counter lives in the optimiser
state, so it advances only when that parameter is updated (a frozen Leaf keeps its ``t``), and
``ft.reset_`` sets it back to 1.

Engine contract: the rule is a frozen dataclass compared and hashed by value, so leaves with the
same schedules and the same ``t`` form one group; ``apply`` is the inner rule's tensor maths on
whatever tensors it is given (one parameter or a flat buffer of many) with the hyperparameters
passed as Python numbers, exactly like a hand-made rule.  Inner rules are cached per ``t``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from . import rules as _rules
from .rules import Rule

__all__ = ["Scheduler"]

_CACHE_SIZE = 16


def _is_scheduled(v: Any) -> bool:
    if isinstance(v, tuple):
        return any(_is_scheduled(u) for u in v)
    return callable(v) and not isinstance(v, type)


def _value_at(v: Any, t: int) -> Any:
    if isinstance(v, tuple):
        return tuple(_value_at(u, t) for u in v)
    if callable(v) and not isinstance(v, type):
        return v(t)
    return v


def _frozen(v: Any) -> Any:
    return tuple(_frozen(u) for u in v) if isinstance(v, (list, tuple)) else v


def _parameter_names(constructor: Any) -> tuple[list[str], bool]:
    """Names the constructor accepts, in order, and whether it takes any keyword (**kw)."""
    if isinstance(constructor, type) and issubclass(constructor, Rule):
        if dataclasses.is_dataclass(constructor):
            names = [f.name for f in dataclasses.fields(constructor)]
            if names != ["opts"]:
                return names, False
        raise TypeError(
            f"Scheduler needs a rule with hyperparameter fields, got {constructor.__name__}; "
            f"schedule the rules inside the chain instead: "
            f"OptimiserChain(WeightDecay(), Scheduler(Adam, ...))"
        )
    try:
        sig = inspect.signature(constructor)
    except (TypeError, ValueError):
        raise TypeError(
            f"Scheduler cannot read the arguments of {constructor!r}; pass schedules by keyword "
            f"to a function with named parameters"
        ) from None
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
        elif p.kind == p.VAR_KEYWORD:
            var_kw = True
    return names, var_kw


def _has_global_clip(rule: Rule) -> bool:
    if isinstance(rule, _rules.ClipNorm):
        return rule.scope == "global"
    if isinstance(rule, _rules.OptimiserChain):
        return any(_has_global_clip(r) for r in rule.opts)
    return False


def _name(constructor: Any) -> str:
    return getattr(constructor, "__name__", repr(constructor))


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Scheduler(Rule):
    """A rule whose hyperparameters follow schedules (ParameterSchedulers.jl ``Scheduler``).

    ``Scheduler(rule_class, *schedules, **field_schedules)``: positional schedules are the
    rule's fields in order (``Scheduler(Descent, Exp(0.1, 0.5))`` schedules ``eta``), keywords
    name them (``Scheduler(Momentum, eta=CosAnneal(...), rho=0.9)``).  A value is a schedule (or
    any function of ``t``), a plain constant, or a tuple of them (``beta=(Exp(...), 0.999)``).
    ``rule_class`` may also be any function returning a rule, called with keywords.

    The state is ``(t, inner_state)`` with ``t`` starting at 1: each update applies
    ``rule_class(**values_at_t)`` (see [`rule_at`][fluxtrain.optimisers.scheduler.Scheduler.rule_at]) and increments ``t``.  It works inside
    [`OptimiserChain`][fluxtrain.optimisers.rules.OptimiserChain] like any rule.

    ``ft.adjust_(state, eta=...)`` on a Scheduler replaces what drives that field: a number
    fixes it (ending its schedule), a schedule installs a new schedule; fields that were not
    scheduled become fixed values of the inner rule.  The counter ``t`` is kept.

    Example:
        >>> import torch, fluxtrain as ft
        >>> rule = ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5))
        >>> rule
        Scheduler(Descent, eta=Exp(start=0.1, decay=0.5))
        >>> x = torch.zeros(2)
        >>> st = ft.setup(rule, x)
        >>> for _ in range(3):
        ...     _ = ft.update_(st, x, torch.ones(2))
        >>> x  # -(0.1 + 0.05 + 0.025)
        tensor([-0.1750, -0.1750])
        >>> st.state[0]  # the next iteration
        4
    """

    constructor: Any
    schedules: tuple[tuple[str, Any], ...]

    def __init__(self, constructor: Any, *schedules: Any, **field_schedules: Any) -> None:
        if isinstance(constructor, Rule):
            raise TypeError(
                f"Scheduler needs the rule class, e.g. Scheduler({type(constructor).__name__}, "
                f"...), not an instance {constructor!r}"
            )
        if not callable(constructor):
            raise TypeError(f"Scheduler needs a rule class such as ft.Adam, got {constructor!r}")
        names, var_kw = _parameter_names(constructor)
        who = _name(constructor)
        if len(schedules) > len(names):
            raise TypeError(
                f"Scheduler({who}, ...) got {len(schedules)} positional schedules but {who} has "
                f"only {len(names)} fields {names}"
            )
        given: dict[str, Any] = dict(zip(names, schedules))
        for k, v in field_schedules.items():
            if k in given:
                raise TypeError(f"Scheduler({who}, ...): {k} given twice")
            if k not in names and not var_kw:
                raise TypeError(f"Scheduler: {who} has no field {k!r} (its fields: {names})")
            given[k] = v
        if not given:
            raise TypeError(f"Scheduler({who}) needs at least one schedule")
        order = {n: i for i, n in enumerate(names)}
        items = sorted(given.items(), key=lambda kv: order.get(kv[0], len(order)))
        object.__setattr__(self, "constructor", constructor)
        object.__setattr__(self, "schedules", tuple((k, _frozen(v)) for k, v in items))
        try:
            hash(self.schedules)
        except TypeError:
            raise TypeError(
                "Scheduler: schedules must be hashable (schedule objects, functions, numbers, "
                "tuples); the update engine uses rules as dictionary keys"
            ) from None
        try:  # invalid hyperparameters fail here, not at the first update
            first = self.rule_at(1)
        except (TypeError, ValueError) as e:
            values = ", ".join(f"{k}={_value_at(v, 1)!r}" for k, v in self.schedules)
            raise type(e)(f"Scheduler: {who}({values}) at t=1 failed: {e}") from e
        if not isinstance(first, Rule):
            raise TypeError(f"Scheduler: {who}(...) must return a rule, got {first!r}")
        if _has_global_clip(first):
            raise ValueError(
                "Scheduler: ClipNorm(scope='global') cannot be scheduled (the engine clips "
                "globally before any rule runs); put it first in an OptimiserChain around the "
                "Scheduler: OptimiserChain(ClipNorm(1.0, scope='global'), Scheduler(...))"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.schedules)
        return f"Scheduler({_name(self.constructor)}, {args})"

    def rule_at(self, t: int) -> Rule:
        """The inner rule used at iteration ``t`` (with every schedule evaluated at ``t``).

        Example:
            >>> import fluxtrain as ft
            >>> ft.Scheduler(ft.Momentum, eta=ft.Exp(0.1, 0.5), rho=0.8).rule_at(2)
            Momentum(eta=0.05, rho=0.8)
        """
        cache: dict[int, Rule] | None = self.__dict__.get("_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_cache", cache)
        rule = cache.get(t)
        if rule is None:
            values = {k: _value_at(v, t) for k, v in self.schedules}
            rule = self.constructor(**values)
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[t] = rule
        return rule

    def inner_rules(self) -> tuple[Rule, ...]:
        """The rule this Scheduler builds (at ``t = 1``), for engine checks such as ClipNorm's
        ``throw`` that look inside wrapping rules."""
        return (self.rule_at(1),)

    def init(self, x: Any) -> tuple[int, Any]:
        return (1, self.rule_at(1).init(x))

    def apply(self, state: Any, x: Any, dx: Any) -> tuple[Any, Any]:
        t, inner = state
        new_inner, update = self.rule_at(t).apply(inner, x, dx)
        return (t + 1, new_inner), update

    def hyperparameters(self) -> dict[str, Any]:
        return {"constructor": self.constructor, "schedules": self.schedules}

    def _adjust(self, changes: dict[str, Any]) -> tuple[Rule, set[str]]:
        names, var_kw = _parameter_names(self.constructor)
        current = dict(self.schedules)
        mine = {k: v for k, v in changes.items() if k in names or (var_kw and k in current)}
        if not mine:
            return self, set()
        fixed = getattr(self.constructor, "_fixed", ())
        for k in mine:
            if k in fixed:
                raise ValueError(
                    f"adjust cannot change {_name(self.constructor)}.{k}: it changes the shape "
                    f"of the stored state; make a new rule and call setup again"
                )
        new = {**current, **mine}
        return Scheduler(self.constructor, **new), set(mine)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: the rule class by name and each field's schedule or value.

        Example:
            >>> import fluxtrain as ft
            >>> ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5)).to_dict()
            {'type': 'Scheduler', 'constructor': 'Descent', 'schedules': {'eta': {'type': 'Exp', 'start': 0.1, 'decay': 0.5}}}
        """
        from ..schedules._base import _encode

        if getattr(_rules, _name(self.constructor), None) is not self.constructor:
            raise TypeError(
                f"Scheduler.to_dict: {self.constructor!r} is not a fluxtrain rule class, so it "
                f"cannot be written as JSON"
            )
        return {
            "type": "Scheduler",
            "constructor": _name(self.constructor),
            "schedules": {k: _encode(v, f"Scheduler.{k}") for k, v in self.schedules},
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Scheduler:
        """Rebuild a Scheduler from [`to_dict`][fluxtrain.optimisers.scheduler.Scheduler.to_dict]'s output."""
        from ..schedules._base import _decode

        cls: Callable[..., Rule] | None = getattr(_rules, d["constructor"], None)
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise ValueError(f"unknown rule class {d['constructor']!r}")
        return Scheduler(cls, **{k: _decode(v) for k, v in d["schedules"].items()})
