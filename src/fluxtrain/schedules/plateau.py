"""``ReduceLROnPlateau``: cut a hyperparameter when a monitored metric stops improving.

Not part of ParameterSchedulers.jl; the rule and its knobs are those of PyTorch's
``torch.optim.lr_scheduler.ReduceLROnPlateau`` (same ``mode``, ``threshold_mode``, ``patience``,
``cooldown``, ``eps`` semantics), driven by values you pass in rather than by an optimiser.
"""

from __future__ import annotations

import math
from typing import Any

from ..optimisers.rules import OptimiserChain, Rule
from ..optimisers.state import adjust_, leaves
from ._base import check_count, check_real

__all__ = ["ReduceLROnPlateau"]


def _rule_value(rule: Rule, field: str) -> Any:
    if isinstance(rule, OptimiserChain):
        for r in rule.opts:
            v = _rule_value(r, field)
            if v is not None:
                return v
        return None
    if hasattr(rule, "rule_at") and hasattr(rule, "schedules"):  # a Scheduler: fixed fields only
        v = dict(rule.schedules).get(field)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return rule.hyperparameters().get(field)


class ReduceLROnPlateau:
    """Multiply a value (the learning rate ``eta`` by default) by ``factor`` once a metric has
    not improved for more than ``patience`` consecutive calls of [`step`][fluxtrain.schedules.ReduceLROnPlateau.step].

    Each ``step(metric)``: the metric *improves* if, for ``mode="min"``, it is below
    ``best * (1 - threshold)`` (``threshold_mode="rel"``) or ``best - threshold``
    (``threshold_mode="abs"``); for ``mode="max"`` above ``best * (1 + threshold)`` or
    ``best + threshold``.  An improvement resets the count of bad steps; otherwise it grows by
    one.  During ``cooldown`` steps after a reduction bad steps are not counted.  When the
    count exceeds ``patience``, ``value = max(value * factor, min_value)`` (skipped if that
    changes it by no more than ``eps``) and cooldown starts.  A NaN metric never improves.

    With ``opt_state`` (a tree from ``ft.setup``, or any subtree) every change is applied with
    ``ft.adjust_(opt_state, **{field: value})``, so all rules below it get the same value (use
    one ``ReduceLROnPlateau`` per subtree for different rates).  The starting value is then
    read from the state unless given (a given one is applied at once).  ``ft.reset_(plateau)``
    restores the starting value and counters.

    Example:
        >>> import torch, fluxtrain as ft
        >>> opt_state = ft.setup(ft.Descent(0.1), torch.zeros(3))
        >>> plateau = ft.ReduceLROnPlateau(opt_state=opt_state, patience=1, factor=0.5)
        >>> [plateau.step(loss) for loss in [1.0, 0.9, 0.95, 0.95, 0.95]]
        [0.1, 0.1, 0.1, 0.05, 0.05]
        >>> opt_state.rule.eta
        0.05
    """

    def __init__(
        self,
        value: float | None = None,
        *,
        opt_state: Any = None,
        field: str = "eta",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_value: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        name = "ReduceLROnPlateau"
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"{name}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}"
            )
        for k, v in (("factor", factor), ("threshold", threshold), ("min_value", min_value),
                     ("eps", eps)):  # fmt: skip
            check_real(name, k, v)
        if not 0 <= factor < 1:
            raise ValueError(f"{name}: factor must be in [0, 1) to reduce the value, got {factor}")
        check_count(name, "patience", patience, minimum=0)
        check_count(name, "cooldown", cooldown, minimum=0)
        if opt_state is not None and not list(leaves(opt_state)):
            raise ValueError(f"{name}: opt_state has no Leaf (trainable parameter) to adjust")
        explicit = value is not None
        if value is None:
            if opt_state is None:
                raise TypeError(f"{name} needs a starting value or an opt_state to read it from")
            found = [_rule_value(leaf.rule, field) for leaf in leaves(opt_state)]
            found = [v for v in found if v is not None]
            if not found:
                raise ValueError(
                    f"{name}: no rule in opt_state has a hyperparameter {field!r}; give the "
                    f"starting value explicitly"
                )
            value = found[0]
        check_real(name, "value", value)
        self.field = field
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.min_value = float(min_value)
        self.eps = float(eps)
        self.opt_state = opt_state
        self.initial = float(value)
        self._reset_(apply=explicit)

    def __repr__(self) -> str:
        return (
            f"ReduceLROnPlateau(value={self.value}, field={self.field!r}, mode={self.mode!r}, "
            f"factor={self.factor}, patience={self.patience}, threshold={self.threshold}, "
            f"threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown}, "
            f"min_value={self.min_value})"
        )

    def _reset_(self, apply: bool = True) -> None:
        """Back to the starting value with fresh counters (called by ``ft.reset_``)."""
        self.value = self.initial
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        self.nsteps = 0
        if apply:
            self._apply()

    def _apply(self) -> None:
        if self.opt_state is not None:
            adjust_(self.opt_state, **{self.field: self.value})

    def _improves(self, metric: float) -> bool:
        best, th = self.best, self.threshold
        if self.mode == "min":
            bound = best * (1 - th) if self.threshold_mode == "rel" else best - th
            return metric < bound
        bound = best * (1 + th) if self.threshold_mode == "rel" else best + th
        return metric > bound

    def step(self, metric: float) -> float:
        """Record one value of the monitored metric; return the (possibly reduced) value."""
        if isinstance(metric, (bool, str)):
            raise TypeError(f"ReduceLROnPlateau.step needs a number, got {metric!r}")
        try:
            m = float(metric)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"ReduceLROnPlateau.step needs a number (e.g. the validation loss), got {metric!r}"
            ) from None
        self.nsteps += 1
        if self._improves(m):
            self.best = m
            self.num_bad_steps = 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0
        if self.num_bad_steps > self.patience:
            new = max(self.value * self.factor, self.min_value)
            if self.value - new > self.eps:
                self.value = new
                self._apply()
            self.cooldown_counter = self.cooldown
            self.num_bad_steps = 0
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The changing part (value, best, counters) as plain numbers, for checkpoints."""
        return {
            "value": self.value,
            "best": self.best,
            "num_bad_steps": self.num_bad_steps,
            "cooldown_counter": self.cooldown_counter,
            "nsteps": self.nsteps,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what [`state_dict`][fluxtrain.schedules.ReduceLROnPlateau.state_dict] returned (and apply the value to ``opt_state``)."""
        self.value = float(d["value"])
        self.best = float(d["best"])
        self.num_bad_steps = int(d["num_bad_steps"])
        self.cooldown_counter = int(d["cooldown_counter"])
        self.nsteps = int(d["nsteps"])
        self._apply()
