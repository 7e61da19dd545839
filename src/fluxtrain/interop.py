"""fluxtrain's rules inside code that expects a ``torch.optim.Optimizer``.

``TorchOptimizer`` is a real ``torch.optim.Optimizer`` whose optimiser state is
fluxtrain's state tree (``.opt_state``): Hugging Face ``Trainer``, Lightning, ``accelerate`` and
torch's LR schedulers drive it as they drive ``torch.optim.AdamW``, while ``ft.adjust_`` and
``ft.freeze_`` keep working on the tree.

How the torch side maps onto the tree:

* ``param_groups`` are fluxtrain's groups: one dict per set of leaves with equal rules, in the
  order their first leaf appears in the model.  ``group["lr"]`` is the rule's ``eta`` and
  ``group["betas"]`` its ``beta`` (when the rule has one); writing either is an ``ft.adjust_``
  of the group's leaves, so schedulers that write them (``LambdaLR``, ``CosineAnnealingLR``,
  ``OneCycleLR`` with ``cycle_momentum``) change the leaves.  Any other key a tool stores in a
  group (``initial_lr``, ``max_lr``...) stays in that dict.
* When ``adjust_``/``freeze_`` on a subtree later changes which leaves share a rule, the groups
  are re-derived from the tree the next time ``param_groups`` is read: a group whose set of
  leaves is unchanged keeps its dict; a new group (a split or a merge) gets a new dict that
  inherits the extra keys of the old group holding its first leaf; and if the *number* of
  groups changes a warning says so, since schedulers made earlier pair their lists with the old
  groups (make the scheduler again).  ``freeze_`` never splits a group: frozen leaves stay in
  their group and are skipped by ``step``.
* ``state_dict()`` holds only dicts, lists, strings, numbers and tensors (``torch.load(...,
  weights_only=True)`` reads it): per parameter its path, ``frozen`` flag and rule state; per
  group its torch keys plus ``"fluxtrain_rule"``, the rule as plain data.  Parameters are
  numbered in the tree's order, so a state saved before a regrouping loads after it.

The code is ours; the behaviours it copes with were read from torch's ``optim/optimizer.py`` and
``optim/lr_scheduler.py``, Lightning's ``core/optimizer.py`` (``LightningOptimizer``),
accelerate's ``optimizer.py`` (``AcceleratedOptimizer``) and transformers' ``trainer.py``.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .optimisers import Leaf, Rule, adjust_, leaves, setup, update_
from .optimisers.state import unwrap
from .tree import KeyPath, children

__all__ = ["TorchOptimizer"]

# torch's name of a group key -> the rule field it reads and writes.
_MAPPED = {"lr": "eta", "betas": "beta"}


def _rule_field(rule: Any, field: str) -> Any:
    """The first value of ``field`` in ``rule`` or the rules inside it (``None`` if absent)."""
    if not isinstance(rule, Rule):
        return None
    hyper = rule.hyperparameters()
    v = hyper.get(field)
    if field == "eta" and isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    if field == "beta" and isinstance(v, tuple) and len(v) == 2:
        return tuple(float(b) for b in v)
    inner = list(getattr(rule, "opts", ())) + [h for h in hyper.values() if isinstance(h, Rule)]
    for r in inner:
        found = _rule_field(r, field)
        if found is not None:
            return found
    return None


def _pairs(opt_state: Any, model: Any) -> list[tuple[str, Leaf, torch.Tensor]]:
    """(path, Leaf, parameter) for every Leaf of the state tree, tied leaves once, tree order."""
    out: list[tuple[str, Leaf, torch.Tensor]] = []
    seen: set[int] = set()

    def walk(st: Any, x: Any, path: KeyPath) -> None:
        if isinstance(st, Leaf):
            if not isinstance(x, torch.Tensor):
                raise ValueError(
                    f"TorchOptimizer: the state tree has a Leaf at {path} but the model has "
                    f"{type(x).__name__} there: was the state set up for another model?"
                )
            if id(st) not in seen:
                seen.add(id(st))
                out.append((str(path), st, x))
            return
        ch = children(st)
        if ch is None:
            return
        xch = children(x) or {}
        for k, sub in ch.items():
            if sub is None:
                continue
            if k not in xch:
                raise ValueError(
                    f"TorchOptimizer: the model has no child {k!r} at {path}: was the state "
                    f"set up for another model?"
                )
            walk(sub, xch[k], path + (k,))

    walk(opt_state, model, KeyPath())
    return out


class _Group(dict):
    """One entry of ``param_groups``: a dict whose ``"lr"``/``"betas"`` are the rule's.

    Reading them gives the value on the group's leaves now; writing them adjusts the leaves.
    """

    def __init__(self, leaves: list[Leaf], params: list[torch.Tensor]) -> None:
        super().__init__()
        self._leaves = leaves
        dict.__setitem__(self, "params", params)
        self._refresh()

    def _refresh(self) -> None:
        rule = self._leaves[0].rule
        for key, field in _MAPPED.items():
            v = _rule_field(rule, field)
            if v is not None:
                dict.__setitem__(self, key, v)
            elif key in self:
                dict.__delitem__(self, key)

    def __getitem__(self, key: Any) -> Any:
        if key in _MAPPED and getattr(self, "_leaves", None):
            self._refresh()
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __setitem__(self, key: Any, value: Any) -> None:
        leaves = getattr(self, "_leaves", None)  # absent while unpickling
        if key in _MAPPED and leaves:
            field = _MAPPED[key]
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            if field == "beta":
                value = tuple(float(b) for b in value)
            else:
                value = float(value)
            if _rule_field(leaves[0].rule, field) is None:
                raise KeyError(
                    f"TorchOptimizer: this parameter group's rule {leaves[0].rule!r} has no "
                    f"{field!r}, so group[{key!r}] cannot be set"
                )
            adjust_(leaves, **{field: value})
        dict.__setitem__(self, key, value)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


class _Core:
    """Everything mutable of a TorchOptimizer, in one object that every view of it shares.

    (Lightning wraps the optimiser in an instance of a generated subclass that never runs
    ``__init__`` and forwards missing attributes to the original: methods must never store
    attributes on ``self``, only here.)
    """

    def __init__(self, model: Any, opt_state: Any) -> None:
        self.model = model
        self.opt_state = opt_state
        self.entries = _pairs(opt_state, unwrap(model))
        if not self.entries:
            raise ValueError(
                "TorchOptimizer: the model has no trainable parameters (no Leaf in the state "
                "tree); nothing to optimise"
            )
        self.groups: list[_Group] = []  # the list object param_groups always returns
        self.membership: list[tuple[int, ...]] = []
        self.ready = False

    def partition(self) -> list[list[int]]:
        """Entry indices grouped by equal rule, groups in order of their first entry."""
        by_rule: dict[Any, list[int]] = {}
        for i, (_, leaf, _) in enumerate(self.entries):
            by_rule.setdefault(leaf.rule, []).append(i)
        return list(by_rule.values())

    def new_group(self, members: list[int]) -> _Group:
        return _Group([self.entries[i][1] for i in members], [self.entries[i][2] for i in members])

    def sync(self) -> list[_Group]:
        """``groups`` re-derived from the tree when the sets of leaves sharing a rule changed."""
        parts = self.partition()
        membership = [tuple(p) for p in parts]
        if membership == self.membership:
            return self.groups
        old = dict(zip(self.membership, self.groups))
        owner = {i: g for m, g in old.items() for i in m}
        new: list[_Group] = []
        for m in membership:
            g = old.get(m)
            if g is None:
                g = self.new_group(list(m))
                parent = owner.get(m[0])
                if parent is not None:
                    for k, v in parent.items():
                        if k != "params" and k not in _MAPPED:
                            dict.__setitem__(g, k, v)
            new.append(g)
        if self.ready and len(new) != len(self.groups):
            warnings.warn(
                f"TorchOptimizer: the parameter groups changed from {len(self.groups)} to "
                f"{len(new)} (adjust_ gave some leaves a different rule); torch LR schedulers "
                f"made before pair their lists with the old groups: make them again",
                stacklevel=3,
            )
        self.groups[:] = new
        self.membership = membership
        return self.groups


def _flatten_state(state: Any) -> Any:
    """A Leaf's state as plain data: tuples become lists (tensors and numbers kept)."""
    if isinstance(state, tuple):
        return [_flatten_state(s) for s in state]
    return state


def _restore_state(template: Any, saved: Any, where: str) -> Any:
    """``saved`` (from ``_flatten_state``) in the structure, dtype and device of
    ``template`` (the rule's fresh state for the parameter)."""
    if isinstance(template, tuple):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(template):
            raise ValueError(
                f"TorchOptimizer.load_state_dict: the state at {where} does not fit the rule "
                f"(expected {len(template)} parts, got {saved!r:.60})"
            )
        return tuple(
            _restore_state(t, s, f"{where}[{i}]") for i, (t, s) in enumerate(zip(template, saved))
        )
    if isinstance(template, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != template.shape:
            got = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise ValueError(
                f"TorchOptimizer.load_state_dict: the state at {where} should be a tensor of "
                f"shape {tuple(template.shape)}, got {got}"
            )
        return template.copy_(saved)
    if template is None:
        return None
    if isinstance(saved, torch.Tensor) and saved.dim() == 0:
        saved = saved.item()
    return type(template)(saved) if isinstance(template, (int, float)) else saved


def _encode_rule(rule: Rule) -> Any:
    from .checkpoint import _encode, _Writer

    writer = _Writer()
    out = _encode(rule, "rule", writer)
    if writer.tensors:
        raise ValueError(f"TorchOptimizer: cannot save the rule {rule!r}: it holds tensors")
    return out


def _decode_rule(data: Any, where: str) -> Rule:
    from .checkpoint import CheckpointError, _decode, _Reader

    try:
        rule = _decode(data, where, _Reader({}, "TorchOptimizer.load_state_dict"))
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not isinstance(rule, Rule):
        raise ValueError(
            f"TorchOptimizer.load_state_dict: {where} is not a rule ({type(rule).__name__})"
        )
    return rule


class TorchOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` driving fluxtrain's state tree, for code that expects one.

    ``TorchOptimizer(model, rule)`` sets up ``ft.setup(rule, model)``; pass an existing state
    tree instead to keep its rules and momenta.  ``step()`` is ``ft.update_(opt_state, model)``
    on the parameters' ``.grad`` (calling ``closure`` first, as torch's optimisers do), and
    ``zero_grad`` is torch's.  ``.opt_state`` is the tree: ``ft.adjust_``, ``ft.freeze_`` and
    ``ft.thaw_`` work on it as usual.

    ``param_groups`` has one group per set of leaves sharing a rule; ``group["lr"]`` is its
    ``eta`` and ``group["betas"]`` its ``beta``, and writing them adjusts the leaves (what LR
    schedulers do).  Other keys are kept as written.  When ``adjust_``/``freeze_`` change which
    leaves share a rule, the groups follow at the next read of ``param_groups`` (see the module
    documentation); ``freeze_`` never splits a group.  ``.state`` (torch's per-parameter dict)
    stays empty: the state lives in ``.opt_state``.  ``train()`` and ``eval()`` do nothing
    (Hugging Face ``Trainer`` calls them on optimisers that have them).

    Args:
        model: the model (a ``torch.nn.Module``, possibly wrapped by DDP or ``torch.compile``).
        rule_or_state: a rule such as ``ft.AdamW(1e-3)``, or a state from ``ft.setup``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = ft.TorchOptimizer(model, ft.Adam(0.1))
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> model(torch.ones(4, 2)).sum().backward()
        >>> opt.step(); sched.step()
        >>> opt.param_groups[0]["lr"], opt.opt_state.weight.rule.eta
        (0.05, 0.05)
    """

    def __init__(self, model: Any, rule_or_state: Any) -> None:
        if isinstance(rule_or_state, type) or isinstance(rule_or_state, Rule):
            opt_state = setup(rule_or_state, model)
        else:
            opt_state = rule_or_state
            if next(leaves(opt_state), None) is None:
                raise TypeError(
                    f"TorchOptimizer needs a rule such as ft.AdamW(1e-3) or a state tree from "
                    f"ft.setup, got {type(rule_or_state).__name__}"
                )
        core = _Core(model, opt_state)
        self._core = core
        groups = core.sync()
        defaults = {k: v for k, v in groups[0].items() if k in _MAPPED}
        # torch's __init__ sets the hooks and re-adds each group (add_param_group, below).
        super().__init__(list(groups), defaults)
        core.ready = True

    # -- param_groups lives in the shared core (torch's __init__ assigns it once) ------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        core = self._core
        return core.sync() if core.ready else core.groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        core = self._core
        if core.ready:
            raise AttributeError(
                "TorchOptimizer.param_groups cannot be replaced: its groups are the state "
                "tree's; use load_state_dict, or ft.adjust_ on .opt_state"
            )
        core.groups[:] = list(value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        core = self._core
        if core.ready:
            raise TypeError(
                "TorchOptimizer.add_param_group: the parameters come from the state tree; make "
                "a new TorchOptimizer (or ft.setup) for a model with more parameters"
            )
        core.groups.append(param_group)  # type: ignore[arg-type]

    @property
    def opt_state(self) -> Any:
        """The fluxtrain state tree (``ft.setup(rule, model)``) that ``step`` updates."""
        return self._core.opt_state

    @property
    def model(self) -> Any:
        """The model whose parameters ``step`` updates."""
        return self._core.model

    # -- torch.optim.Optimizer API ---------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run ``closure`` (forward and backward) if given, then ``ft.update_`` from ``.grad``.

        Returns what ``closure`` returned (the loss), or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        core = self._core
        update_(core.opt_state, core.model)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad`` (to ``None``, or to zeros), as torch does."""
        for _, _, p in self._core.entries:
            g = p.grad
            if g is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
                g.zero_()

    def train(self) -> None:
        """Nothing to do (for tools that switch schedule-free optimisers' modes)."""

    def eval(self) -> None:
        """Nothing to do (for tools that switch schedule-free optimisers' modes)."""

    def state_dict(self) -> dict[str, Any]:
        """Torch's format with fluxtrain's contents: ``{"state": {i: ...}, "param_groups":
        [...]}``, made of dicts, lists, strings, numbers and tensors only.

        ``state[i]`` holds parameter ``i``'s ``path``, ``frozen`` flag and rule ``state``
        (parameters numbered in tree order); each group has its torch keys, ``"params"``
        (indices) and ``"fluxtrain_rule"``.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        core = self._core
        groups = core.sync()
        index = {id(leaf): i for i, (_, leaf, _) in enumerate(core.entries)}
        state = {
            i: {"path": path, "frozen": leaf.frozen, "state": _flatten_state(leaf.state)}
            for i, (path, leaf, _) in enumerate(core.entries)
        }
        saved_groups = []
        for g in groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
            d["params"] = [index[id(leaf)] for leaf in g._leaves]
            d["fluxtrain_rule"] = _encode_rule(g._leaves[0].rule)
            saved_groups.append(d)
        out: dict[str, Any] = {"state": state, "param_groups": saved_groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore rules, states, frozen flags and group keys from ``state_dict``'s output.

        The group dicts keep their identity and take the saved keys.  Raises ``ValueError``
        naming what does not fit (another model, another number of parameters, a state dict
        of another optimiser).
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        core = self._core
        saved_groups, saved_state = _check_state_dict(state_dict, len(core.entries))
        extras: dict[int, dict[str, Any]] = {}
        restored: list[tuple[Leaf, Rule, Any, bool]] = []
        for gi, sg in enumerate(saved_groups):
            rule = _decode_rule(sg["fluxtrain_rule"], f"param_groups[{gi}]['fluxtrain_rule']")
            keys = {k: v for k, v in sg.items() if k not in ("params", "fluxtrain_rule")}
            for i in sg["params"]:
                path, leaf, p = core.entries[i]
                entry = saved_state.get(i, saved_state.get(str(i)))
                if not isinstance(entry, dict):
                    raise ValueError(
                        f"TorchOptimizer.load_state_dict: no state for parameter {i} ({path})"
                    )
                if entry.get("path", path) != path:
                    raise ValueError(
                        f"TorchOptimizer.load_state_dict: parameter {i} was saved from "
                        f"{entry['path']!r} but here it is {path!r}: was the state dict saved "
                        f"for another model?"
                    )
                with torch.no_grad():
                    template = rule.init(p.detach())
                    st = _restore_state(template, entry.get("state"), f"{path} (parameter {i})")
                restored.append((leaf, rule, st, bool(entry.get("frozen", False))))
                extras[i] = keys
        # Everything checked: now change the leaves.
        for leaf, rule, st, frozen in restored:
            leaf.rule = rule
            leaf.state = st
            leaf.frozen = frozen
        groups = core.sync()
        index = {id(leaf): i for i, (_, leaf, _) in enumerate(core.entries)}
        for g in groups:
            keys = extras[index[id(g._leaves[0])]]
            for k in [k for k in g if k != "params" and k not in _MAPPED]:
                dict.__delitem__(g, k)
            for k, v in keys.items():
                if k not in _MAPPED:
                    dict.__setitem__(g, k, v)
            g._refresh()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for i, g in enumerate(self.param_groups):
            n = len(g["params"])
            lines.append(f"  group {i}: {n} parameter(s), {g._leaves[0].rule!r}")
        return "\n".join([*lines, ")"])


def _check_state_dict(state_dict: Any, n: int) -> tuple[list[dict], dict]:
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(
            "TorchOptimizer.load_state_dict needs a dict with 'state' and 'param_groups' (from "
            "TorchOptimizer.state_dict())"
        )
    groups, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise ValueError("TorchOptimizer.load_state_dict: malformed 'param_groups' or 'state'")
    seen: list[int] = []
    for gi, g in enumerate(groups):
        if not isinstance(g, dict) or "fluxtrain_rule" not in g:
            raise ValueError(
                f"TorchOptimizer.load_state_dict: param_groups[{gi}] has no 'fluxtrain_rule': "
                f"this state dict was not made by TorchOptimizer.state_dict() (a torch.optim "
                f"optimiser's state cannot be loaded into fluxtrain's rules)"
            )
        seen.extend(g.get("params", []))
    if sorted(seen) != list(range(n)):
        raise ValueError(
            f"TorchOptimizer.load_state_dict: the state dict covers {len(seen)} parameter(s) "
            f"but this optimiser has {n}: was it saved for another model?"
        )
    return groups, state
