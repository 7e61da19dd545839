"""The update engine: runs each rule's maths (rules.py) over groups of leaves, leaving the
user's tensors where they are.

Design (see docs/engine.md for the measurements behind it):

* **The model stays the user's.**  Parameters are updated in place (``x.sub_(update)`` or a
  fused kernel writing through the parameter's own storage): no parameter is ever re-pointed,
  replaced, reallocated or packed into a buffer of ours, so ``data_ptr()``, ties, ``state_dict``,
  safetensors, accelerate and FSDP2 see exactly the tensors they would after ``torch.optim``.
  The optimiser state is ours: one tensor per leaf and state slot, as ``Leaf.state`` shows.
* A **group** is the set of leaves of one ``update_`` call that share a rule (equal
  hyperparameters), dtype, device and scalar state (step counters, ``beta^t``).  A group is
  updated by exactly one of three kernels, chosen in this order:

  1. PyTorch's fused multi-tensor kernels where their maths is Optimisers.jl's exactly
     (``torch._fused_adam_`` for Adam and coupled AdamW, ``torch._fused_adagrad_``, and
     ``torch._fused_sgd_`` for Momentum), run on the lists of the user's tensors as they are;
  2. the rule's own maths compiled by ``torch.compile`` into one single-pass kernel per call
     (``compiled``), when it is enabled and the group is large enough
     for compiling to pay;
  3. the rule's maths run eagerly once over the whole group: the parameters, gradients and
     state are gathered into flat scratch tensors (one ``torch.cat`` each), ``rule.apply`` runs
     once on them, and the results are copied back with one ``torch._foreach_copy_``.  A group
     of one leaf skips the gathering.

  No path loops in Python over parameters per elementwise operation.  Each kernel is
  prepared as a *runner*: a function of the group's gradients alone, with the parameters,
  state tensors and kernel arguments laid out once.
* **Replays.**  ``step`` returns a ``Replay`` of what it did when every group had a runner
  and nothing needed per-step care (no global or throwing ClipNorm, no sharded leaf, no tie,
  no converted gradient).  ``update_`` keeps it on the state's root and, on the next step,
  runs the runners on the new gradients after a few list comparisons (same rules, states,
  frozen flags, parameter memory and shapes; contiguous gradients of the parameters' dtype),
  skipping the walk, the per-leaf checks and the grouping: on 114 tensors that work cost
  about as much as PyTorch's whole fused SGD step beside it.  Any difference sends the step
  through the full path, which checks everything and records a new Replay.
* Sharded parameters (FSDP2's ``DTensor``; an ``nn.Parameter`` holding one is not "dense"):
  when the rule works element by element (every rule but a per-array ClipNorm, or a user's
  rule, whose maths may need the whole array) and the gradient and state are sharded like the
  parameter, the rule runs on the local shards, grouped with the dense leaves (so fused
  kernels apply); the state's DTensors are updated in place through them.  Otherwise the leaf
  is updated on its own with ``rule.apply`` on the DTensors, whose torch operations DTensor
  implements; a norm is then reduced over the ranks (``full_tensor()``), so a per-array or
  global ClipNorm sees the whole array, never a local shard.  Other tensor subclasses go one
  leaf at a time too.
* **Atomic.**  Every check that can fail (gradient kinds, throwing ClipNorms at the head of a
  chain, global norms) runs before the first parameter changes.  A group whose rule can still
  raise after it started mutating (a throwing ClipNorm after a stateful rule in a chain, or a
  rule fluxtrain does not know) runs first, with a copy of its parameters and state that is
  restored if anything fails; the error names the parameter's path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from ..tree import KeyPath
from . import rules as R
from .rules import ClipNorm, NonFiniteGradientError, OptimiserChain, Rule, segments, whole

__all__ = ["Work", "run", "run_reference", "step"]


@dataclasses.dataclass(slots=True)
class Work:
    """One leaf to update: its Leaf, parameter, gradient(s) (summed if tied) and path."""

    leaf: Any
    x: torch.Tensor
    grads: list[torch.Tensor]
    path: KeyPath
    dx: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# State structures: nested tuples of tensors and scalars


def atoms(state: Any) -> list[Any]:
    """The state's parts in order: tensors, scalars and ``None``s (tuples flattened)."""
    if isinstance(state, tuple):
        out: list[Any] = []
        for s in state:
            out.extend(atoms(s))
        return out
    return [state]


def fill(template: Any, parts: list[Any], pos: list[int] | None = None) -> Any:
    """Inverse of ``atoms``: ``template``'s tuple structure holding ``parts``."""
    pos = [0] if pos is None else pos
    if isinstance(template, tuple):
        return tuple(fill(t, parts, pos) for t in template)
    i = pos[0]
    pos[0] += 1
    return parts[i]


def _scalars(state: Any) -> tuple:
    """The non-tensor parts of a state (counters, ``beta^t``): leaves in one group share them."""
    if isinstance(state, torch.Tensor):
        return ()
    if type(state) is not tuple:
        return (state,)
    out: list[Any] = []
    for s in state:  # written out: this runs for every leaf of every step
        if isinstance(s, tuple):
            out.extend(_scalars(s))
        elif not isinstance(s, torch.Tensor):
            out.append(s)
    return tuple(out)


def rules_in(rule: Rule) -> list[Rule]:
    """``rule`` and every rule inside it (chains, Schedulers, MixedPrecision), in order."""
    if isinstance(rule, OptimiserChain):
        return [r for o in rule.opts for r in rules_in(o)]
    inner = getattr(rule, "inner_rules", None)
    if inner is not None:
        return [rule] + [r for o in inner() for r in rules_in(o)]
    wrapped = getattr(rule, "rule", None)
    if isinstance(wrapped, Rule):
        return [rule, *rules_in(wrapped)]
    return [rule]


def _head(rule: Rule) -> Rule:
    while isinstance(rule, OptimiserChain) and rule.opts:
        rule = rule.opts[0]
    return rule


def _global_clip(rule: Rule) -> ClipNorm | None:
    head = _head(rule)
    if isinstance(head, ClipNorm) and head.scope == "global":
        return head
    return None


def _head_clip(rule: Rule) -> ClipNorm | None:
    """A throwing per-array ClipNorm that sees the raw gradient (checked before any change)."""
    head = _head(rule)
    if isinstance(head, ClipNorm) and head.scope == "array" and head.throw:
        return head
    return None


_KNOWN = tuple(getattr(R, name) for name in R.__all__ if name != "Rule")


def _unknown(r: Rule) -> bool:
    """A rule whose maths fluxtrain cannot vouch for: neither one of rules.py nor a wrapper
    (Scheduler) whose inner rules are listed."""
    return not isinstance(r, _KNOWN) and getattr(r, "inner_rules", None) is None


def _may_raise_midway(rule: Rule) -> bool:
    """True if ``rule`` can raise after it has started changing state or parameters."""
    head = _head_clip(rule)
    for r in rules_in(rule):
        if isinstance(r, ClipNorm) and r.throw and r is not head:
            return True
        if _unknown(r) and type(r).__module__ != "fluxtrain.precision":
            return True  # a user's rule: we cannot know (MixedPrecision only wraps)
    return False


# ---------------------------------------------------------------------------------------------
# Following the parameter


def follow_parameter(w: Work) -> None:
    """Carry the leaf's state over if its parameter changed dtype or device since ``setup``;
    refuse a parameter whose shape changed (its state would not fit), naming it.

    Only state tensors made like the parameter (its dtype at setup) follow its dtype, so a
    float32 master copy kept for a float16 parameter stays float32.
    """
    leaf, x = w.leaf, w.x
    like = leaf._like
    if like is None:
        return
    if like[0] != x.shape and tuple(like[0]) != tuple(x.shape):
        raise ShapeChangedError(
            f"the parameter at {w.path} has shape {tuple(x.shape)} but its optimiser state was "
            f"set up for shape {tuple(like[0])} (was it resized or replaced after setup?); "
            f"make a fresh state with opt_state = ft.setup(rule, model); nothing was updated"
        )
    if like[1] == x.dtype and like[2] == x.device:
        return
    parts = [
        a.to(device=x.device, dtype=x.dtype if a.dtype == like[1] else a.dtype)
        if isinstance(a, torch.Tensor)
        else a
        for a in atoms(leaf.state)
    ]
    leaf.state = fill(leaf.state, parts)
    leaf._like = (x.shape, x.dtype, x.device)


class ShapeChangedError(ValueError):
    """A parameter's shape no longer matches the optimiser state made for it."""


# ---------------------------------------------------------------------------------------------
# Checks before anything changes


def _gradient(w: Work) -> torch.Tensor:
    g = w.grads[0]
    for h in w.grads[1:]:
        g = g + h
    if g.dtype != w.x.dtype or g.device != w.x.device:
        g = g.to(device=w.x.device, dtype=w.x.dtype)
    return g


def _checked_gradient(w: Work) -> torch.Tensor:
    """The leaf's gradient (tied parameters' summed, in the parameter's dtype and device), each
    part checked by ``check_gradient``."""
    x, grads = w.x, w.grads
    g = grads[0]
    if (  # the common case, which every check would pass as it is: said in one expression
        len(grads) == 1
        and g.dtype == x.dtype
        and g.layout == torch.strided
        and x.is_floating_point()
        and ((g.is_cpu and x.is_cpu) or g.device == x.device)
    ):
        return g
    for h in grads:
        check_gradient(w, h)
    return _gradient(w)


def check_gradient(w: Work, g: torch.Tensor) -> None:
    """Refuse gradients that would be silently wrong: sparse, integer/bool, complex for real."""
    if g.layout != torch.strided:
        raise TypeError(
            f"the gradient at {w.path} is a {g.layout} tensor; sparse gradients are not supported "
            f"(e.g. use nn.Embedding(..., sparse=False)); nothing was updated"
        )
    if not (g.is_floating_point() or g.is_complex()):
        raise TypeError(
            f"the gradient at {w.path} has dtype {g.dtype}; gradients must be floating point "
            f"(or complex for a complex parameter); nothing was updated"
        )
    if g.is_complex() and not w.x.is_complex():
        raise TypeError(
            f"the gradient at {w.path} is complex ({g.dtype}) but the parameter is real "
            f"({w.x.dtype}): its imaginary part would be dropped; nothing was updated"
        )


def _norms(dxs: list[torch.Tensor], p: float) -> list[torch.Tensor]:
    if p in (1.0, 2.0, math.inf) and all(type(d) is torch.Tensor for d in dxs):
        return list(torch._foreach_norm(dxs, p))
    return [torch.linalg.vector_norm(d, p) for d in dxs]


def first_nonfinite(named: list[tuple[Any, torch.Tensor]]) -> Any:
    """The name of the first tensor holding an Inf or NaN, or ``None``.

    One multi-tensor pass and one read of its result, however many tensors; only when
    something is not finite is each tensor looked at to name it.
    """
    if not named:
        return None
    tensors = [t.detach() for _, t in named]
    plain = all(type(t) is torch.Tensor for t in tensors)
    if (
        plain
        and len({t.device for t in tensors}) == 1
        and all(t.is_floating_point() and t.is_contiguous() for t in tensors)
    ):
        # PyTorch's fused check for loss scaling (one multi-tensor pass), with a scale of 1:
        # the values it writes back are the values it read, bit for bit.
        found = torch.zeros(1, device=tensors[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(
            tensors, found, torch.ones(1, device=found.device)
        )
        if not bool(found):
            return None  # the common case: one pass, one read of a flag
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).cpu()
    elif plain and len({(t.device, t.dtype) for t in tensors}) == 1:
        peaks = torch.stack(torch._foreach_norm(tensors, math.inf))
        if bool(torch.isfinite(peaks).all()):
            return None
        finite = torch.isfinite(peaks).cpu()
    else:
        norms = [whole(torch.linalg.vector_norm(t, math.inf)) for t in tensors]
        finite = torch.isfinite(torch.stack([n.double().cpu() for n in norms]))
        if bool(finite.all()):
            return None
    return named[int((~finite).nonzero()[0])][0]


def _check_finite(named: list[tuple[Any, torch.Tensor]]) -> None:
    """Refuse a gradient holding an Inf or NaN, naming its path (``named``: path, gradient)."""
    bad = first_nonfinite(named)
    if bad is not None:
        raise NonFiniteGradientError(
            f"gradient at {bad} contains Inf or NaN; nothing was updated", path=bad
        )


def _by_rule_property(items: list[Work], prop: Any) -> dict[Any, list[Work]]:
    """Items grouped by ``prop(rule)`` (skipping ``None``), computed once per rule object."""
    seen: dict[int, Any] = {}
    out: dict[Any, list[Work]] = defaultdict(list)
    for w in items:
        rule = w.leaf.rule
        key = seen.get(id(rule), seen)
        if key is seen:
            key = seen[id(rule)] = prop(rule)
        if key is not None:
            out[key].append(w)
    return out


def _check_head_clips(items: list[Work]) -> bool:
    """Refuse a non-finite norm where a throwing ClipNorm heads the rule; ``True`` if any
    leaf has such a ClipNorm."""
    by_clip = _by_rule_property(items, _head_clip)
    for clip, ws in by_clip.items():
        norms = [whole(n) for n in _norms([w.dx for w in ws], clip.p)]
        finite = torch.isfinite(torch.stack([n.double() for n in norms]))
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            raise NonFiniteGradientError(
                f"gradient at {ws[i].path} has {clip.p:g}-norm {float(norms[i])} and its rule "
                f"has a ClipNorm with throw=True; nothing was updated"
            )
    return bool(by_clip)


def _apply_global_clips(items: list[Work]) -> bool:
    """Scale the gradients of leaves whose rules start with the same global ClipNorm by one
    factor from the norm of all of them (new tensors: the user's gradients never change);
    ``True`` if any leaf has such a ClipNorm."""
    by_clip = _by_rule_property(items, _global_clip)
    factors = []
    for clip, ws in by_clip.items():
        norms = [float(whole(n)) for n in _norms([w.dx for w in ws], clip.p)]
        total = float(torch.linalg.vector_norm(torch.tensor(norms, dtype=torch.float64), clip.p))
        where = f"the arrays clipped together (first at {ws[0].path})"
        factors.append((ws, clip.factor(total, where)))  # raises before anything changed
    for ws, f in factors:
        if f != 1.0:
            for w in ws:
                w.dx = w.dx * f
    return bool(by_clip)


# ---------------------------------------------------------------------------------------------
# Groups


@dataclasses.dataclass
class Group:
    """Leaves of one call updated together: same rule, dtype, device and scalar state."""

    rule: Rule
    items: list[Work]

    @property
    def paths(self) -> list[str]:
        return [str(w.path) for w in self.items]


def _dense(t: torch.Tensor) -> bool:
    """A plain dense tensor (or a Parameter of one).  FSDP2's parameters are Parameters
    holding a ``DTensor``: ``isinstance(p, nn.Parameter)`` is true for them, so the check is on
    the type of the data inside."""
    cls = type(t)
    if cls is torch.Tensor or cls is torch.nn.Parameter:
        return True  # the common case, without making a ``.data`` tensor
    if isinstance(t, torch.nn.Parameter):
        t = t.data
    return type(t) is torch.Tensor


def group(items: list[Work]) -> list[Group]:
    """The items grouped by rule (equal hyperparameters), dtype, device and scalar state;
    an item whose parameter or gradient is not a plain dense tensor is a group of its own."""
    by_rule: dict[int, list[Work]] = defaultdict(list)
    for w in items:  # first by the rule object: cheap, and most leaves share one
        by_rule[id(w.leaf.rule)].append(w)
    equal: dict[Rule, int] = {}  # equal rules held in different objects share their groups
    by_key: dict[tuple, list[Work]] = defaultdict(list)
    for ws in by_rule.values():
        rule = equal.setdefault(ws[0].leaf.rule, id(ws[0].leaf.rule))
        before, scalars = None, ()
        for w in ws:
            x, dx = w.x, w.dx
            kind = "dense" if _dense(x) and _dense(dx) else id(w)
            state = w.leaf.state
            if before is None or not _same_scalar_objects(state, before):
                scalars = _scalars(state)
            before = state
            by_key[(rule, x.dtype, x.device, kind, scalars)].append(w)
    return [Group(ws[0].leaf.rule, ws) for ws in by_key.values()]


def _same_scalar_objects(a: Any, b: Any) -> bool:
    """True if the states ``a`` and ``b`` have one structure and hold the very same objects
    wherever they hold no tensor: then their scalars are equal without comparing them.  After
    a grouped step the leaves of a group share their scalar parts, so this is the common case,
    and far cheaper than collecting the scalars of every leaf."""
    if type(a) is not tuple or type(b) is not tuple or len(a) != len(b):
        return False
    for p, q in zip(a, b):
        if p is not q and not (isinstance(p, torch.Tensor) and isinstance(q, torch.Tensor)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Sharded parameters (FSDP2's DTensor): elementwise rules run on the local shards


class _LocalLeaf:
    """A stand-in for the Leaf of a sharded parameter while its rule runs on local shards: its
    state holds the local tensors of the Leaf's DTensors (the same storage)."""

    __slots__ = ("_kernel_cache", "back", "frozen", "leaf", "rule", "state")

    def __init__(self, leaf: Any, state: Any, back: dict[int, torch.Tensor]) -> None:
        self.leaf, self.rule, self.state, self.frozen, self.back = (
            leaf,
            leaf.rule,
            state,
            False,
            back,
        )
        self._kernel_cache = None


def _elementwise(rule: Rule) -> bool:
    """True if every part of ``rule`` works element by element, so that running it on each
    rank's shard is running it on the whole array (a per-array ClipNorm needs the whole norm,
    a user's rule might too; a global ClipNorm was applied before the rules run)."""
    for r in rules_in(rule):
        if (isinstance(r, ClipNorm) and r.scope == "array") or _unknown(r):
            return False
    return True


def _data(t: torch.Tensor) -> torch.Tensor:
    return t.data if isinstance(t, torch.nn.Parameter) else t


def _localise(w: Work) -> Work | None:
    """``w`` on the local shards of its sharded parameter, gradient and state, when they are
    all DTensors sharded alike and the rule is elementwise; else ``None``."""
    x, dx = _data(w.x), w.dx
    spec = getattr(x, "placements", None), getattr(x, "device_mesh", None)
    if spec[0] is None or not _elementwise(w.leaf.rule):
        return None
    if (getattr(dx, "placements", None), getattr(dx, "device_mesh", None)) != spec:
        return None
    back: dict[int, torch.Tensor] = {}
    parts = []
    for a in atoms(w.leaf.state):
        if isinstance(a, torch.Tensor):
            if (getattr(a, "placements", None), getattr(a, "device_mesh", None)) != spec:
                return None
            local = a.to_local()
            back[id(local)] = a
            a = local
        parts.append(a)
    proxy = _LocalLeaf(w.leaf, fill(w.leaf.state, parts), back)
    return Work(proxy, x.to_local(), [], w.path, dx.to_local())


def _globalise(w: Work, x: torch.Tensor) -> None:
    """Give the Leaf behind ``w`` (an item made by ``_localise``) its new state, whose tensors
    are again its DTensors (updated in place through their local shards)."""
    proxy = w.leaf
    old = atoms(proxy.leaf.state)
    parts = []
    for i, a in enumerate(atoms(proxy.state)):
        if isinstance(a, torch.Tensor):
            dt = proxy.back.get(id(a))
            if dt is None and i < len(old) and id(old[i]) in {id(v) for v in proxy.back.values()}:
                dt = old[i]  # the same slot: a rule returned a new tensor, kept in the old one
                if dt.to_local().shape == a.shape:
                    dt.to_local().copy_(a)
                else:
                    dt = None
            if dt is None:  # a new tensor of another shape: a shard laid out like the parameter
                from torch.distributed.tensor import DTensor

                dt = DTensor.from_local(
                    a, x.device_mesh, x.placements, shape=x.shape, stride=x.stride()
                )
            a = dt
        parts.append(a)
    proxy.leaf.state = fill(proxy.state, parts)


# ---------------------------------------------------------------------------------------------
# Kernels


def _fused_adam_step(rule: Rule, b1t: float, b2t: float) -> int | None:
    """The step number t with beta^t equal to the stored powers, if there is one."""
    b1, b2 = rule.beta
    if not (0 < b1 < 1 and 0 < b2 < 1 and b1t > 0 and b2t > 0):
        return None  # a power that underflowed to 0 (beta <= 0.5 after ~1075 steps) has no t
    t = round(math.log(b1t) / math.log(b1))
    if t < 1 or not (
        math.isclose(b1**t, b1t, rel_tol=1e-9) and math.isclose(b2**t, b2t, rel_tol=1e-9)
    ):
        return None  # beta was adjusted mid-run: the products no longer match a step count
    return t


@functools.lru_cache(maxsize=256)
def _dampening(eta: float, dtype: torch.dtype) -> float | None:
    """The ``dampening`` that makes torch's fused SGD Optimisers.jl's Momentum, if any.

    torch updates its buffer as  buf = momentum * buf + (1 - dampening) * g  and steps
    x -= lr * buf: with dampening = 1 - eta and lr = 1 the buffer is the velocity
    v = rho * v + eta * dx  and the step  x -= v.  That holds only if  1 - (1 - eta)  rounds
    to eta in the parameter's dtype: always in float32 in practice, but not in float64 for
    most decimal rates (0.01 comes back as 0.010000000000000009), and seed 003's example
    must give exactly 3 - pi; those take the rule's own maths.
    """
    d = 1.0 - eta
    back = torch.tensor([1.0 - d, eta], dtype=torch.float64).to(dtype)
    return d if bool(back[0] == back[1]) else None


def _fused_kind(rule: Rule, state: Any, dtype: torch.dtype) -> type | None:
    """The rule's class if one of PyTorch's fused kernels computes it exactly for this state
    and dtype, else ``None``."""
    kind = type(rule)
    if kind is R.Adam or (kind is R.AdamW and rule.couple):
        return kind if _fused_adam_step(rule, *state[2]) is not None else None
    if kind is R.AdaGrad:
        return kind
    if kind is R.Momentum and rule.rho != 0 and _dampening(rule.eta, dtype) is not None:
        return kind  # (a zero rho would make torch skip the buffer)
    return None


Runner = Callable[[list[torch.Tensor]], None]


def _fused_runner(g: Group) -> Runner | None:
    """A function updating the group's leaves from their gradients with one of PyTorch's fused
    kernels, when their maths is the rule's exactly; ``None`` otherwise."""
    x0 = g.items[0].x
    rule, state0 = g.rule, g.items[0].leaf.state
    scheduled = hasattr(rule, "rule_at") and isinstance(state0[0], int)
    if x0.dtype not in (torch.float32, torch.float64) or not _plain(g):
        return None  # lower precisions need Optimisers.jl's epsilon floor: use the rule's maths
    # a Scheduler: its rule at step t
    now, inner0 = (rule.rule_at(state0[0]), state0[1]) if scheduled else (rule, state0)
    kind = _fused_kind(now, inner0, x0.dtype)
    if kind is None:
        return None
    leaves = [w.leaf for w in g.items]
    xs = [w.x for w in g.items]
    paths = [w.path for w in g.items]

    def run(dxs: list[torch.Tensor]) -> None:
        states = [leaf.state for leaf in leaves]
        r = rule.rule_at(states[0][0]) if scheduled else rule
        inner = [s[1] for s in states] if scheduled else states
        if _fused_kind(r, inner[0], x0.dtype) is not kind:
            # beta^t underflowed, or a schedule took rho or eta out of reach: the rule's maths
            items = [Work(leaf, x, [], p, dx) for leaf, x, p, dx in zip(leaves, xs, paths, dxs)]
            _run_unfused(Group(rule, items))
            return
        if kind is R.Adam or kind is R.AdamW:
            b1t, b2t = inner[0][2]
            step = torch.tensor(float(_fused_adam_step(r, b1t, b2t)), device=x0.device)
            kernel = torch._fused_adam_ if kind is R.Adam else torch._fused_adamw_
            kernel(
                xs, dxs, [s[0] for s in inner], [s[1] for s in inner], [], [step] * len(xs),
                lr=r.eta, beta1=r.beta[0], beta2=r.beta[1],
                weight_decay=0.0 if kind is R.Adam else r.lambd,
                eps=r.epsilon, amsgrad=False, maximize=False,
            )  # fmt: skip
            powers = (b1t * r.beta[0], b2t * r.beta[1])
            new = [(s[0], s[1], powers) for s in inner]
        elif kind is R.AdaGrad:
            step = torch.tensor(1.0, device=x0.device)
            torch._fused_adagrad_(
                xs, dxs, inner, [step] * len(xs),
                lr=r.eta, lr_decay=0.0, weight_decay=0.0, eps=r.epsilon, maximize=False,
            )  # fmt: skip
            new = inner
        else:
            torch._fused_sgd_(
                xs, dxs, inner,
                weight_decay=0.0, momentum=r.rho, lr=1.0, dampening=_dampening(r.eta, x0.dtype),
                nesterov=False, maximize=False, is_first_step=False,
            )  # fmt: skip
            new = inner
        if scheduled:
            for leaf, st, s in zip(leaves, states, new):
                leaf.state = (st[0] + 1, s)
        elif new is not inner:
            for leaf, s in zip(leaves, new):
                leaf.state = s

    return run


def _plain(g: Group) -> bool:
    return all(w.x.is_contiguous() and w.dx.is_contiguous() for w in g.items)


def _apply_one(w: Work) -> None:
    """The rule's maths on one leaf, in place."""
    new_state, upd = w.leaf.rule.apply(w.leaf.state, w.x, w.dx)
    _keep_state(w.leaf, new_state)
    if upd is not None:
        w.x.sub_(upd)


def _keep_state(leaf: Any, new_state: Any) -> None:
    """Store the rule's returned state, copying tensors into the leaf's own (so that anyone
    holding a leaf's state tensor keeps seeing it)."""
    old = atoms(leaf.state)
    parts = atoms(new_state)
    if len(old) == len(parts):
        for i, (a, b) in enumerate(zip(old, parts)):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a is not b:
                if a.shape == b.shape and a.dtype == b.dtype:
                    a.copy_(b)
                    parts[i] = a
    leaf.state = fill(new_state, parts)


_scratch_pool: dict[tuple, torch.Tensor] = {}


def gather(tensors: list[torch.Tensor], slot: Any) -> torch.Tensor:
    """``torch.cat`` of the tensors, flattened, into a scratch buffer kept between steps.

    Reusing the buffer matters: a fresh allocation of this size is new memory that the OS
    must fault in page by page, which costs several times the copy itself.
    """
    t0 = tensors[0]
    numel = sum(t.numel() for t in tensors)
    key = (slot, t0.dtype, t0.device, numel)
    buf = _scratch_pool.get(key)
    if buf is None:
        if len(_scratch_pool) > 64:
            _scratch_pool.clear()
        buf = _scratch_pool[key] = torch.empty(numel, dtype=t0.dtype, device=t0.device)
    return torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in tensors], out=buf)


def gather_states(per_leaf: list[list[Any]]) -> tuple[list[Any], list[int]]:
    """The atoms of one state standing for many leaves' (each leaf's given as its atoms): every
    tensor slot gathered flat into scratch, scalars as the first leaf has them (a group's
    leaves share them); and the positions of the tensor slots."""
    parts = list(per_leaf[0])
    slots = [i for i, a in enumerate(parts) if isinstance(a, torch.Tensor)]
    for i in slots:
        parts[i] = gather([p[i] for p in per_leaf], i)
    return parts, slots


def scatter(flat: torch.Tensor, targets: list[torch.Tensor], outs: list, ins: list) -> None:
    """Add to ``outs``/``ins`` (for one ``torch._foreach_copy_``) the copies that put the
    pieces of ``flat`` back into ``targets``, contiguous tensors in gathering order."""
    outs += [t if t.dim() == 1 else t.view(-1) for t in targets]
    ins += flat.split([t.numel() for t in targets])


def _apply_gathered(g: Group) -> None:
    """The rule's maths once over the whole group, gathered into flat scratch tensors."""
    items = g.items
    numels = [w.x.numel() for w in items]
    x = gather([w.x for w in items], "x")
    dx = gather([w.dx for w in items], "dx")
    per_leaf = [atoms(w.leaf.state) for w in items]
    template = items[0].leaf.state
    parts, slots = gather_states(per_leaf)
    token = segments.set(tuple(numels))
    try:
        new_state, upd = g.rule.apply(fill(template, parts), x, dx)
    except NonFiniteGradientError as e:
        index = getattr(e, "index", None)
        if index is not None:
            raise NonFiniteGradientError(
                f"gradient at {items[index].path}: {e}; nothing was updated"
            ) from None
        raise
    finally:
        segments.reset(token)
    new_parts = atoms(new_state)
    outs: list[torch.Tensor] = []
    ins: list[torch.Tensor] = []
    if upd is not None:
        x.sub_(upd)
        scatter(x, [w.x for w in items], outs, ins)
    for i in slots:
        scatter(new_parts[i], [p[i] for p in per_leaf], outs, ins)
    if outs:
        torch._foreach_copy_(outs, ins)
    for w, mine in zip(items, per_leaf):
        leaf_parts = [mine[i] if i in slots else new_parts[i] for i in range(len(new_parts))]
        w.leaf.state = fill(new_state, leaf_parts)


def _run_group(g: Group) -> Runner | None:
    """Update the group's leaves; return the function that does it again for new gradients
    (``None`` for a sharded or subclassed leaf, which is not replayed)."""
    w0 = g.items[0]
    if not (_dense(w0.x) and _dense(w0.dx)):  # then it is a group of one
        _run_single(w0)  # DTensors: the rule's torch ops, which DTensor implements
        return None
    from . import compiled

    run = _fused_runner(g) or compiled.runner(g) or _eager_runner(g)
    run([w.dx for w in g.items])
    return run


def _run_unfused(g: Group) -> None:
    """The group by the rule's own maths, compiled or eager (a fused kernel no longer fits)."""
    from . import compiled

    run = compiled.runner(g) or _eager_runner(g)
    run([w.dx for w in g.items])


def _eager_runner(g: Group) -> Runner:
    """The rule's maths run eagerly: once over the gathered group, or leaf by leaf when it is a
    single leaf or a tensor is not contiguous."""
    rule, kept = g.rule, [(w.leaf, w.x, w.path) for w in g.items]

    def run(dxs: list[torch.Tensor]) -> None:
        items = [Work(leaf, x, [], path, dx) for (leaf, x, path), dx in zip(kept, dxs)]
        g = Group(rule, items)
        if len(items) == 1 or not _plain(g):
            for w in items:
                _run_single(w)
        else:
            _apply_gathered(g)

    return run


def _run_single(w: Work) -> None:
    try:
        _apply_one(w)
    except NonFiniteGradientError as e:
        raise NonFiniteGradientError(f"gradient at {w.path}: {e}; nothing was updated") from None


def _snapshot(g: Group) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    for w in g.items:
        pairs.append((w.x, w.x.detach().clone()))
        pairs += [(a, a.clone()) for a in atoms(w.leaf.state) if isinstance(a, torch.Tensor)]
    return pairs


def step(items: list[Work], check_finite: bool = False, pairs: list | None = None) -> Any:
    """Update the given leaves (gradients in ``.dx`` or ``.grads``), all checks first.

    With ``check_finite``, a gradient holding an Inf or NaN anywhere raises
    ``NonFiniteGradientError`` (naming its path) before anything changes.  Given ``pairs``
    (every ``(leaf, parameter, path)`` of the state), returns a ``Replay`` of this step when it
    can be done again for new gradients (every trained pair had one, used as it was), else
    ``None``.
    """
    items = [w for w in items if not w.leaf.frozen]
    if not items:
        return None
    with torch.no_grad():
        subclassed: list[int] = []  # parameters holding a tensor subclass (FSDP2's DTensor)
        for i, w in enumerate(items):
            follow_parameter(w)
            if not _dense(w.x):
                subclassed.append(i)
            if w.dx is None:
                w.dx = _checked_gradient(w)
        if check_finite:
            _check_finite([(w.path, w.dx) for w in items])
        clipped = _check_head_clips(items)
        clipped = _apply_global_clips(items) or clipped
        # Sharded leaves whose rules are elementwise run on their local shards, grouped with
        # the rest (fused kernels included); the others go one leaf at a time on DTensors.
        local: list[tuple[Work, torch.Tensor]] = []
        for i in subclassed:
            lw = _localise(items[i])
            if lw is not None:
                local.append((lw, _data(items[i].x)))
                items[i] = lw
        runs = _run_groups(items)
        for lw, x in local:
            _globalise(lw, x)
    if pairs is None or clipped or subclassed or runs is None:
        return None
    return Replay.of(pairs, items, runs)


def _run_groups(items: list[Work]) -> list[tuple[Runner, list[Work]]] | None:
    """Group the checked items and run the groups, risky ones first with a way back; return
    each group's runner with its items, or ``None`` if a group cannot be replayed."""
    groups = group(items)
    raises = [_may_raise_midway(g.rule) for g in groups]
    risky = [g for g, r in zip(groups, raises) if r]
    safe = [g for g, r in zip(groups, raises) if not r]
    if risky:
        saved = [(g, _snapshot(g), [w.leaf.state for w in g.items]) for g in risky]
        try:
            for g in risky:
                _run_group(g)
        except BaseException:
            for g, pairs, states in saved:
                for dst, src in pairs:
                    dst.copy_(src)
                for w, s in zip(g.items, states):
                    w.leaf.state = s
            raise
    runs = [(_run_group(g), g.items) for g in safe]
    if risky or any(run is None for run, _ in runs):
        return None
    return runs  # type: ignore[return-value]


class Replay:
    """One ``update_``, kept to be done again while nothing it relied on has changed: the
    state's leaves hold the same rules, states and frozen flags as this engine left them,
    every parameter has the same memory and shape, and every trainable parameter has a
    contiguous gradient (its ``.grad``, or one read from a gradient tree).  Then a step is the groups' kernels on the new gradients,
    without walking, checking and grouping the leaves again (on 114 tensors that work cost
    several times a fused kernel call).  Anything else (``adjust_``, ``freeze_``, a reset or
    loaded state, a missing gradient, a moved parameter) makes ``__call__`` return ``False``,
    and the caller takes the full path, which checks everything and records a new Replay.
    """

    __slots__ = ("devices", "dtypes", "frozen", "leaves", "paths", "ptrs", "rules", "runs",
                 "shapes", "states", "trained", "xs")  # fmt: skip

    @classmethod
    def of(cls, pairs: list, items: list[Work], runs: list) -> Replay | None:
        trained = [(leaf, x, path) for leaf, x, path in pairs if not leaf.frozen]
        if len(trained) != len(items) or any(
            w.leaf is not leaf or w.x is not x or len(w.grads) != 1 or w.dx is not w.grads[0]
            for w, (leaf, x, _) in zip(items, trained)
        ):
            return None  # a missing or converted gradient, a tie: the full path each time
        self = cls()
        self.leaves = [leaf for leaf, _, _ in pairs]
        self.frozen = [leaf.frozen for leaf in self.leaves]
        self.trained = [leaf for leaf, _, _ in trained]
        self.xs = [x for _, x, _ in trained]
        self.paths = [path for _, _, path in trained]
        self.ptrs = [x.data_ptr() for x in self.xs]
        self.shapes = [x.shape for x in self.xs]
        self.dtypes = [x.dtype for x in self.xs]
        self.devices = [x.device for x in self.xs]
        self.rules = [leaf.rule for leaf in self.trained]
        self.states = [leaf.state for leaf in self.trained]
        where = {id(w): i for i, w in enumerate(items)}
        self.runs = [(run, [where[id(w)] for w in ws]) for run, ws in runs]
        return self

    def with_gradients(self, grads: list, check_finite: bool = False) -> bool:
        """Do the step again with the given gradients (one per leaf the Replay was recorded
        for, as read from a gradient tree), when each trained leaf's is a tensor of its
        parameter's shape, dtype and device; ``False`` (nothing done) otherwise."""
        if len(grads) != len(self.leaves):
            return False
        if len(self.trained) != len(grads):
            grads = [g for g, frozen in zip(grads, self.frozen) if not frozen]
        if (
            not all([isinstance(g, torch.Tensor) for g in grads])
            or [g.shape for g in grads] != self.shapes
            or [g.dtype for g in grads] != self.dtypes
            or [g.device for g in grads] != self.devices
        ):
            return False
        return self(check_finite, grads)

    def __call__(self, check_finite: bool = False, grads: list | None = None) -> bool:
        """Do the step again from the parameters' ``.grad`` (or the given gradients, one per
        trained leaf); ``False`` (nothing done) if the Replay no longer fits."""
        trained, xs = self.trained, self.xs
        if (
            [leaf.frozen for leaf in self.leaves] != self.frozen
            or not all(map(operator.is_, [leaf.rule for leaf in trained], self.rules))
            or not all(map(operator.is_, [leaf.state for leaf in trained], self.states))
            or [x.data_ptr() for x in xs] != self.ptrs
            or [x.shape for x in xs] != self.shapes
        ):
            return False
        if grads is None:
            grads = [x.grad for x in xs]
        strided = torch.strided
        if not all([g is not None and g.layout is strided and g.is_contiguous() for g in grads]):
            return False
        with torch.no_grad():
            if check_finite:
                _check_finite(list(zip(self.paths, grads)))
            for run, index in self.runs:
                run([grads[i] for i in index])
        self.states = [leaf.state for leaf in trained]
        return True


def run(items: list[Work]) -> None:
    """Update the given leaves (any collection of them, e.g. the implicit style's Params)."""
    step(items)


def run_reference(items: list[Work]) -> None:
    """The per-tensor reference: each leaf's rule applied to it alone (for tests)."""
    items = [w for w in items if not w.leaf.frozen]
    with torch.no_grad():
        for w in items:
            if w.dx is None:
                w.dx = _gradient(w)
        _check_head_clips(items)
        _apply_global_clips(items)
        for w in items:
            _run_single(w)
