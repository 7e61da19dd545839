"""Optimisation rules: the maths of Optimisers.jl v0.4, one small class per rule.

Each rule is its hyperparameters (a frozen dataclass), an ``init(x)`` that makes its state for a
parameter ``x``, and an ``apply(state, x, dx)`` returning ``(new_state, update)``; the caller then
does ``x -= update``.  ``apply`` updates state tensors in place, never touches ``dx`` or ``x``, and
works on any tensor shape, so the engine can hand it one parameter or a whole flat buffer of many.
An ``update`` of ``None`` means "do not change ``x`` this step" (AccumGrad).

Formulas follow ``FluxML/Optimisers.jl`` ``src/rules.jl`` (v0.4): the same field names, defaults,
epsilon placement and initial fills.  Its ``lambda`` field is ``lambd`` here.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import numbers
from typing import Any, ClassVar

import torch

__all__ = [
    "AMSGrad",
    "AccumGrad",
    "AdaBelief",
    "AdaDelta",
    "AdaGrad",
    "AdaMax",
    "Adam",
    "AdamW",
    "ClipGrad",
    "ClipNorm",
    "Descent",
    "Lion",
    "Momentum",
    "NAdam",
    "Nesterov",
    "OAdam",
    "OptimiserChain",
    "RAdam",
    "RMSProp",
    "Rprop",
    "Rule",
    "SignDecay",
    "WeightDecay",
]

# While the engine applies a rule to a flat buffer holding several parameters, this holds their
# sizes (in order), so that per-array rules (ClipNorm) can act on each parameter separately.
segments: contextvars.ContextVar[tuple[int, ...] | None] = contextvars.ContextVar(
    "fluxtrain_segments", default=None
)

_F16_EPS_FLOOR = float(torch.tensor(1e-7, dtype=torch.float16))


def _eps(x: torch.Tensor, e: float) -> float:
    """Epsilon for ``x``'s dtype; Float16 gets a floor so that tiny epsilons do not round to 0.

    Optimisers.jl ``_eps``: ``e == 0 ? 0 : max(Float16(1e-7), Float16(e))`` for Float16.
    """
    if x.dtype == torch.float16 and e != 0:
        return max(_F16_EPS_FLOOR, float(torch.tensor(e, dtype=torch.float16)))
    return e


def _is_number(a: Any) -> bool:
    return not isinstance(a, torch.Tensor)


# The maths below is written once and runs two ways: eagerly with hyperparameters as Python
# numbers, and compiled by the engine (fluxtrain.optimisers.compiled) with hyperparameters and
# counters as 0-d tensors, so that adjust_ and schedules never recompile.  These helpers take
# either: torch's ``alpha=``/``value=`` arguments accept only numbers.


def _add_(y: torch.Tensor, x: torch.Tensor, a: Any) -> torch.Tensor:
    """``y += a * x`` in place."""
    return y.add_(x, alpha=a) if _is_number(a) else y.add_(x * a)


def _plus(y: torch.Tensor, x: torch.Tensor, a: Any) -> torch.Tensor:
    """``y + a * x`` as a new tensor."""
    return torch.add(y, x, alpha=a) if _is_number(a) else y + x * a


def _add_abs2_(y: torch.Tensor, x: torch.Tensor, a: Any) -> torch.Tensor:
    """``y += a * |x|^2`` in place: Optimisers.jl's ``abs2``, real for a complex ``x``."""
    xc = x.conj() if x.is_complex() else x
    return y.addcmul_(x, xc, value=a) if _is_number(a) else y.add_(x * xc * a)


def whole(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor (e.g. the norm of a sharded gradient, which is partial on each
    rank) is reduced over the ranks with ``full_tensor()``, so that rules and checks see the
    whole array's value, never a local shard's."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Rule:
    """Base class of optimisation rules.

    Subclasses are frozen dataclasses whose fields are the hyperparameters; they implement
    ``init(x)`` and ``apply(state, x, dx)``.  Rules are immutable: ``ft.adjust`` makes a new one.
    """

    # Fields that must be >= 0; pairs of reals; bools.
    _positive: ClassVar[tuple[str, ...]] = ()
    _pairs: ClassVar[tuple[str, ...]] = ()
    _flags: ClassVar[tuple[str, ...]] = ()
    _fixed: ClassVar[tuple[str, ...]] = ()  # fields that adjust may not change
    _choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # string-valued fields
    # Rules whose maths compares or orders values (max, clamp, sign agreement) have no meaning
    # for complex numbers, as in Optimisers.jl where they raise: setup refuses complex leaves.
    _real_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            name = f"{type(self).__name__}.{f.name}"
            if f.name in self._choices:
                if v not in self._choices[f.name]:
                    raise ValueError(f"{name} must be one of {self._choices[f.name]}, got {v!r}")
            elif f.name in self._flags:
                if not isinstance(v, bool):
                    raise TypeError(f"{name} must be a bool, got {v!r}")
            elif f.name in self._pairs:
                if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_real, v))):
                    raise TypeError(f"{name} must be a pair of real numbers, got {v!r}")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))
            elif isinstance(v, Rule) or f.name in ("n", "opts"):
                continue
            else:
                if not _is_real(v):
                    raise TypeError(f"{name} must be a real number, got {v!r}")
                if math.isnan(v):
                    raise ValueError(f"{name} must not be NaN")
                object.__setattr__(self, f.name, float(v))
        for fname in self._positive:
            if getattr(self, fname) < 0:
                what = "the learning rate" if fname == "eta" else fname
                raise ValueError(
                    f"{type(self).__name__}: {what} cannot be negative, got {getattr(self, fname)}"
                )

    # -- the two methods every rule implements ----------------------------------------------
    def init(self, x: torch.Tensor) -> Any:
        """The state this rule keeps for parameter ``x`` (``None`` if it keeps none)."""
        return None

    def apply(self, state: Any, x: torch.Tensor, dx: torch.Tensor) -> tuple[Any, Any]:
        """``(new_state, update)``; the parameter then changes by ``x -= update``."""
        raise NotImplementedError

    # -- adjust --------------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """The rule's hyperparameters as a dict (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _adjust(self, changes: dict[str, Any]) -> tuple[Rule, set[str]]:
        """A copy with those of ``changes`` that are this rule's fields; and which were used."""
        mine = {k: v for k, v in changes.items() if k in self.hyperparameters()}
        for k in mine:
            if k in self._fixed:
                raise ValueError(
                    f"adjust cannot change {type(self).__name__}.{k}: it changes the shape of "
                    f"the stored state; make a new rule and call setup again"
                )
        if not mine:
            return self, set()
        return dataclasses.replace(self, **mine), set(mine)


def _rule(cls: type) -> type:
    """Make a rule class a frozen dataclass (hashable, so equal rules can share one group)."""
    return dataclasses.dataclass(frozen=True, repr=True, eq=True)(cls)


@_rule
class Descent(Rule):
    """Plain gradient descent: ``x -= eta * dx``.

    Example:
        >>> Descent(0.1)
        Descent(eta=0.1)
    """

    eta: float = 0.1
    _positive = ("eta",)

    def apply(self, state, x, dx):
        return state, dx * self.eta


@_rule
class Momentum(Rule):
    """Gradient descent with momentum: ``v = rho*v + eta*dx; x -= v``.

    Example:
        >>> Momentum(0.01, 0.9)
        Momentum(eta=0.01, rho=0.9)
    """

    eta: float = 0.01
    rho: float = 0.9
    _positive = ("eta",)

    def init(self, x):
        return torch.zeros_like(x)

    def apply(self, mvel, x, dx):
        _add_(mvel.mul_(self.rho), dx, self.eta)
        return mvel, mvel


@_rule
class Nesterov(Rule):
    """Nesterov momentum: ``update = -rho^2 v + (1+rho) eta dx``, then ``v = rho v - eta dx``.

    Example:
        >>> Nesterov()
        Nesterov(eta=0.001, rho=0.9)
    """

    eta: float = 0.001
    rho: float = 0.9
    _positive = ("eta",)

    def init(self, x):
        return torch.zeros_like(x)

    def apply(self, vel, x, dx):
        rho, eta = self.rho, self.eta
        update = _add_(torch.mul(vel, -rho * rho), dx, (1 + rho) * eta)
        _add_(vel.mul_(rho), dx, -eta)
        return vel, update


@_rule
class RMSProp(Rule):
    """RMSProp (Hinton's lecture 6e); ``centred=True`` for Graves (2013)'s centred variant.

    ``quad = rho quad + (1-rho) dx^2``; ``update = eta dx / (sqrt(quad - lin^2) + epsilon)``
    where ``lin`` (centred only) is the running mean of ``dx``.

    Example:
        >>> RMSProp(0.01, centred=True)
        RMSProp(eta=0.01, rho=0.9, epsilon=1e-08, centred=True)
    """

    eta: float = 0.001
    rho: float = 0.9
    epsilon: float = 1e-8
    centred: bool = False
    _positive = ("eta",)
    _flags = ("centred",)
    _fixed = ("centred",)

    def init(self, x):
        return (torch.zeros_like(x), torch.zeros_like(x) if self.centred else None)

    def apply(self, state, x, dx):
        quad, lin = state
        rho = self.rho
        _add_abs2_(quad.mul_(rho), dx, 1 - rho)
        if self.centred:
            _add_(lin.mul_(rho), dx, 1 - rho)
            denom = _add_abs2_(quad.clone(), lin, -1).sqrt_()
        else:
            denom = quad.sqrt()
        denom.add_(_eps(x, self.epsilon))
        return (quad, lin), torch.div(dx, denom, out=denom).mul_(self.eta)


@_rule
class Rprop(Rule):
    """Rprop (Riedmiller & Braun, 1993): per-element step sizes driven by the gradient's sign.

    Step ``eta_i`` grows by ``ell[1]`` (up to ``gamma[1]``) while the sign of ``dx_i`` is kept,
    shrinks by ``ell[0]`` (down to ``gamma[0]``) when it flips; ``update = eta_i * sign(g_i)``.

    Example:
        >>> Rprop()
        Rprop(eta=0.001, ell=(0.5, 1.2), gamma=(1e-06, 50.0))
    """

    eta: float = 1e-3
    ell: tuple = (0.5, 1.2)
    gamma: tuple = (1e-6, 50.0)
    _positive = ("eta",)
    _pairs = ("ell", "gamma")

    _real_only = True

    def init(self, x):
        return (torch.zeros_like(x), torch.full_like(x, self.eta))

    def apply(self, state, x, dx):
        g, step = state
        (lo, hi), (gmin, gmax) = self.ell, self.gamma
        agree = g * dx
        grown = torch.clamp(step * hi, max=gmax)
        shrunk = torch.clamp(step * lo, min=gmin)
        step.copy_(torch.where(agree > 0, grown, torch.where(agree < 0, shrunk, step)))
        g.copy_(torch.where(agree < 0, torch.zeros_like(dx), dx))
        return (g, step), step * torch.sign(g)


class _AdamFamily(Rule):
    """Shared state layout of the Adam relatives: ``(m, v, (beta1^t, beta2^t))``."""

    _positive = ("eta",)
    _pairs = ("beta",)

    def init(self, x):
        return (torch.zeros_like(x), torch.zeros_like(x), tuple(self.beta))


@_rule
class Adam(_AdamFamily):
    """Adam (Kingma & Ba, 2014).

    ``m = b1 m + (1-b1) dx``; ``v = b2 v + (1-b2) dx^2``;
    ``update = eta * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + epsilon)``.

    Example:
        >>> Adam(0.01)
        Adam(eta=0.01, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def apply(self, state, x, dx):
        mt, vt, (b1t, b2t) = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        denom = torch.div(vt, 1 - b2t).sqrt_().add_(_eps(x, self.epsilon))
        update = torch.div(mt, denom, out=denom).mul_(self.eta / (1 - b1t))
        return (mt, vt, (b1t * b1, b2t * b2)), update


@_rule
class Lion(Rule):
    """Lion (Chen et al., 2023), in Optimisers.jl's form.

    ``m = b2 dx + (1-b2) m``; ``update = eta * sign((b2-b1) dx + b1 m)``.  (Optimisers.jl weighs
    the stored momentum this way round; we keep its formula so results match it.)

    Example:
        >>> Lion()
        Lion(eta=0.001, beta=(0.9, 0.999))
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    _positive = ("eta",)
    _pairs = ("beta",)

    def init(self, x):
        return torch.zeros_like(x)

    def apply(self, mt, x, dx):
        b1, b2 = self.beta
        _add_(mt.mul_(1 - b2), dx, b2)
        update = _add_(torch.mul(dx, b2 - b1), mt, b1).sgn_().mul_(self.eta)
        return mt, update


@_rule
class RAdam(Rule):
    """Rectified Adam (Liu et al., 2019): Adam whose adaptive step is used only once the
    variance estimate is tractable (``rho_t > 4``), before that plain momentum.

    Example:
        >>> RAdam()
        RAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8
    _positive = ("eta",)
    _pairs = ("beta",)

    def init(self, x):
        return (torch.zeros_like(x), torch.zeros_like(x), tuple(self.beta), 1)

    def apply(self, state, x, dx):
        mt, vt, (b1t, b2t), t = state
        b1, b2 = self.beta
        rho_inf = 2 / (1 - b2) - 1
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        rho = rho_inf - 2 * t * b2t / (1 - b2t)
        if rho > 4:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            denom = torch.div(vt, 1 - b2t).sqrt_().add_(_eps(x, self.epsilon))
            update = torch.div(mt, denom, out=denom).mul_(self.eta * r / (1 - b1t))
        else:
            update = mt * (self.eta / (1 - b1t))
        return (mt, vt, (b1t * b1, b2t * b2), t + 1), update


@_rule
class AdaMax(_AdamFamily):
    """AdaMax (Kingma & Ba, 2014): Adam with the infinity norm.

    ``u = max(b2 u, |dx|)``; ``update = eta/(1-b1^t) * m/(u + epsilon)``.

    Example:
        >>> AdaMax()
        AdaMax(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    _real_only = True

    def apply(self, state, x, dx):
        mt, ut, (b1t, b2t) = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        torch.maximum(ut.mul_(b2), dx.abs(), out=ut)
        update = torch.div(mt, ut + _eps(x, self.epsilon)).mul_(self.eta / (1 - b1t))
        return (mt, ut, (b1t * b1, b2t * b2)), update


@_rule
class OAdam(Rule):
    """Optimistic Adam (Daskalakis et al., 2017), for adversarial training.

    ``term = eta m/(1-b1^t) / (sqrt(v/(1-b2^t)) + epsilon)``; ``update = 2 term - previous term``.

    Example:
        >>> OAdam()
        OAdam(eta=0.001, beta=(0.5, 0.9), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.5, 0.9)
    epsilon: float = 1e-8
    _positive = ("eta",)
    _pairs = ("beta",)

    def init(self, x):
        return (torch.zeros_like(x), torch.zeros_like(x), tuple(self.beta), torch.zeros_like(x))

    def apply(self, state, x, dx):
        mt, vt, (b1t, b2t), term = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        update = torch.mul(term, -1)
        denom = torch.div(vt, 1 - b2t).sqrt_().add_(_eps(x, self.epsilon))
        torch.div(mt, denom, out=term).mul_(self.eta / (1 - b1t))
        update.add_(term, alpha=2)
        return (mt, vt, (b1t * b1, b2t * b2), term), update


@_rule
class AdaGrad(Rule):
    """AdaGrad (Duchi et al., 2011): ``acc += dx^2``; ``update = eta dx / (sqrt(acc) + eps)``.

    The accumulator starts filled with ``epsilon`` (as in Optimisers.jl).

    Example:
        >>> AdaGrad()
        AdaGrad(eta=0.1, epsilon=1e-08)
    """

    eta: float = 0.1
    epsilon: float = 1e-8
    _positive = ("eta",)

    def init(self, x):
        return torch.full_like(x, self.epsilon)

    def apply(self, acc, x, dx):
        _add_abs2_(acc, dx, 1)
        denom = acc.sqrt().add_(_eps(x, self.epsilon))
        return acc, torch.div(dx, denom, out=denom).mul_(self.eta)


@_rule
class AdaDelta(Rule):
    """AdaDelta (Zeiler, 2012): no learning rate; step scaled by RMS of past updates.

    ``acc = rho acc + (1-rho) dx^2``; ``update = dx sqrt(dacc + eps) / sqrt(acc + eps)``;
    ``dacc = rho dacc + (1-rho) update^2``.

    Example:
        >>> AdaDelta()
        AdaDelta(rho=0.9, epsilon=1e-08)
    """

    rho: float = 0.9
    epsilon: float = 1e-8

    def init(self, x):
        return (torch.zeros_like(x), torch.zeros_like(x))

    def apply(self, state, x, dx):
        acc, dacc = state
        rho, eps = self.rho, _eps(x, self.epsilon)
        _add_abs2_(acc.mul_(rho), dx, 1 - rho)
        # epsilon stays inside both square roots, as in Optimisers.jl
        update = torch.add(dacc, eps).sqrt_().mul_(dx).div_(torch.add(acc, eps).sqrt_())
        _add_abs2_(dacc.mul_(rho), update, 1 - rho)
        return (acc, dacc), update


@_rule
class AMSGrad(Rule):
    """AMSGrad (Reddi et al., 2018): Adam with the running maximum of ``v``, no bias correction.

    All three state arrays start filled with ``epsilon`` (as in Optimisers.jl).

    Example:
        >>> AMSGrad()
        AMSGrad(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8
    _positive = ("eta",)
    _pairs = ("beta",)

    _real_only = True

    def init(self, x):
        e = self.epsilon
        return (torch.full_like(x, e), torch.full_like(x, e), torch.full_like(x, e))

    def apply(self, state, x, dx):
        mt, vt, vhat = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        torch.maximum(vhat, vt, out=vhat)
        update = torch.div(mt, vhat.sqrt().add_(_eps(x, self.epsilon))).mul_(self.eta)
        return (mt, vt, vhat), update


@_rule
class NAdam(_AdamFamily):
    """NAdam (Dozat, 2016): Adam with Nesterov momentum.

    ``update = eta (b1 m/(1 - b1 b1^t) + (1-b1) dx/(1-b1^t)) / (sqrt(v b2/(1-b2^t)) + eps)``.

    Example:
        >>> NAdam()
        NAdam(eta=0.001, beta=(0.9, 0.999), epsilon=1e-08)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-8

    def apply(self, state, x, dx):
        mt, vt, (b1t, b2t) = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        num = _add_(torch.mul(mt, b1 / (1 - b1 * b1t)), dx, (1 - b1) / (1 - b1t))
        denom = torch.mul(vt, b2 / (1 - b2t)).sqrt_().add_(_eps(x, self.epsilon))
        return (mt, vt, (b1t * b1, b2t * b2)), num.div_(denom).mul_(self.eta)


@_rule
class AdamW(_AdamFamily):
    """AdamW (Loshchilov & Hutter, 2017): Adam with weight decay ``lambd``.

    With ``couple=True`` (default, as torch.optim.AdamW): ``update = eta (adam + lambd x)``;
    with ``couple=False``: ``update = eta adam + lambd x``, where ``adam`` is Adam's step at rate 1.

    Example:
        >>> AdamW(0.01, lambd=0.1)
        AdamW(eta=0.01, beta=(0.9, 0.999), lambd=0.1, epsilon=1e-08, couple=True)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    lambd: float = 0.0
    epsilon: float = 1e-8
    couple: bool = True
    _flags = ("couple",)

    def apply(self, state, x, dx):
        mt, vt, (b1t, b2t) = state
        b1, b2 = self.beta
        _add_(mt.mul_(b1), dx, 1 - b1)
        _add_abs2_(vt.mul_(b2), dx, 1 - b2)
        # Optimisers.jl uses T(epsilon) here, without the Float16 floor.
        denom = torch.div(vt, 1 - b2t).sqrt_().add_(self.epsilon)
        update = torch.div(mt, denom, out=denom).div_(1 - b1t)
        if self.couple:
            _add_(update, x, self.lambd).mul_(self.eta)
        else:
            _add_(update.mul_(self.eta), x, self.lambd)
        return (mt, vt, (b1t * b1, b2t * b2)), update


@_rule
class AdaBelief(_AdamFamily):
    """AdaBelief (Zhuang et al., 2020): Adam with the variance of ``dx`` around its mean.

    ``s = b2 s + (1-b2)(dx - m)^2 + eps``; ``update = eta m/(1-b1^t) / (sqrt(s/(1-b2^t)) + eps)``.

    Example:
        >>> AdaBelief()
        AdaBelief(eta=0.001, beta=(0.9, 0.999), epsilon=1e-16)
    """

    eta: float = 0.001
    beta: tuple = (0.9, 0.999)
    epsilon: float = 1e-16

    def apply(self, state, x, dx):
        mt, st, (b1t, b2t) = state
        b1, b2 = self.beta
        eps = _eps(x, self.epsilon)
        _add_(mt.mul_(b1), dx, 1 - b1)
        centred = dx - mt
        _add_abs2_(st.mul_(b2), centred, 1 - b2).add_(eps)
        denom = torch.div(st, 1 - b2t).sqrt_().add_(eps)
        update = torch.div(mt, denom, out=denom).mul_(self.eta / (1 - b1t))
        return (mt, st, (b1t * b1, b2t * b2)), update


@_rule
class WeightDecay(Rule):
    """L2 regularisation as a gradient transformation: ``dx + lambd x``.

    Equivalent to adding ``lambd/2 * sum(x^2)`` to the loss; put it first in an
    [`OptimiserChain`][fluxtrain.optimisers.rules.OptimiserChain].

    Example:
        >>> WeightDecay(0.42)
        WeightDecay(lambd=0.42)
    """

    lambd: float = 5e-4

    def apply(self, state, x, dx):
        return state, _plus(dx, x, self.lambd)


@_rule
class SignDecay(Rule):
    """L1 regularisation as a gradient transformation: ``dx + lambd sign(x)``.

    Example:
        >>> SignDecay(0.42)
        SignDecay(lambd=0.42)
    """

    lambd: float = 1e-3

    def apply(self, state, x, dx):
        return state, _plus(dx, torch.sgn(x), self.lambd)


@_rule
class ClipGrad(Rule):
    """Clamp every gradient component to ``[-delta, delta]``.

    Example:
        >>> ClipGrad(1.0)
        ClipGrad(delta=1.0)
    """

    delta: float = 10.0
    _positive = ("delta",)

    _real_only = True

    def apply(self, state, x, dx):
        return state, torch.clamp(dx, -self.delta, self.delta)


class NonFiniteGradientError(ArithmeticError):
    """A gradient (or its norm) was infinite or NaN where that must stop the update.

    ``path`` names the parameter when it is known.
    """

    def __init__(self, msg: str = "", path: Any = None) -> None:
        super().__init__(msg)
        self.path = path


@_rule
class ClipNorm(Rule):
    """Rescale the gradient so that its ``p``-norm is at most ``omega``.

    ``scope="array"`` (Optimisers.jl's behaviour, the default) takes the norm of each parameter
    array separately.  ``scope="global"`` takes one norm over every parameter updated with this
    rule in the same ``update_`` call (torch's ``clip_grad_norm_``); a global ClipNorm must be the
    rule itself or the first rule of an [`OptimiserChain`][fluxtrain.optimisers.rules.OptimiserChain].  With ``throw=True`` a non-finite
    norm raises [`NonFiniteGradientError`][fluxtrain.optimisers.rules.NonFiniteGradientError] before anything is updated; with ``throw=False``
    an infinite norm scales the array by 0 and a NaN norm makes it NaN (Optimisers.jl's
    ``min(omega / norm, 1)``).

    Example:
        >>> ClipNorm(1.0, scope="global")
        ClipNorm(omega=1.0, p=2.0, throw=True, scope='global')
    """

    omega: float = 10.0
    p: float = 2.0
    throw: bool = True
    scope: str = "array"
    _positive = ("omega",)
    _flags = ("throw",)
    _fixed = ("scope",)
    _choices = {"scope": ("array", "global")}

    def norm(self, dx: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(dx, ord=self.p)

    def factor(self, nrm: float, where: str) -> float:
        if self.throw and not math.isfinite(nrm):
            raise NonFiniteGradientError(f"gradient has {self.p:g}-norm {nrm}, for {where}")
        if nrm == 0:
            return 1.0
        # A NaN norm gives a NaN factor (min(omega/NaN, 1) is NaN, as in Optimisers.jl and
        # torch's clip_grad_norm_), the same as the engine's per-parameter path over flat buffers.
        return min(self.omega / nrm, 1.0)

    def apply(self, state, x, dx):
        if self.scope == "global":
            # The engine scales every gradient by the global factor before the rules run.
            return state, dx
        sizes = segments.get()
        if sizes is None or len(sizes) == 1:
            lam = self.factor(float(whole(self.norm(dx))), f"array of shape {tuple(x.shape)}")
            return state, dx * lam
        # A flat buffer of several parameters: one norm per parameter, all at once.
        parts = dx.split(list(sizes))
        if self.p in (1.0, 2.0, math.inf):
            norms = torch.stack(torch._foreach_norm(parts, self.p))
        else:
            norms = torch.stack([self.norm(part) for part in parts])
        if self.throw and not bool(torch.isfinite(norms).all()):
            bad = int((~torch.isfinite(norms)).nonzero()[0])
            err = NonFiniteGradientError(
                f"{self.p:g}-norm {float(norms[bad])} (ClipNorm with throw=True)"
            )
            err.index = bad  # which array of the flat buffer: the engine names its path
            raise err
        lam = torch.where(norms == 0, torch.ones_like(norms), (self.omega / norms).clamp(max=1))
        scale = torch.repeat_interleave(lam.to(dx.dtype), torch.tensor(sizes, device=dx.device))
        return state, dx * scale


@_rule
class OptimiserChain(Rule):
    """Apply several rules in sequence, each transforming the update of the one before.

    ``OptimiserChain()`` is the identity (the full gradient is subtracted).  If a rule returns
    ``None`` (AccumGrad between steps) the rest of the chain is skipped with its state unchanged.

    Example:
        >>> OptimiserChain(WeightDecay(0.42), Adam(0.1))
        OptimiserChain(WeightDecay(lambd=0.42), Adam(eta=0.1, beta=(0.9, 0.999), epsilon=1e-08))
    """

    opts: tuple = ()

    def __init__(self, *opts: Rule, **kw: Any) -> None:
        if "opts" in kw:
            opts = tuple(kw.pop("opts"))
        if kw:
            raise TypeError(f"OptimiserChain takes rules as positional arguments, got {set(kw)}")
        for o in opts:
            if not isinstance(o, Rule):
                raise TypeError(f"OptimiserChain takes rules, got {o!r}")
            if getattr(o, "_outermost", False):
                # Optimisers.jl refuses it too: inside a chain, the master copy and the
                # parameter would be updated by different rules and drift apart.
                raise TypeError(
                    f"{type(o).__name__} cannot go inside an OptimiserChain; wrap the chain "
                    f"instead: {type(o).__name__}(OptimiserChain(...))"
                )
        object.__setattr__(self, "opts", tuple(opts))

    def __repr__(self) -> str:
        return "OptimiserChain(" + ", ".join(repr(o) for o in self.opts) + ")"

    def init(self, x):
        return tuple(o.init(x) for o in self.opts)

    def apply(self, states, x, dx):
        new_states = []
        for i, (opt, st) in enumerate(zip(self.opts, states)):
            if dx is None:
                new_states.extend(states[i:])
                break
            st, dx = opt.apply(st, x, dx)
            new_states.append(st)
        return tuple(new_states), dx

    def _adjust(self, changes):
        used: set[str] = set()
        new = []
        for o in self.opts:
            o2, u = o._adjust(changes)
            new.append(o2)
            used |= u
        return OptimiserChain(*new), used

    def hyperparameters(self) -> dict[str, Any]:
        return {"opts": self.opts}


@_rule
class AccumGrad(Rule):
    """Accumulate ``n`` gradients, then pass their mean on (``None`` in between).

    ``OptimiserChain(AccumGrad(n), rule)`` applies ``rule`` every ``n``-th step to the mean of
    the last ``n`` gradients: a larger effective batch.

    Example:
        >>> AccumGrad(4)
        AccumGrad(n=4)
    """

    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral):
            raise TypeError(f"AccumGrad.n must be an int, got {self.n!r}")
        if self.n < 1:
            raise ValueError("AccumGrad must accumulate at least one gradient (n >= 1)")
        object.__setattr__(self, "n", int(self.n))

    def init(self, x):
        return (torch.zeros_like(x), 1)

    def apply(self, state, x, dx):
        acc, counter = state
        if counter == 1:
            torch.div(dx, self.n, out=acc)
        else:
            acc.add_(dx, alpha=1 / self.n)
        if counter == self.n:
            return (acc, 1), acc
        return (acc, counter + 1), None
