"""The update engine: leaves that can be updated together live in flat buffers.

Design (see docs/engine.md for the measurements behind it):

* A **group** is the set of leaves that share a rule (equal hyperparameters), dtype, device,
  frozen flag and scalar state (step counters, ``beta^t``).  Each group owns contiguous buffers:
  one for its parameters (every parameter's ``.data`` is re-pointed to a view into it), one for
  gradients, and one per tensor of the rule's state.  ``Leaf.state`` of a packed leaf is made of
  views into those buffers, so users and checkpoints still see per-parameter state.
* One update of a group is one call of the rule's maths on the flat buffers (``rule.apply`` from
  rules.py, written once per rule), or one of PyTorch's fused kernels where the maths agree
  (``torch._fused_adam_``, ``_fused_adamw_``, ``_fused_adagrad_``): never a Python loop over
  parameters per elementwise operation.
* Gradients reach the group's buffer without a copy when each parameter's ``.grad`` is the view
  the engine attached (backward accumulates into it in place, as DDP's bucket views do);
  otherwise they are gathered with one ``torch.cat``.
* A **plan** (the groups of one state tree) is cached per state tree and rebuilt when a Leaf's
  rule, frozen flag or state is replaced (``adjust_``, ``freeze_``, ``thaw_``, ``reset_``, a
  checkpoint load...), when the model object changes, or when a parameter no longer points into
  its buffer (e.g. after ``model.to(...)``).  Rebuilding re-packs only the groups that changed.
* Everything that can fail (non-finite gradients for a throwing ClipNorm, the global ClipNorm
  norm) is checked for every group before the first parameter changes.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections import defaultdict
from typing import Any

import torch

from ..tree import KeyPath
from .rules import (
    AdaGrad,
    Adam,
    AdamW,
    ClipNorm,
    NonFiniteGradientError,
    OptimiserChain,
    Rule,
    segments,
)

__all__ = ["FlatGroup", "Work", "bump", "run", "update_plan"]

# Bumped whenever a Leaf's rule, frozen flag or state is replaced: cached plans then rebuild.
_VERSION = [0]


def bump() -> None:
    """Invalidate every cached plan (a Leaf was changed from outside the engine)."""
    _VERSION[0] += 1


@dataclasses.dataclass
class Work:
    """One leaf to update: its Leaf, parameter, gradient(s) (summed if tied) and path."""

    leaf: Any
    x: torch.Tensor
    grads: list[torch.Tensor]
    path: KeyPath
    dx: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# State structures: nested tuples of tensors and scalars


def _atoms(state: Any) -> list[Any]:
    if isinstance(state, tuple):
        out: list[Any] = []
        for s in state:
            out.extend(_atoms(s))
        return out
    return [state]


def _fill(template: Any, atoms: list[Any], pos: list[int]) -> Any:
    if isinstance(template, tuple):
        return tuple(_fill(t, atoms, pos) for t in template)
    i = pos[0]
    pos[0] += 1
    return atoms[i]


def _scalars(state: Any) -> tuple:
    """The non-tensor parts of a state (counters, ``beta^t``): leaves in one group share them."""
    return tuple(a for a in _atoms(state) if not isinstance(a, torch.Tensor))


def _first_rule(rule: Rule) -> Rule:
    while isinstance(rule, OptimiserChain) and rule.opts:
        rule = rule.opts[0]
    return rule


def _throwing_clips(rule: Rule) -> bool:
    if isinstance(rule, ClipNorm):
        return rule.throw and rule.scope == "array"
    if isinstance(rule, OptimiserChain):
        return any(_throwing_clips(r) for r in rule.opts)
    inner = getattr(rule, "inner_rules", None)
    if inner is not None:
        return any(_throwing_clips(r) for r in inner())
    return False


def _global_clip(rule: Rule) -> ClipNorm | None:
    first = _first_rule(rule)
    if isinstance(first, ClipNorm) and first.scope == "global":
        return first
    return None


# ---------------------------------------------------------------------------------------------
# Flat groups


def _follow_parameter(leaf: Any, x: torch.Tensor) -> Any:
    """The leaf's state, moved to the parameter's dtype/device if the model moved after setup.

    Only state tensors made like the parameter (its dtype at setup) follow it, so a float32
    master copy kept for a float16 parameter stays float32.
    """
    state = leaf.state
    like = leaf._like
    if like is None or (like[1] == x.dtype and like[2] == x.device):
        return state
    atoms = [
        a.to(device=x.device, dtype=x.dtype if a.dtype == like[1] else a.dtype)
        if isinstance(a, torch.Tensor)
        else a
        for a in _atoms(state)
    ]
    leaf._like = (x.shape, x.dtype, x.device)
    return _fill(state, atoms, [0])


_data_ptr = torch.Tensor.data_ptr
_grad_of = operator.attrgetter("grad")


class FlatGroup:
    """Leaves sharing rule, dtype, device, frozen flag and scalar state, in contiguous buffers."""

    def __init__(self, leaves: list[Any], params: list[torch.Tensor], paths: list[str]):
        self.leaves = leaves
        self.params = params
        self.paths = paths
        self.rule: Rule = leaves[0].rule
        self.frozen: bool = leaves[0].frozen
        self.numels = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        p0 = params[0]
        with torch.no_grad():
            self.x = torch.cat([p.detach().reshape(-1) for p in params]).to(p0.dtype)
            states = [_follow_parameter(leaf, p) for leaf, p in zip(leaves, params)]
            per_leaf = [_atoms(s) for s in states]
            self.template = states[0]
            atoms0 = per_leaf[0]
            self.tensor_pos = [i for i, a in enumerate(atoms0) if isinstance(a, torch.Tensor)]
            self.buffers: dict[int, torch.Tensor] = {}
            for i in self.tensor_pos:
                self.buffers[i] = torch.cat([atoms[i].reshape(-1) for atoms in per_leaf])
        self.atoms = list(atoms0)  # group-level atoms: flat buffers and shared scalars
        for i, b in self.buffers.items():
            self.atoms[i] = b
        self.g = torch.zeros_like(self.x)
        self.xviews = self._views(self.x)
        self.gviews = self._views(self.g)
        self.sviews = {i: self._views(b) for i, b in self.buffers.items()}
        for j, (leaf, p) in enumerate(zip(leaves, params)):
            p.data = self.xviews[j]
            leaf._flat = (self, j)
            leaf._state = None
        self.ptrs = [p.data_ptr() for p in params]
        bump()  # leaves moved: plans made before this must not be reused

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(s) for v, s in zip(flat.split(self.numels), self.shapes)]

    def leaf_state(self, j: int) -> Any:
        atoms = list(self.atoms)
        for i, views in self.sviews.items():
            atoms[i] = views[j]
        return _fill(self.template, atoms, [0])

    def state(self) -> Any:
        return _fill(self.template, self.atoms, [0])

    def absorb(self, new_state: Any) -> None:
        """Take the rule's returned state: tensors back into the buffers, scalars as they are."""
        atoms = _atoms(new_state)
        for i, a in enumerate(atoms):
            if i in self.buffers:
                if a is not self.buffers[i]:
                    self.buffers[i].copy_(a.reshape(-1))
            else:
                self.atoms[i] = a

    def intact(self) -> bool:
        """True while every parameter still points into this group's buffer.

        (Leaves move between groups only when a plan is rebuilt, which bumps the version that
        every cached plan checks, so only the parameters' storage is checked here: C-level
        iteration, as this runs at every step.)
        """
        return list(map(_data_ptr, self.params)) == self.ptrs

    def attached_grad(self) -> torch.Tensor | None:
        """The flat gradient if every ``.grad`` is this group's view; else gather it."""
        if all(map(operator.is_, map(_grad_of, self.params), self.gviews)):
            return self.g
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            return None
        parts = [g.reshape(-1) for g in grads]
        if any(g is v for g, v in zip(grads, self.gviews)) or any(
            g.dtype != self.x.dtype for g in grads
        ):
            self.g.copy_(torch.cat(parts).to(self.x.dtype))  # some already live in the buffer
        else:
            torch.cat(parts, out=self.g)
        for p, v in zip(self.params, self.gviews):
            p.grad = v  # later backward passes accumulate here in place, with no gather
        return self.g

    def gather(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """One flat gradient from explicit gradients.

        It goes into the group's gradient buffer only while no ``.grad`` is a view of it: the
        user's ``.grad`` must not change, and ``torch.cat`` cannot write over its own inputs.
        """
        parts = [g.reshape(-1) for g in grads]
        buffer = self.g.untyped_storage().data_ptr()
        if any(p.grad is v for p, v in zip(self.params, self.gviews)) or any(
            g.untyped_storage().data_ptr() == buffer for g in grads
        ):
            return torch.cat(parts)
        torch.cat(parts, out=self.g)
        return self.g


def _group_key(leaf: Any, x: torch.Tensor) -> tuple:
    return (leaf.rule, x.dtype, x.device, leaf.frozen, _scalars(leaf.state))


def _pack(triples: list[tuple[Any, torch.Tensor, Any]]) -> _Plan:
    """Group (leaf, parameter, path) triples; give each group buffers, reusing intact ones.

    A parameter that is a view of another tensor (``x._base``) is left where it is, as a
    *loose* leaf updated on its own: re-pointing it would cut it off from its base.
    """
    by_key: dict[tuple, list[tuple[Any, torch.Tensor, Any]]] = defaultdict(list)
    loose = []
    for leaf, x, path in triples:
        if x._base is not None:
            if leaf._flat is not None:
                leaf.state = leaf.state  # detach from any old group
            loose.append(Work(leaf, x, [], path))
        else:
            by_key[_group_key(leaf, x)].append((leaf, x, path))
    groups = []
    for members in by_key.values():
        leaves = [m[0] for m in members]
        params = [m[1] for m in members]
        paths = [str(m[2]) for m in members]
        flat = leaves[0]._flat
        g = flat[0] if flat is not None else None
        if (
            g is not None
            and len(g.leaves) == len(leaves)
            and all(a is b for a, b in zip(g.leaves, leaves))
            and all(a is b for a, b in zip(g.params, params))
            and all(leaf._flat is not None and leaf._flat[0] is g for leaf in leaves)
            and g.intact()
        ):
            # Same members: keep the buffers; a new eta (adjust_) or flag needs no copy.
            g.rule, g.frozen, g.paths = leaves[0].rule, leaves[0].frozen, paths
            groups.append(g)
        else:
            groups.append(FlatGroup(leaves, params, paths))
    return _Plan(_VERSION[0], None, groups, loose)


# ---------------------------------------------------------------------------------------------
# Plans: the groups of one state tree, cached


@dataclasses.dataclass
class _Plan:
    version: int
    model: Any
    groups: list[FlatGroup]
    loose: list[Work]
    # (mutable container, its children when the plan was made): a parameter or submodule
    # replaced since then (``model.fc = nn.Linear(...)``) shows up as a changed child.
    structure: list[tuple[Any, tuple]] = dataclasses.field(default_factory=list)

    def structure_unchanged(self) -> bool:
        for container, children in self.structure:
            now = container.values() if isinstance(container, dict) else container
            if len(now) != len(children) or not all(map(operator.is_, now, children)):
                return False
        return True

    def owns(self, leaf: Any, x: torch.Tensor) -> bool:
        """True if ``x`` is the parameter this plan updates for ``leaf``."""
        if leaf._flat is not None:
            g, j = leaf._flat
            return g.params[j] is x
        return any(w.leaf is leaf and w.x is x for w in self.loose)


def _cached(state: Any, model: Any) -> _Plan | None:
    # The plan lives on the state tree's root (a slot of Node and Leaf), so it goes with it.
    plan = getattr(state, "_plan", None)
    if plan is None or plan.version != _VERSION[0] or plan.model is not model:
        return None
    if not all(g.intact() for g in plan.groups):
        return None
    return plan


def update_plan(
    state: Any, model: Any, pairs: Any, items: list[Work] | None = None, structure: Any = None
) -> _Plan:
    """The plan for ``state``/``model``; ``pairs()`` lists (leaf, param, path) to rebuild it.

    A parameter replaced since the plan was made (``lin.weight = nn.Parameter(...)``) forces a
    rebuild: ``items`` (from a walk of the model) are checked one by one, otherwise the
    snapshot of the model's containers that ``structure()`` took when the plan was made.
    """
    plan = _cached(state, model)
    if plan is not None:
        if items is not None:
            if not all(plan.owns(w.leaf, w.x) for w in items):
                plan = None
        elif not plan.structure_unchanged():
            plan = None
    if plan is not None:
        return plan
    with torch.no_grad():
        plan = _pack(pairs())
    plan.model = model
    plan.structure = structure() if structure is not None else []
    try:
        object.__setattr__(state, "_plan", plan)
    except AttributeError:
        pass  # a state root without a slot for it (a plain dict of Leafs) is not cached
    return plan


# ---------------------------------------------------------------------------------------------
# Running a step


def _fused_adam_step(rule: Rule, b1t: float, b2t: float) -> int | None:
    """The step number t with beta^t equal to the stored powers, if there is one."""
    b1, b2 = rule.beta
    if not (0 < b1 < 1 and 0 < b2 < 1):
        return None
    t = round(math.log(b1t) / math.log(b1))
    if t < 1 or not (
        math.isclose(b1**t, b1t, rel_tol=1e-9) and math.isclose(b2**t, b2t, rel_tol=1e-9)
    ):
        return None  # beta was adjusted mid-run: the products no longer match a step count
    return t


def _try_fused(g: FlatGroup, dx: torch.Tensor) -> bool:
    """Update the group with one of PyTorch's fused kernels when the maths agree exactly."""
    if g.x.dtype not in (torch.float32, torch.float64):
        return False  # lower precisions need Optimisers.jl's epsilon floor: use the rule's maths
    rule, base = g.rule, 0
    if hasattr(rule, "rule_at") and isinstance(g.atoms[0], int):
        # A Scheduler: state (t, inner_state); its rule at step t may have a fused kernel.
        rule, base = rule.rule_at(g.atoms[0]), 1
    kind = type(rule)
    if kind is Adam or (kind is AdamW and rule.couple):
        b1t, b2t = g.atoms[base + 2], g.atoms[base + 3]
        t = _fused_adam_step(rule, b1t, b2t)
        if t is None:
            return False
        mt, vt = g.buffers[base], g.buffers[base + 1]
        step = torch.tensor(float(t), device=g.x.device)
        kernel = torch._fused_adam_ if kind is Adam else torch._fused_adamw_
        kernel(
            [g.x], [dx], [mt], [vt], [], [step],
            lr=rule.eta, beta1=rule.beta[0], beta2=rule.beta[1],
            weight_decay=0.0 if kind is Adam else rule.lambd,
            eps=rule.epsilon, amsgrad=False, maximize=False,
        )  # fmt: skip
        g.atoms[base + 2], g.atoms[base + 3] = b1t * rule.beta[0], b2t * rule.beta[1]
    elif kind is AdaGrad:
        step = torch.tensor(1.0, device=g.x.device)
        torch._fused_adagrad_(
            [g.x], [dx], [g.buffers[base]], [step],
            lr=rule.eta, lr_decay=0.0, weight_decay=0.0, eps=rule.epsilon, maximize=False,
        )  # fmt: skip
    else:
        return False
    if base:
        g.atoms[0] += 1
    return True


def _step_group(g: FlatGroup, dx: torch.Tensor) -> None:
    if _try_fused(g, dx):
        return
    token = segments.set(tuple(g.numels))
    try:
        new_state, upd = g.rule.apply(g.state(), g.x, dx)
    finally:
        segments.reset(token)
    g.absorb(new_state)
    if upd is not None:
        g.x.sub_(upd)


def _check_finite(g: FlatGroup, dx: torch.Tensor) -> None:
    if _throwing_clips(g.rule) and not bool(torch.isfinite(dx).all()):
        bad = next(
            (
                i
                for i, part in enumerate(dx.split(g.numels))
                if not bool(torch.isfinite(part).all())
            ),
            0,
        )
        raise NonFiniteGradientError(
            f"gradient at {g.paths[bad]} contains Inf or NaN and its rule has a ClipNorm with "
            f"throw=True; nothing was updated"
        )


def _global_clip_factors(entries: list[tuple[Rule, torch.Tensor, str]]) -> list[float]:
    """For each (rule, gradient, where): the factor its global ClipNorm scales it by (or 1).

    Gradients whose rules start with the same global ClipNorm share one norm over all of them.
    """
    by_clip: dict[ClipNorm, list[int]] = defaultdict(list)
    for i, (rule, _, _) in enumerate(entries):
        clip = _global_clip(rule)
        if clip is not None:
            by_clip[clip].append(i)
    factors = [1.0] * len(entries)
    for clip, idx in by_clip.items():
        norms = [torch.linalg.vector_norm(entries[i][1], clip.p).double() for i in idx]
        total = float(torch.linalg.vector_norm(torch.stack(norms), clip.p))
        where = f"the arrays clipped together (first at {entries[idx[0]][2]})"
        factor = clip.factor(total, where)
        for i in idx:
            factors[i] = factor
    return factors


def step_groups(work: list[tuple[FlatGroup, torch.Tensor]]) -> None:
    """Update each (group, flat gradient) after checking all of them."""
    for g, dx in work:
        _check_finite(g, dx)
    factors = _global_clip_factors([(g.rule, dx, g.paths[0]) for g, dx in work])
    work = [(g, dx if f == 1.0 else dx * f) for (g, dx), f in zip(work, factors)]
    with torch.no_grad():
        for g, dx in work:
            _step_group(g, dx)


def _apply_per_leaf(items: list[Work]) -> None:
    """Reference path for leaves updated without the rest of their group (a partial step)."""
    with torch.no_grad():
        for w in items:
            new_state, upd = w.leaf.rule.apply(w.leaf.state, w.x, w.dx)
            w.leaf.state = new_state
            if upd is not None:
                w.x.sub_(upd)


def _gradient(w: Work) -> torch.Tensor:
    g = w.grads[0]
    for h in w.grads[1:]:
        g = g + h
    if g.dtype != w.x.dtype or g.device != w.x.device:
        g = g.to(device=w.x.device, dtype=w.x.dtype)
    return g


def _needs_global_clip(items: list[Work]) -> bool:
    return any(_global_clip(w.leaf.rule) is not None for w in items)


def run_items(plan: _Plan, items: list[Work]) -> None:
    """Update from explicit gradients: whole groups fused, partially covered groups per leaf."""
    by_leaf = {id(w.leaf): w for w in items}
    whole: list[tuple[FlatGroup, torch.Tensor]] = []
    partial: list[Work] = [w for w in plan.loose if id(w.leaf) in by_leaf and not w.leaf.frozen]
    partial = [by_leaf[id(w.leaf)] for w in partial]
    for w in partial:
        w.dx = _gradient(w)
    for g in plan.groups:
        if g.frozen:
            continue
        ws = [by_leaf.get(id(leaf)) for leaf in g.leaves]
        present = [w for w in ws if w is not None]
        if not present:
            continue
        for w in present:
            w.dx = _gradient(w)
        if len(present) == len(ws):
            whole.append((g, g.gather([w.dx for w in present])))
        else:
            partial.extend(present)
    _finish(whole, partial)


def run_dot_grad(plan: _Plan) -> None:
    """Update from each parameter's ``.grad`` (zero-copy when they are the engine's views)."""
    whole: list[tuple[FlatGroup, torch.Tensor]] = []
    partial: list[Work] = []
    for g in plan.groups:
        if g.frozen:
            continue
        dx = g.attached_grad()
        if dx is not None:
            whole.append((g, dx))
            continue
        for leaf, p, path in zip(g.leaves, g.params, g.paths):
            if p.grad is not None:
                partial.append(Work(leaf, p, [p.grad], path))
    for w in plan.loose:
        if w.x.grad is not None and not w.leaf.frozen:
            partial.append(Work(w.leaf, w.x, [w.x.grad], w.path))
    for w in partial:
        w.dx = _gradient(w)
    _finish(whole, partial)


def _finish(whole: list[tuple[FlatGroup, torch.Tensor]], partial: list[Work]) -> None:
    """Run whole groups fused and the rest per leaf; every check happens before any change."""
    if partial and _needs_global_clip(partial):
        # A global norm needs every gradient of the call together: take the per-leaf path.
        items = list(partial)
        for g, dx in whole:
            for leaf, p, path, part in zip(g.leaves, g.params, g.paths, dx.split(g.numels)):
                items.append(Work(leaf, p, [part.view(p.shape)], path, part.view(p.shape)))
        _run_unpacked(items)
        return
    for w in partial:
        _check_leaf_finite(w)
    step_groups(whole)
    _apply_per_leaf(partial)


def _check_leaf_finite(w: Work) -> None:
    if _throwing_clips(w.leaf.rule) and not bool(torch.isfinite(w.dx).all()):
        raise NonFiniteGradientError(
            f"gradient at {w.path} contains Inf or NaN and its rule has a ClipNorm with "
            f"throw=True; nothing was updated"
        )


def _run_unpacked(items: list[Work]) -> None:
    """Per-leaf reference path with all checks first (also used by tests as the reference)."""
    items = [w for w in items if not w.leaf.frozen]
    for w in items:
        if w.dx is None:
            w.dx = _gradient(w)
        _check_leaf_finite(w)
    factors = _global_clip_factors([(w.leaf.rule, w.dx, str(w.path)) for w in items])
    for w, f in zip(items, factors):
        if f != 1.0:
            w.dx = w.dx * f
    _apply_per_leaf(items)


def run(items: list[Work]) -> None:
    """Update the given leaves (any collection of them, e.g. the implicit style's Params).

    Leaves are grouped and packed into flat buffers like a state tree's leaves are.
    """
    items = [w for w in items if not w.leaf.frozen]
    if not items:
        return
    with torch.no_grad():
        plan = _pack([(w.leaf, w.x, w.path) for w in items])
        run_items(plan, items)


def run_reference(items: list[Work]) -> None:
    """The per-tensor reference: each leaf's rule applied to it alone (for tests)."""
    _run_unpacked(items)
