"""Single-pass kernels compiled from a rule's own maths (``torch.compile``).

A rule's ``apply`` is written once, in rules.py, with ordinary torch operations.  Run eagerly,
each operation is a pass over memory (Adam-like rules make eight or more); compiled by
TorchInductor, the same maths becomes one loop that reads each tensor once and writes it once,
like PyTorch's hand-written fused kernels.  This module compiles it:

* **Hyperparameters and counters are 0-d tensors**, not constants: the kernel takes a copy of
  the rule whose float fields are 0-d float64 tensors, and the state's scalars (``beta^t``,
  step counters) likewise.  ``adjust_``, a Scheduler or a new step count change values, never
  the compiled code.  Only the rule's structure (its class, flags such as ``centred``, the
  chain's members), the dtype and the device select a kernel.
* **Bounded compile time**: one kernel per structure, dtype and device, compiled with dynamic
  shapes over 1-D views, whatever the model.  A parameter of at least ``big_numel`` elements is
  one call on its own storage; the smaller ones of a group are gathered into one flat scratch
  tensor, run as one call, and copied back (their bytes are a small share of real models).
* Only groups of at least ``min_numel`` elements are compiled (compiling takes seconds, which
  small models would never win back); smaller groups, lower precisions, tensor subclasses and
  rules outside ``COMPILABLE`` use the eager paths of the engine.  If compiling fails
  (no C++ compiler, say), the engine warns once and stays eager for that kernel.

Configure with ``configure``; ``FLUXTRAIN_COMPILE=0`` in the environment turns it off.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import warnings
from typing import Any

import torch

from . import rules as R
from .rules import OptimiserChain, Rule

__all__ = ["COMPILABLE", "compile_count", "configure"]

# Rules whose maths is elementwise with no data-dependent Python control flow.
COMPILABLE: tuple[type, ...] = (
    R.Descent, R.Momentum, R.Nesterov, R.RMSProp, R.Adam, R.AdamW, R.NAdam, R.AdaBelief,
    R.Lion, R.OAdam, R.AdaGrad, R.AdaDelta, R.AdaMax, R.AMSGrad, R.WeightDecay, R.SignDecay,
    R.ClipGrad, R.Rprop, OptimiserChain,
)  # fmt: skip


@dataclasses.dataclass
class _Settings:
    enabled: bool = os.environ.get("FLUXTRAIN_COMPILE", "1") not in ("0", "false", "False")
    min_numel: int = 1 << 20
    big_numel: int = 1 << 15
    chunk: int = 8


settings = _Settings()
_kernels: dict[tuple, Any] = {}
_failed: set[tuple] = set()
_compiles = [0]
# Scalars in float64, as torch.optim computes its bias corrections: 1 - 0.999^t in float32
# would be off by 1e-4 relative at t = 1.
HYPER_DTYPE = torch.float64


def configure(
    enabled: bool | None = None,
    min_numel: int | None = None,
    big_numel: int | None = None,
    chunk: int | None = None,
) -> dict[str, Any]:
    """Set when the engine compiles a rule's maths; returns the settings now in force.

    ``enabled=False`` keeps every update eager; ``min_numel`` is the smallest group (in elements)
    that is compiled; ``big_numel`` the smallest parameter that is updated where it lies (the
    smaller ones are gathered); ``chunk`` how many parameters one kernel call takes.

    Example:
        >>> import fluxtrain as ft
        >>> ft.optimisers.compiled.configure()["enabled"] in (True, False)
        True
    """
    if enabled is not None:
        settings.enabled = bool(enabled)
    if min_numel is not None:
        settings.min_numel = int(min_numel)
    if big_numel is not None:
        settings.big_numel = max(2, int(big_numel))
    if chunk is not None:
        settings.chunk = max(1, int(chunk))
    return dataclasses.asdict(settings)


def compile_count() -> int:
    """How many kernels have been compiled in this process (tests check that adjust_ and
    schedules add none)."""
    return _compiles[0]


# ---------------------------------------------------------------------------------------------
# The rule as tensors


def _structure(rule: Rule) -> tuple | None:
    """What selects a kernel: classes and non-numeric fields; ``None`` if not compilable."""
    if hasattr(rule, "rule_at"):
        return None  # the engine passes a Scheduler's rule at step t instead
    if not isinstance(rule, COMPILABLE):
        return None
    if isinstance(rule, OptimiserChain):
        parts = [_structure(o) for o in rule.opts]
        return None if any(p is None for p in parts) else ("chain", *parts)
    fixed = []
    for f in dataclasses.fields(rule):
        v = getattr(rule, f.name)
        if isinstance(v, bool) or isinstance(v, str):
            fixed.append((f.name, v))
    return (type(rule), tuple(fixed))


def _as_tensors(rule: Rule) -> Rule:
    """A copy of ``rule`` whose numeric fields are 0-d float64 tensors (built without
    ``__init__``: validation already ran on the original)."""
    if isinstance(rule, OptimiserChain):
        return OptimiserChain(*[_as_tensors(o) for o in rule.opts])
    new = object.__new__(type(rule))
    for f in dataclasses.fields(rule):
        v = getattr(rule, f.name)
        if isinstance(v, bool) or isinstance(v, str):
            pass
        elif isinstance(v, numbers.Real):
            v = torch.tensor(float(v), dtype=HYPER_DTYPE)
        elif isinstance(v, tuple):
            v = tuple(torch.tensor(float(a), dtype=HYPER_DTYPE) for a in v)
        object.__setattr__(new, f.name, v)
    return new


def _scalar_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(v)
    dtype = torch.int64 if isinstance(v, numbers.Integral) else HYPER_DTYPE
    return torch.tensor(v, dtype=dtype)


def _from_tensor(t: Any, like: Any) -> Any:
    if like is None:
        return None
    value = t.item() if isinstance(t, torch.Tensor) else t
    return int(value) if isinstance(like, numbers.Integral) else float(value)


# ---------------------------------------------------------------------------------------------
# Kernels


def _make_kernel(scalar_pos: tuple[int, ...]) -> Any:
    from .engine import atoms

    def kernel(rule: Rule, states: list, xs: list, dxs: list) -> list[Any]:
        outs: list[Any] = []
        for state, x, dx in zip(states, xs, dxs):
            new_state, update = rule.apply(state, x, dx)
            x.sub_(update)
            if not outs:
                parts = atoms(new_state)
                outs = [parts[i] for i in scalar_pos]  # the same for every entry
        return outs

    # Each kernel gets its own code object: torch.compile caches (and limits recompiles) per
    # code object, and every structure is its own kernel.
    name = f"fluxtrain_kernel_{len(_kernels)}"
    fresh = types.FunctionType(
        kernel.__code__.replace(co_name=name), kernel.__globals__, name, None,
        kernel.__closure__,
    )  # fmt: skip

    def count_and_compile(gm: Any, example_inputs: Any) -> Any:
        from torch._inductor.compile_fx import compile_fx

        _compiles[0] += 1
        # One C++ function per parameter: fused horizontally into one function, the loops of
        # a chunk grow too large for the C++ compiler to inline the vector operations, and run
        # several times slower (measured: 8 NAdam loops in one function took 7x longer).
        with torch._inductor.config.patch({"cpp.max_horizontal_fusion_size": 1}):
            return compile_fx(gm, example_inputs)

    compiled_kernel = torch.compile(fresh, backend=count_and_compile, dynamic=True, fullgraph=True)

    def run(*args: Any) -> Any:
        # Each entry's length is its own symbol: without this, entries of equal length at the
        # first call would share one and every other mix of lengths would recompile.
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return compiled_kernel(*args)

    return run


def _kernel_for(key: tuple, scalar_pos: tuple[int, ...]) -> Any:
    k = _kernels.get(key)
    if k is None:
        k = _kernels[key] = _make_kernel(scalar_pos)
    return k


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over ``t``'s own memory (no copy).  Unlike ``t.view(-1)`` it has no
    ``_base``, so every parameter, whatever its rank, fits the one compiled kernel (a view
    would make the compiler specialise on its base's shape)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,)
    )


def try_compiled(g: Any) -> bool:
    """Update group ``g`` with its compiled kernel; ``False`` if it should run eagerly."""
    from .engine import atoms

    if not settings.enabled:
        return False
    items = g.items
    x0 = items[0].x
    if x0.dtype not in (torch.float32, torch.float64) or x0.device.type not in ("cpu", "cuda"):
        return False
    if not all(w.x.is_contiguous() and w.dx.is_contiguous() for w in items):
        return False
    total = sum(w.x.numel() for w in items)
    if total < settings.min_numel:
        return False
    rule = g.rule
    leaf_state = items[0].leaf.state
    scheduled = hasattr(rule, "rule_at") and isinstance(leaf_state, tuple)
    if scheduled:
        rule, leaf_state = rule.rule_at(leaf_state[0]), leaf_state[1]
    structure = _structure(rule)
    if structure is None:
        return False
    template = atoms(leaf_state)
    scalar_pos = tuple(i for i, a in enumerate(template) if not isinstance(a, torch.Tensor))
    if any(template[i] is not None and not isinstance(template[i], numbers.Real)
           for i in scalar_pos):  # fmt: skip
        return False
    key = (structure, x0.dtype, x0.device.type, len(template), scalar_pos)
    if key in _failed:
        return False
    kernel = _kernel_for(key, scalar_pos)
    hyper = _as_tensors(rule)
    scalars = {i: _scalar_tensor(template[i]) for i in scalar_pos if template[i] is not None}
    with_scalars = _swapper(leaf_state, scalars)

    def inner(w: Any) -> Any:
        return w.leaf.state[1] if scheduled else w.leaf.state

    big = [w for w in items if w.x.numel() >= settings.big_numel]
    small = [w for w in items if w.x.numel() < settings.big_numel]
    if sum(w.x.numel() for w in small) < 2:
        big, small = items, []  # a lone tiny tensor would make dynamic shapes specialise
    entries = [(*_aliases(w, inner(w))[:2], _flat(w.dx)) for w in big]
    scatter = _gather_small(small, inner, entries) if small else None
    k = settings.chunk
    pad = _padding(leaf_state, x0, k - (len(entries) % k or k))
    entries += pad
    outs = None
    for start in range(0, len(entries), k):
        chunk = entries[start : start + k]
        try:
            got = kernel(hyper, [with_scalars(e[0]) for e in chunk], [e[1] for e in chunk],
                         [e[2] for e in chunk])  # fmt: skip
        except Exception as e:
            if start:
                raise
            _failed.add(key)
            warnings.warn(
                f"fluxtrain could not compile {type(rule).__name__}'s maths ({type(e).__name__}: "
                f"{str(e)[:200]}); it runs eagerly instead",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        outs = got if outs is None else outs
    if scatter is not None:
        torch._foreach_copy_(*scatter)
    if not scalar_pos and not scheduled:
        return True  # the state's tensors were updated in place; nothing else changed
    new_scalars = {i: _from_tensor(v, template[i]) for i, v in zip(scalar_pos, outs)}
    renew = _swapper(leaf_state, new_scalars)
    for w in items:
        new = renew(inner(w))
        w.leaf.state = (w.leaf.state[0] + 1, new) if scheduled else new
        cache = w.leaf._kernel_cache
        if cache is not None:
            w.leaf._kernel_cache = (new, *cache[1:])  # same tensors, new scalars
    return True


def _aliases(w: Any, state: Any) -> tuple[Any, torch.Tensor, list[Any]]:
    """The leaf's state with 1-D aliases of its tensors, the parameter's 1-D alias, and the
    aliased state's atoms; kept on the Leaf between steps while its state (as this module last
    wrote it) and the parameter's memory are the same.  (The scalars in the aliased state are
    stale: the kernel call swaps in the current ones.)"""
    from .engine import atoms, fill

    cache = w.leaf._kernel_cache
    ptr = w.x.data_ptr()
    if cache is not None and cache[0] is state and cache[1] == ptr:
        return cache[2], cache[3], cache[4]
    parts = [_flat(a) if isinstance(a, torch.Tensor) else a for a in atoms(state)]
    aliased, x = fill(state, parts), _flat(w.x)
    w.leaf._kernel_cache = (state, ptr, aliased, x, parts)
    return aliased, x, parts


def _swapper(template: Any, values: dict[int, Any]) -> Any:
    """A function giving a state like ``template`` with its scalars at the given atom positions
    replaced by ``values``; scalar-only parts are built once and shared, so that rewriting the
    state of every leaf of a group costs a tuple each (the leaves of a group share scalars)."""

    def plan(t: Any, pos: int) -> tuple[tuple, int]:
        if isinstance(t, tuple):
            subs = []
            for e in t:
                p, pos = plan(e, pos)
                subs.append(p)
            if all(p[0] == "const" for p in subs):
                return ("const", tuple(p[1] for p in subs)), pos
            if all(p[0] == "keep" for p in subs):
                return ("keep",), pos
            return ("tuple", subs), pos
        if pos in values:
            return ("const", values[pos]), pos + 1
        return ("keep",), pos + 1

    def apply(p: tuple, s: Any) -> Any:
        if p[0] == "keep":
            return s
        if p[0] == "const":
            return p[1]
        return tuple(apply(q, e) for q, e in zip(p[1], s))

    top, _ = plan(template, 0)
    if top[0] == "keep":
        return lambda s: s
    if top[0] == "tuple" and all(q[0] != "tuple" for q in top[1]):
        kinds = [(q[0] == "keep", q[1] if q[0] == "const" else None) for q in top[1]]
        return lambda s: tuple(e if keep else c for (keep, c), e in zip(kinds, s))
    return lambda s: apply(top, s)


def _gather_small(items: list[Any], inner: Any, entries: list) -> tuple[list, list]:
    """Add one entry holding the small tensors gathered flat; return the copies that put the
    results back (outputs, inputs) for ``torch._foreach_copy_``."""
    from .engine import fill, gather, gather_states, scatter

    al = [_aliases(w, inner(w)) for w in items]  # 1-D aliases, kept between steps
    parts, slots = gather_states([a[2] for a in al])
    xs = [a[1] for a in al]
    x = gather(xs, "x")
    dx = gather([w.dx for w in items], "dx")
    entries.append((fill(inner(items[0]), parts), x, dx))
    outs: list[torch.Tensor] = []
    ins: list[torch.Tensor] = []
    scatter(x, xs, outs, ins)
    for i in slots:
        scatter(parts[i], [a[2][i] for a in al], outs, ins)
    return outs, ins


_pads: dict[tuple, list] = {}


def _padding(state: Any, like: torch.Tensor, n: int) -> list:
    """``n`` throwaway entries of two elements that fill the last chunk (one compiled kernel
    serves every number of parameters); their values are never read."""
    from .engine import atoms, fill

    if n == 0:
        return []
    template = atoms(state)
    key = (like.dtype, like.device, tuple(isinstance(a, torch.Tensor) for a in template), n)
    pad = _pads.get(key)
    if pad is None:

        def two() -> torch.Tensor:
            return torch.zeros(2, dtype=like.dtype, device=like.device)

        pad = _pads[key] = [
            (fill(state, [two() if isinstance(a, torch.Tensor) else a for a in template]),
             two(), two())
            for _ in range(n)
        ]  # fmt: skip
    return pad
