"""The update engine: groups the leaves of one ``update_`` call and applies their rules.

Leaves that share a rule (equal hyperparameters), dtype, device and scalar state (step counters,
``beta^t``) form a group; a group is updated together.  The rule maths itself lives in
:mod:`fluxtrain.optimisers.rules` and is never repeated here.

Checks that can fail (non-finite gradients for a throwing ClipNorm, the global ClipNorm factor)
run over every leaf before the first parameter changes, so a failed update leaves everything as
it was.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import torch

from ..tree import KeyPath
from .rules import ClipNorm, NonFiniteGradientError, OptimiserChain, Rule

__all__ = ["Work", "forget", "prepare", "run"]


@dataclasses.dataclass
class Work:
    """One leaf to update: its Leaf, parameter, gradient(s) (summed if tied) and path."""

    leaf: Any
    x: torch.Tensor
    grads: list[torch.Tensor]
    path: KeyPath
    dx: torch.Tensor | None = None


def prepare(state: Any, model: Any) -> None:
    """Hook run by ``setup`` once the state exists (the fused engine lays out buffers here)."""


def forget(state: Any) -> None:
    """Hook run on a copied state, which must not share buffers with its original."""


def _scalars(state: Any) -> tuple:
    """The non-tensor parts of a state (counters, ``beta^t``): leaves in one group share them."""
    if isinstance(state, torch.Tensor) or state is None:
        return ()
    if isinstance(state, tuple):
        out: tuple = ()
        for s in state:
            out += _scalars(s)
        return out
    return (state,)


def group_key(w: Work) -> tuple:
    return (w.leaf.rule, w.x.dtype, w.x.device, _scalars(w.leaf.state))


def _first_rule(rule: Rule) -> Rule:
    while isinstance(rule, OptimiserChain) and rule.opts:
        rule = rule.opts[0]
    return rule


def _throwing_clips(rule: Rule) -> bool:
    if isinstance(rule, ClipNorm):
        return rule.throw and rule.scope == "array"
    if isinstance(rule, OptimiserChain):
        return any(_throwing_clips(r) for r in rule.opts)
    return False


def _gradient(w: Work) -> torch.Tensor:
    g = w.grads[0]
    for h in w.grads[1:]:
        g = g + h
    if g.dtype != w.x.dtype or g.device != w.x.device:
        g = g.to(device=w.x.device, dtype=w.x.dtype)
    return g


def _global_clip(items: list[Work]) -> None:
    """Scale the gradients of leaves whose rule starts with ClipNorm(scope='global')."""
    by_rule: dict[ClipNorm, list[Work]] = defaultdict(list)
    for w in items:
        first = _first_rule(w.leaf.rule)
        if isinstance(first, ClipNorm) and first.scope == "global":
            by_rule[first].append(w)
    for clip, ws in by_rule.items():
        norms = torch._foreach_norm([w.dx for w in ws], clip.p)
        total = float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), clip.p))
        where = f"the {len(ws)} arrays clipped together (first at {ws[0].path})"
        factor = clip.factor(total, where)
        if factor != 1.0:
            for w in ws:
                w.dx = w.dx * factor


def run(items: list[Work]) -> None:
    """Apply every item's rule and update its parameter; all checks come first."""
    items = [w for w in items if not w.leaf.frozen]
    if not items:
        return
    for w in items:
        w.dx = _gradient(w)
        if _throwing_clips(w.leaf.rule) and not bool(torch.isfinite(w.dx).all()):
            raise NonFiniteGradientError(
                f"gradient at {w.path} contains Inf or NaN and its rule has a ClipNorm with "
                f"throw=True; nothing was updated"
            )
    _global_clip(items)

    groups: dict[tuple, list[Work]] = defaultdict(list)
    for w in items:
        groups[group_key(w)].append(w)
    with torch.no_grad():
        for ws in groups.values():
            _apply_group(ws)


def _apply_group(ws: list[Work]) -> None:
    rule = ws[0].leaf.rule
    for w in ws:
        new_state, upd = rule.apply(w.leaf.state, w.x, w.dx)
        w.leaf.state = new_state
        if upd is not None:
            w.x.sub_(upd)
        w.dx = None
