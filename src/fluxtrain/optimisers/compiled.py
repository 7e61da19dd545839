"""Single-pass kernels compiled from a rule's own maths (``torch.compile``).

A rule's ``apply`` is written once, in rules.py, with ordinary torch operations.  Run eagerly,
each operation is a pass over memory (Adam-like rules make eight or more); compiled by
TorchInductor, the same maths becomes one loop that reads each tensor once and writes it once,
like PyTorch's hand-written fused kernels.  This module compiles it:

* **Hyperparameters and counters are 0-d tensors**, not constants: the kernel takes the rule's
  numeric fields and the state's scalars (``beta^t``, step counters) as 0-d float64 tensors and
  writes the new scalars into 0-d output tensors.  ``adjust_``, a Scheduler or a new step count
  change values, never the compiled code.  Only the rule's structure (its class, flags such as
  ``centred``, the chain's members), the dtype and the device select a kernel.
* **Bounded compile time**: one kernel per structure, dtype and device, compiled once with
  dynamic shapes over 1-D aliases of ``chunk`` parameters (each parameter's length its own
  symbol), whatever the model: a group is a series of calls of that one kernel, the last chunk
  filled with two-element throwaway entries.
* **Called directly.**  After the one compiling call through ``torch.compile``, the kernel is
  called without TorchDynamo: the compiled graph's inputs are mapped once to the call's
  arguments, and the conditions Dynamo's guards would check (contiguous tensors of the
  kernel's dtypes on its device, lengths of at least 2, no gradient tracking) hold by
  construction here.  Parameters and state go in as cached 1-D aliases, gradients as they are
  (a view per gradient and step would cost more than the call), with TorchInductor's size
  asserts off: the kernel reads each length from the parameter's alias, which comes first.
  This keeps a call at a few microseconds, so even a model of hundreds of small tensors runs
  each one in place, with no gathering.
* Only groups of at least ``min_numel`` elements are compiled (compiling takes seconds, which
  small models would never win back); smaller groups, lower precisions, tensor subclasses and
  rules outside ``COMPILABLE`` use the eager paths of the engine.  If compiling fails
  (no C++ compiler, say), the engine warns once and stays eager for that kernel.

Configure with ``configure``; ``FLUXTRAIN_COMPILE=0`` in the environment turns it off.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
import os
import types
import warnings
from typing import Any

import torch

from . import rules as R
from .engine import Work, _run_single, atoms, fill
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
    chunk: int = 8


settings = _Settings()
_kernels: dict[tuple, Any] = {}
_failed: set[tuple] = set()
_compiles = [0]
# Scalars in float64, as torch.optim computes its bias corrections: 1 - 0.999^t in float32
# would be off by 1e-4 relative at t = 1.
HYPER_DTYPE = torch.float64
# The length of the stand-in tensors a kernel is compiled on (large enough to be run on all
# threads).
_COMPILE_LENGTH = 1 << 16


def configure(
    enabled: bool | None = None, min_numel: int | None = None, chunk: int | None = None
) -> dict[str, Any]:
    """Set when the engine compiles a rule's maths; returns the settings now in force.

    ``enabled=False`` keeps every update eager; ``min_numel`` is the smallest group (in elements)
    that is compiled; ``chunk`` how many parameters one kernel call takes.

    Example:
        >>> import fluxtrain as ft
        >>> ft.optimisers.compiled.configure()["enabled"] in (True, False)
        True
    """
    if enabled is not None:
        settings.enabled = bool(enabled)
    if min_numel is not None:
        settings.min_numel = int(min_numel)
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
        if isinstance(v, bool) or isinstance(v, str) or v is None:
            fixed.append((f.name, v))
        elif not isinstance(v, numbers.Real) and not (
            isinstance(v, tuple) and all(isinstance(a, numbers.Real) for a in v)
        ):
            return None
    return (type(rule), tuple(fixed))


def _hyperparameters(rule: Rule) -> list[float]:
    """The rule's numeric fields in order (tuples flattened, chains walked)."""
    if isinstance(rule, OptimiserChain):
        return [v for o in rule.opts for v in _hyperparameters(o)]
    out: list[float] = []
    for f in dataclasses.fields(rule):
        v = getattr(rule, f.name)
        if isinstance(v, bool) or isinstance(v, str) or v is None:
            continue
        out.extend(float(a) for a in v) if isinstance(v, tuple) else out.append(float(v))
    return out


def _rebuild(template: Rule, values: tuple, pos: int) -> tuple[Rule, int]:
    """A rule like ``template`` whose numeric fields are ``values[pos:]`` (0-d tensors inside
    the kernel), built without ``__init__``: validation ran on the original."""
    new = object.__new__(type(template))
    if isinstance(template, OptimiserChain):
        opts = []
        for o in template.opts:
            sub, pos = _rebuild(o, values, pos)
            opts.append(sub)
        object.__setattr__(new, "opts", tuple(opts))
        return new, pos
    for f in dataclasses.fields(template):
        v = getattr(template, f.name)
        if isinstance(v, tuple):
            v, pos = tuple(values[pos : pos + len(v)]), pos + len(v)
        elif not (isinstance(v, bool) or isinstance(v, str) or v is None):
            v, pos = values[pos], pos + 1
        object.__setattr__(new, f.name, v)
    return new, pos


def _scalar_tensor(v: Any) -> torch.Tensor:
    # Counters too are float64 (exact up to 2^53): one dtype for every scalar keeps the kernel's
    # inputs of fixed dtypes, which its direct calls rely on, whatever a rule returns.
    return torch.tensor(float(v), dtype=HYPER_DTYPE)


def _from_tensor(t: torch.Tensor, like: Any) -> Any:
    """A new scalar as a Python number, an ``int`` where the old one was an int and the new one
    is whole (a step counter), else a ``float``."""
    value = float(t.item())
    return int(value) if isinstance(like, numbers.Integral) and value.is_integer() else value


# ---------------------------------------------------------------------------------------------
# Kernels


class _Kernel:
    """One rule structure's maths over ``chunk`` parameters, compiled once.

    Arguments of a call, all tensors: the rule's numeric fields, the state's scalars, as many
    1-element tensors for the new scalars, then for each parameter its 1-D alias, its gradient's and
    its state tensors'.
    """

    def __init__(self, rule: Rule, state: Any, scalar_pos: tuple[int, ...]) -> None:
        # Only the state's shape is kept (not the first leaf's tensors): the parts are filled in.
        template = [None if isinstance(a, torch.Tensor) else a for a in atoms(state)]
        tensor_pos = [i for i, a in enumerate(atoms(state)) if isinstance(a, torch.Tensor)]
        state = fill(state, template)
        n_hyper = len(_hyperparameters(rule))
        n_scalar = len(scalar_pos)
        start = n_hyper + 2 * n_scalar
        per_entry = 2 + len(tensor_pos)

        def kernel(*args: torch.Tensor) -> None:
            rule_t, _ = _rebuild(rule, args, 0)
            scalars = args[n_hyper : n_hyper + n_scalar]
            for j in range(start, len(args), per_entry):
                parts = list(template)
                for i, s in zip(scalar_pos, scalars):
                    parts[i] = s
                for i, t in zip(tensor_pos, args[j + 2 : j + per_entry]):
                    parts[i] = t
                new_state, update = rule_t.apply(fill(state, parts), args[j], args[j + 1])
                args[j].sub_(update)
                if j == start:  # the new scalars are the same for every parameter
                    new = atoms(new_state)
                    for out, i in zip(args[n_hyper + n_scalar : start], scalar_pos):
                        if isinstance(new[i], torch.Tensor):
                            out.copy_(new[i])
                        else:
                            out.fill_(new[i])

        # Each kernel gets its own code object: torch.compile caches (and limits recompiles) per
        # code object, and every structure is its own kernel.
        name = f"fluxtrain_kernel_{len(_kernels)}"
        fresh = types.FunctionType(
            kernel.__code__.replace(co_name=name), kernel.__globals__, name, None,
            kernel.__closure__,
        )  # fmt: skip
        self._dynamo = torch.compile(fresh, backend=self._backend, dynamic=True, fullgraph=True)
        self._calling: list[torch.Tensor] | None = None
        self._start = start
        self._tried: set[int] = set()
        self._direct: dict[int, tuple[Any, list[int]]] = {}  # number of arguments -> (fn, order)

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        _compiles[0] += 1
        calling = self._calling or []
        gm, example_inputs, perm = _inputs_in_call_order(gm, example_inputs, calling)
        order = _argument_order(gm, example_inputs, calling)
        # One C++ function per parameter: fused horizontally into one function, the loops of
        # a chunk grow too large for the C++ compiler to inline the vector operations, and run
        # several times slower (measured: 8 NAdam loops in one function took 7x longer).
        # No size asserts: the direct calls pass tensors whose sizes hold by construction
        # (a gradient may be N-D; only its memory and its length, passed separately, count).
        patch = {"cpp.max_horizontal_fusion_size": 1, "size_asserts": False}
        with torch._inductor.config.patch(patch):
            split = _split_scalars(gm)
            if split is None:
                fn = _compile(gm, example_inputs)
            else:
                main_gm, scalar_gm, positions = split
                scalar_inputs = [example_inputs[i] for i in positions]
                boundary = list(scalar_gm(*scalar_inputs))
                scalar_fn = _compile(scalar_gm, scalar_inputs)
                main_fn = _compile(main_gm, [*example_inputs, *boundary])

                last: list[Any] = [(), ()]  # the scalar inputs and results of the last call

                def fn(*args: Any) -> Any:
                    # The chunks of one step share their scalar inputs (the same tensors, made
                    # for that step and never written): their results are computed once.
                    ins = [args[i] for i in positions]
                    if len(ins) != len(last[0]) or not all(map(operator.is_, ins, last[0])):
                        last[0], last[1] = ins, scalar_fn(*ins)
                    return main_fn(*args, *last[1])

        if order is not None:
            self._direct[len(calling)] = (fn, order)
        compiled_fn = fn
        return lambda *args: compiled_fn(*[args[i] for i in perm])  # in Dynamo's order

    def prepare(
        self, head: list[torch.Tensor], kinds: tuple, device: torch.device, chunk: int
    ) -> tuple[Any, list[int]] | None:
        """Compile the kernel for ``chunk`` parameters (once); return the compiled function
        and its argument order for direct calls, or ``None`` if calls must go through Dynamo.

        It is compiled on stand-ins of one large length, not on a model's tensors:
        TorchInductor decides from the lengths it sees whether each loop runs on several
        threads, and a loop compiled for a small tensor would later run a large one on one.
        """
        n = len(head) + chunk * (1 + len(kinds))
        if n not in self._tried:
            self._tried.add(n)
            dtypes = (kinds[0], *kinds)  # x, dx, then the state tensors
            stand_ins = [
                torch.zeros(_COMPILE_LENGTH, dtype=d, device=device)
                for _ in range(chunk)
                for d in dtypes
            ]
            self._through_dynamo(head + stand_ins)
        return self._direct.get(n)

    def __call__(self, args: list[torch.Tensor]) -> None:
        """A call through Dynamo, for when the direct calls could not be set up."""
        # N-D tensors and views would make Dynamo specialise on their (bases') shapes
        flat = [a if a.dim() == 0 or (a.dim() == 1 and a._base is None) else _flat(a) for a in args]
        self._through_dynamo(flat)

    def _through_dynamo(self, args: list[torch.Tensor]) -> None:
        self._calling = args
        try:
            # Each entry's length is its own symbol: without this, entries of equal length
            # would share one, and other mixes of lengths would recompile.  The kernel's own
            # numbers (its layout, the template rule's) stay constants.
            with (
                torch.fx.experimental._config.patch(use_duck_shape=False),
                torch._dynamo.config.patch(specialize_int=True, specialize_float=True),
            ):
                self._dynamo(*args)
        finally:
            self._calling = None


def _compile(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
    """TorchInductor's function for ``gm``: the generated code's own entry point when it takes
    ``gm``'s inputs as they are, else what ``compile_fx`` returns.

    Between ``compile_fx``'s result and the generated code sit AOTAutograd's runtime wrappers
    (about 5 us a call).  For these graphs (no autograd, no tensor subclasses, every mutation
    done in place by the generated code) they only bump the version counters of our own
    aliases, which nothing reads: the engine bumps the parameters' counters itself.  The
    tests against the per-tensor reference would catch a mutation left to the wrappers.
    """
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    inner: list[tuple[torch.fx.GraphModule, Any]] = []

    def capture(graph: torch.fx.GraphModule, inputs: list, **kw: Any) -> Any:
        out = compile_fx_inner(graph, inputs, **kw)
        inner.append((graph, out))
        return out

    # AOTAutograd's own cache would hand back the wrapped function without compiling: off
    # (TorchInductor's FX-graph cache still spares the C++ compiler a second run).
    with torch._functorch.config.patch(enable_autograd_cache=False):
        wrapped = compile_fx(gm, example_inputs, inner_compile=capture)
    if len(inner) != 1:
        return wrapped
    graph, out = inner[0]
    call = getattr(out, "current_callable", None)
    n_inputs = sum(1 for n in graph.graph.nodes if n.op == "placeholder")
    if call is None or n_inputs != len(example_inputs):
        return wrapped
    return lambda *args: call(list(args))


def _split_scalars(
    gm: torch.fx.GraphModule,
) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule, list[int]] | None:
    """Move the graph's scalar maths (0-d tensors from 0-d inputs: ``b1 / (1 - b1 * b1t)``)
    into a graph of its own, whose results become new, last inputs of a copy of ``gm``
    (Dynamo's own graph is left as it is).

    TorchInductor would otherwise recompute it inside every element loop, where the C++
    compiler cannot hoist it (it sits under the loop's tail test): NAdam on 25M elements took
    10.5 ms that way and 8.9 ms with its scalars computed once (fused Adam: 8.4 ms).  Returns
    the main graph, the scalar graph and the positions of its inputs among ``gm``'s, or
    ``None`` if there is nothing to move.
    """
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]

    def zero_dim(n: torch.fx.Node) -> bool:
        v = n.meta.get("example_value")
        return isinstance(v, torch.Tensor) and v.dim() == 0

    scalar: list[torch.fx.Node] = []
    inside: set[torch.fx.Node] = set()
    for n in graph.nodes:
        if n.op not in ("call_function", "call_method") or not zero_dim(n):
            continue
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            continue  # an in-place op: it stays where it is
        if all((a.op == "placeholder" and zero_dim(a)) or a in inside for a in n.all_input_nodes):
            scalar.append(n)
            inside.add(n)
    boundary = [n for n in scalar if any(u not in inside for u in n.users)]
    if not boundary:
        return None
    used = [p for p in placeholders if any(u in inside for u in p.users)]
    positions = [placeholders.index(p) for p in used]
    sub = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for p in used:
        env[p] = sub.placeholder(p.name)
        env[p].meta = dict(p.meta)
    for n in scalar:
        env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(tuple(env[b] for b in boundary))
    scalar_gm = torch.fx.GraphModule(gm, sub)
    last = placeholders[-1]
    for k, b in enumerate(boundary):
        with graph.inserting_after(last):
            last = graph.placeholder(f"fluxtrain_scalar_{k}")
        last.meta = dict(b.meta)
        b.replace_all_uses_with(last, delete_user_cb=lambda user: user not in inside)
    for n in reversed(scalar):
        graph.erase_node(n)
    return torch.fx.GraphModule(gm, graph), scalar_gm, positions


def _inputs_in_call_order(
    gm: torch.fx.GraphModule, example_inputs: list, args: list
) -> tuple[torch.fx.GraphModule, list, list[int]]:
    """A copy of ``gm`` whose tensor inputs come in the order of the call's arguments (lengths
    last), the example inputs in that order, and the permutation from Dynamo's order.

    TorchInductor reads a length it is not given from the first input that has it.  In call
    order that is a parameter's own 1-D alias, never its gradient, which the direct calls pass
    as it is (N-D: its first dimension is not the length)."""
    index = {id(a): i for i, a in enumerate(args)}
    olds = [n for n in gm.graph.nodes if n.op == "placeholder"]
    perm = sorted(
        range(len(olds)),
        key=lambda k: (
            index.get(id(example_inputs[k]), len(args) + k)
            if isinstance(example_inputs[k], torch.Tensor)
            else len(args) + k
        ),
    )
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for k in perm:
        env[olds[k]] = graph.placeholder(olds[k].name)
        env[olds[k]].meta = dict(olds[k].meta)
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            env[n] = graph.node_copy(n, lambda a: env[a])
    return torch.fx.GraphModule(gm, graph), [example_inputs[k] for k in perm], perm


def _argument_order(gm: torch.fx.GraphModule, example_inputs: list, args: list) -> list | None:
    """For each input of Dynamo's graph, the index ``i`` of the call's argument it is (or
    ``~i`` for the length of argument ``i``); ``None`` if that cannot be read unambiguously
    (then every call goes through Dynamo, which is correct but slower)."""
    index = {id(a): i for i, a in enumerate(args)}
    if len(index) != len(args):
        return None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        return None
    length_of: dict[str, int] = {}
    order: list[int | None] = []
    for node, ex in zip(placeholders, example_inputs):
        if isinstance(ex, torch.Tensor):
            i = index.get(id(ex))
            if i is None:
                return None
            order.append(i)
            fake = node.meta.get("example_value")
            if fake is not None and fake.dim() == 1 and isinstance(fake.shape[0], torch.SymInt):
                length_of.setdefault(str(fake.shape[0].node.expr), i)
        else:
            order.append(None)
    for k, node in enumerate(placeholders):
        if order[k] is None:
            sym = node.meta.get("example_value")
            i = length_of.get(str(sym.node.expr)) if isinstance(sym, torch.SymInt) else None
            if i is None:
                return None
            order[k] = ~i
    return order  # type: ignore[return-value]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over ``t``'s own memory (no copy).  Unlike ``t.view(-1)`` it has no
    ``_base``, so every parameter, whatever its rank, fits the one compiled kernel (a view
    would make the compiler specialise on its base's shape)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,)
    )


class _Slot:
    """A place in a prepared kernel call that each step fills: the ``j``-th gradient
    (``_DX``), scalar of the state (``_IN``), new scalar's output (``_OUT``) or scheduled
    hyperparameter (``_HYPER``); ``numel`` is the length of the entry it belongs to."""

    __slots__ = ("j", "kind", "numel")

    def __init__(self, kind: int, j: int, numel: int = 0) -> None:
        self.kind, self.j, self.numel = kind, j, numel


_DX, _IN, _OUT, _HYPER = range(4)


def runner(g: Any) -> Any:
    """A function updating group ``g``'s leaves from their gradients with the rule's compiled
    kernel, or ``None`` if the group should run eagerly.

    The kernel is compiled (once per rule structure) and its calls prepared here: each call's
    arguments are laid out once, with the parameters' and state's aliases in place, so that a
    step only puts in the gradients and the state's scalars.
    """
    if not settings.enabled:
        return None
    items = g.items
    x0 = items[0].x
    if x0.dtype not in (torch.float32, torch.float64) or x0.device.type not in ("cpu", "cuda"):
        return None
    if sum(map(torch.Tensor.numel, [w.x for w in items])) < settings.min_numel:
        return None
    rule = g.rule
    leaf_state = items[0].leaf.state
    scheduled = hasattr(rule, "rule_at") and isinstance(leaf_state, tuple)
    now = rule.rule_at(leaf_state[0]) if scheduled else rule
    inner0 = leaf_state[1] if scheduled else leaf_state
    structure = _structure(now)
    if structure is None:
        return None
    template = atoms(inner0)
    scalar_pos = tuple(
        i for i, a in enumerate(template) if not isinstance(a, torch.Tensor) and a is not None
    )
    if any(not isinstance(template[i], numbers.Real) for i in scalar_pos):
        return None
    # Lengths 0 and 1 would make the compiler specialise; such leaves (rare) run eagerly.
    tiny: list[int] = []
    kept: list[int] = []
    statics: list[tuple] = []
    kinds = None
    for j, w in enumerate(items):
        x, dx = w.x, w.dx
        if x.numel() < 2:
            tiny.append(j)
            continue
        if not (x.is_contiguous() and dx.is_contiguous()) or dx.dtype != x.dtype:
            return None
        state = w.leaf.state[1] if scheduled else w.leaf.state
        cache = w.leaf._kernel_cache
        if cache is not None and cache[0] is state and cache[1] == x.data_ptr():
            cached = cache[2]
        else:
            cached = _aliases(w, state)
            if cached is None:
                return None
        if kinds is None:
            kinds = cached[2]
        elif cached[2] != kinds:
            return None
        kept.append(j)
        statics.append(cached)
    if kinds is None:
        return None
    key = (structure, x0.device.type, kinds, scalar_pos, len(template))
    if key in _failed:
        return None
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = _kernels[key] = _Kernel(now, inner0, scalar_pos)
    hyper = [torch.tensor(v, dtype=HYPER_DTYPE) for v in _hyperparameters(now)]
    per_entry = 1 + len(kinds)  # x, dx and the state tensors
    n_pad = -len(kept) % settings.chunk
    try:
        direct = kernel.prepare(
            [*hyper, *_scalar_heads(template, scalar_pos)], kinds, x0.device, settings.chunk
        )
    except Exception as e:
        _failed.add(key)
        warnings.warn(
            f"fluxtrain could not compile {type(now).__name__}'s maths ({type(e).__name__}: "
            f"{str(e)[:200]}); it runs eagerly instead",
            RuntimeWarning,
            stacklevel=6,  # the caller of update_
        )
        return None
    head: list[Any] = [_Slot(_HYPER, i) for i in range(len(hyper))] if scheduled else hyper
    head += [_Slot(_IN, i) for i in range(len(scalar_pos))]
    head += [_Slot(_OUT, i) for i in range(len(scalar_pos))]
    entries: list[Any] = []
    for j, (x_alias, state_aliases, _) in zip(kept, statics):
        entries += (x_alias, _Slot(_DX, j, x_alias.numel()), *state_aliases)
    entries += _padding(kinds, x0.device, n_pad)
    calls = []
    k = settings.chunk * per_entry
    for start in range(0, len(entries), k):
        args = head + entries[start : start + k]
        if direct is not None:
            fn, order = direct
            call = [args[i] if i >= 0 else _length(args[~i]) for i in order]
        else:
            fn, call = (lambda *a: kernel(list(a))), args
        slots = [(p, v.kind, v.j) for p, v in enumerate(call) if type(v) is _Slot]
        calls.append((fn, call, slots))
    leaves = [w.leaf for w in items]
    xs = [w.x for w in items]
    updated = [xs[j] for j in kept]
    paths = [w.path for w in items]

    def run(dxs: list[torch.Tensor]) -> None:
        state = leaves[kept[0]].state
        if scheduled:
            state = state[1]
            hyper_now = [
                torch.tensor(v, dtype=HYPER_DTYPE)
                for v in _hyperparameters(rule.rule_at(leaves[kept[0]].state[0]))
            ]
        else:
            hyper_now = hyper
        parts = atoms(state) if scalar_pos else []
        heads = _scalar_heads(parts, scalar_pos)
        ins, outs = heads[: len(scalar_pos)], heads[len(scalar_pos) :]
        values = (dxs, ins, outs, hyper_now)
        for fn, call, slots in calls:
            filled = call.copy()  # the prepared call keeps no gradient alive between steps
            for p, kind, j in slots:
                filled[p] = values[kind][j]
            fn(*filled)
        # The kernel wrote through aliases with version counters of their own: tell autograd
        # that the parameters changed, as an in-place torch.optim step does (a graph that
        # saved a parameter before the step then refuses to backpropagate).
        torch.autograd.graph.increment_version(updated)
        for j in tiny:
            _run_single(Work(leaves[j], xs[j], [], paths[j], dxs[j]))
        if scalar_pos or scheduled:
            new = {i: _from_tensor(v, parts[i]) for i, v in zip(scalar_pos, outs)}
            _write_scalars([leaves[j] for j in kept], state, new, scheduled)

    return run


def _length(a: Any) -> int:
    return a.numel if type(a) is _Slot else a.numel()


def _scalar_heads(template: list, scalar_pos: tuple) -> list[torch.Tensor]:
    """The state's scalars as 0-d tensors, then as many 1-element tensors for the new ones
    (TorchInductor in torch 2.13 drops a copy into a 0-d CPU input)."""
    ins = [_scalar_tensor(template[i]) for i in scalar_pos]
    return ins + [_scalar_tensor(template[i]).reshape(1) for i in scalar_pos]


def _write_scalars(leaves: list, state: Any, values: dict[int, Any], scheduled: bool) -> None:
    """Give each leaf its state with the new scalars (at the given atom positions), holding
    the same tensors; a Scheduler's counter moves on."""
    renew = _swapper(state, values)
    for leaf in leaves:
        cache = leaf._kernel_cache
        if scheduled:
            new = renew(leaf.state[1])
            leaf.state = (leaf.state[0] + 1, new)
        else:
            new = leaf.state = renew(leaf.state)
        if cache is not None:
            leaf._kernel_cache = (new, cache[1], cache[2])  # same tensors, new scalars


def _aliases(w: Any, state: Any) -> tuple[torch.Tensor, list[torch.Tensor], tuple] | None:
    """The parameter's 1-D alias, its state tensors' 1-D aliases, and the dtypes (parameter's
    first); kept on the Leaf (``_kernel_cache``) while its state (as this module last wrote it)
    and the parameter's memory are the same.  ``None`` if a state tensor does not fit a
    compiled kernel."""
    parts = [a for a in atoms(state) if isinstance(a, torch.Tensor)]
    n = w.x.numel()
    fits = (
        type(a) is torch.Tensor and a.is_contiguous() and a.numel() == n and a.device == w.x.device
        for a in parts
    )
    if not all(fits):
        return None
    got = (_flat(w.x), [_flat(a) for a in parts], (w.x.dtype, *(a.dtype for a in parts)))
    w.leaf._kernel_cache = (state, w.x.data_ptr(), got)
    return got


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
        consts = [(i, q[1]) for i, q in enumerate(top[1]) if q[0] == "const"]

        def swap(s: tuple) -> tuple:
            parts = list(s)
            for i, c in consts:
                parts[i] = c
            return tuple(parts)

        return swap
    return lambda s: apply(top, s)


_pads: dict[tuple, list[torch.Tensor]] = {}


def _padding(kinds: tuple, device: torch.device, n: int) -> list[torch.Tensor]:
    """``n`` throwaway entries of two elements that fill the last chunk (one compiled kernel
    serves every number of parameters); their values are never read."""
    if n == 0:
        return []
    key = (kinds, device, n)
    pad = _pads.get(key)
    if pad is None:
        # x, dx and each state tensor: distinct tensors, as the compiled graph's inputs are
        dtypes = (kinds[0], *kinds)
        pad = _pads[key] = [
            torch.zeros(2, dtype=d, device=device) for _ in range(n) for d in dtypes
        ]
    return pad
