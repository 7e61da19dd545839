"""Property tests (hypothesis) over randomly generated nested models.

A model is drawn as a *spec* (plain data: dicts, tuples, lists, dataclasses, named tuples and
nn.Modules, with fresh float64/float32 tensors, tensors shared between places, non-tensor leaves,
integer tensors, buffers and parameters that do not require grad), then built.  Gradient trees are drawn to match,
with ``None`` for whole branches and single leaves.  The properties:

- ``setup`` mirrors the model: a Leaf at each trainable tensor (one Leaf per tied tensor), ``None``
  at everything else, a node with the same children at each container;
- ``update`` equals applying the rule to each parameter on its own (``rule.init``/``rule.apply``
  called here per tensor, with tied gradients summed), and mutates nothing;
- frozen leaves and non-trainable leaves never change;
- an ``update_`` that fails on a bad gradient anywhere leaves every parameter and every state
  exactly as it was.
"""

import dataclasses
import math
import random
from collections import namedtuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fluxtrain as ft

SHAPES = [(2,), (3,), (2, 2), (1, 3)]
POOL = 3  # shared tensors k = 0..2 have shape SHAPES[k]
# Fresh tensors are float64 or float32 (parameters of each dtype are updated in separate groups);
# results are compared to the per-leaf reference to the dtype's resolution.
DTYPES = ["float64", "float64", "float32"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

RULES = [
    ft.Descent(0.1),
    ft.Momentum(0.1, 0.9),
    ft.Nesterov(0.1),
    ft.Adam(0.1),
    ft.AdamW(0.1, lambd=0.1),
    ft.AdaGrad(),
    ft.RAdam(0.1),
    ft.Rprop(0.1),
    ft.Lion(0.1),
    ft.NAdam(0.1),
    ft.ClipNorm(1.0),
    ft.OptimiserChain(ft.ClipGrad(0.5), ft.Adam(0.05)),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Momentum(0.1)),
    ft.OptimiserChain(ft.WeightDecay(0.1), ft.RMSProp(0.01, centred=True)),
]


@dataclasses.dataclass
class DC:
    a: object
    b: object = None


NT = namedtuple("NT", ["p", "q"])


class Box(nn.Module):
    """A module holding parameters p0.., submodules m0.., maybe a buffer and a frozen parameter."""

    def forward(self, x):  # pragma: no cover - never called
        return x


# --- specs --------------------------------------------------------------------------------

tensor_spec = st.one_of(
    st.tuples(st.just("t"), st.integers(0, len(SHAPES) - 1), st.sampled_from(DTYPES)),
    st.tuples(st.just("s"), st.integers(0, POOL - 1)),
)
other_leaf_spec = st.sampled_from([("int",), ("str",), ("num",), ("fn",), ("none",)])
inner_module_spec = st.tuples(
    st.just("mod"), st.lists(tensor_spec, max_size=3), st.just([]), st.booleans(), st.booleans()
)
module_spec = st.tuples(
    st.just("mod"),
    st.lists(tensor_spec, max_size=2),
    st.lists(inner_module_spec, max_size=2),
    st.booleans(),
    st.booleans(),
)


def _extend(children):
    return st.one_of(
        st.lists(
            st.tuples(st.sampled_from("abcde"), children), max_size=3, unique_by=lambda kv: kv[0]
        ).map(lambda kvs: ("dict", kvs)),
        st.lists(children, max_size=3).map(lambda cs: ("tuple", cs)),
        st.lists(children, max_size=3).map(lambda cs: ("list", cs)),
        st.tuples(children, children).map(lambda ab: ("dc", *ab)),
        st.tuples(children, children).map(lambda pq: ("nt", *pq)),
    )


model_spec = st.recursive(
    st.one_of(tensor_spec, tensor_spec, other_leaf_spec, module_spec), _extend, max_leaves=10
)


def _build(spec, pool, gen):
    kind = spec[0]
    if kind == "t":
        return torch.randn(SHAPES[spec[1]], generator=gen, dtype=getattr(torch, spec[2]))
    if kind == "s":
        return pool[spec[1]]
    if kind == "int":
        return torch.arange(3)
    if kind == "str":
        return "name"
    if kind == "num":
        return 7
    if kind == "fn":
        return math.sin
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _build(c, pool, gen) for k, c in spec[1]}
    if kind == "tuple":
        return tuple(_build(c, pool, gen) for c in spec[1])
    if kind == "list":
        return [_build(c, pool, gen) for c in spec[1]]
    if kind == "dc":
        return DC(_build(spec[1], pool, gen), _build(spec[2], pool, gen))
    if kind == "nt":
        return NT(_build(spec[1], pool, gen), _build(spec[2], pool, gen))
    _, params, subs, buffer, frozen = spec
    box = Box()
    for i, p in enumerate(params):
        t = _build(p, pool, gen)
        setattr(box, f"p{i}", t if isinstance(t, nn.Parameter) else nn.Parameter(t))
    for i, s in enumerate(subs):
        setattr(box, f"m{i}", _build(s, pool, gen))
    if buffer:
        box.register_buffer("buf", torch.randn(2, generator=gen, dtype=torch.float64))
    if frozen:
        t = torch.randn(2, generator=gen, dtype=torch.float64)
        box.fz = nn.Parameter(t, requires_grad=False)
    return box


def _children_spec(spec, model):
    """(key, child spec, child model, trainable?) for a container spec."""
    kind = spec[0]
    if kind == "dict":
        return [(k, c, model[k], True) for k, c in spec[1]]
    if kind in ("tuple", "list"):
        return [(i, c, model[i], True) for i, c in enumerate(spec[1])]
    if kind == "dc":
        return [("a", spec[1], model.a, True), ("b", spec[2], model.b, True)]
    if kind == "nt":
        return [("p", spec[1], model.p, True), ("q", spec[2], model.q, True)]
    _, params, subs, buffer, frozen = spec
    out = [(f"p{i}", p, getattr(model, f"p{i}"), True) for i, p in enumerate(params)]
    out += [(f"m{i}", s, getattr(model, f"m{i}"), True) for i, s in enumerate(subs)]
    if buffer:
        out.append(("buf", ("buffer",), model.buf, False))
    if frozen:
        out.append(("fz", ("buffer",), model.fz, False))
    return out


def _is_container(spec) -> bool:
    return spec[0] in ("dict", "tuple", "list", "dc", "nt", "mod")


def _draw_grads(spec, model, rng: random.Random):
    """A plain gradient tree for ``model`` (dicts for dataclasses, named tuples, modules)."""
    if spec[0] in ("t", "s"):
        if rng.random() < 0.2:
            return None
        g = torch.randn(model.shape, dtype=model.dtype, generator=_gen(rng))
        return g
    if not _is_container(spec):
        return None
    if rng.random() < 0.1:
        return None
    kids = {
        k: (_draw_grads(c, m, rng) if ok else None) for k, c, m, ok in _children_spec(spec, model)
    }
    if spec[0] == "tuple":
        return tuple(kids[i] for i in range(len(spec[1])))
    if spec[0] == "list":
        return [kids[i] for i in range(len(spec[1]))]
    return kids


def _gen(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def _occurrences(spec, model, grads, out):
    """Every trainable place: (tensor, gradient there or None), in tree order."""
    if spec[0] in ("t", "s"):
        out.append((model, grads))
        return
    if not _is_container(spec):
        return
    for k, c, m, ok in _children_spec(spec, model):
        if not ok:
            continue
        g = None if grads is None else (grads[k] if not isinstance(grads, dict) else grads.get(k))
        _occurrences(c, m, g, out)


def _non_trainables(spec, model, out):
    """Every tensor that is not trainable (integer tensors, buffers, frozen parameters)."""
    if spec[0] == "int" or spec[0] == "buffer":
        out.append(model)
        return
    if _is_container(spec):
        for _, c, m, _ok in _children_spec(spec, model):
            _non_trainables(c, m, out)


def _unique_params(spec, model):
    seen, out = set(), []
    occ = []
    _occurrences(spec, model, None, occ)
    for t, _ in occ:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _leaf_of(spec, model, state, out):
    """Map id(tensor) -> Leaf by walking spec, model and state together."""
    if spec[0] in ("t", "s"):
        out.setdefault(id(model), []).append(state)
        return
    if _is_container(spec):
        for k, c, m, ok in _children_spec(spec, model):
            if ok:
                _leaf_of(c, m, state[k], out)


def _state_atoms(s):
    if isinstance(s, torch.Tensor):
        return [s.detach().clone()]
    if isinstance(s, tuple):
        return [a for x in s for a in _state_atoms(x)]
    return [s]


def _equal_atoms(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _make(spec, seed):
    gen = torch.Generator().manual_seed(seed)
    pool = [
        nn.Parameter(torch.randn(SHAPES[k], generator=gen, dtype=torch.float64))
        for k in range(POOL)
    ]
    return _build(spec, pool, gen)


cases = st.tuples(model_spec, st.integers(0, 2**16), st.sampled_from(range(len(RULES))))


# --- properties -----------------------------------------------------------------------------


def _check_mirror(spec, model, state, leaf_by_tensor, rule):
    if spec[0] in ("t", "s"):
        assert isinstance(state, ft.Leaf)
        assert leaf_by_tensor.setdefault(id(model), state) is state  # one Leaf per tensor
        assert state.rule == rule and not state.frozen
        with torch.no_grad():
            fresh = rule.init(model.detach().clone())
        assert _equal_atoms(_state_atoms(state.state), _state_atoms(fresh))
        return
    if not _is_container(spec):
        assert state is None
        return
    assert isinstance(state, ft.Node)
    kids = _children_spec(spec, model)
    assert len(state) == len(kids)
    for k, c, m, ok in kids:
        if ok:
            _check_mirror(c, m, state[k], leaf_by_tensor, rule)
        else:
            assert state[k] is None


@SETTINGS
@given(cases)
def test_setup_mirrors_the_model(case):
    spec, seed, r = case
    model = _make(spec, seed)
    state = ft.setup(RULES[r], model)
    _check_mirror(spec, model, state, {}, RULES[r])
    assert len(list(ft.leaves(state))) == len(_unique_params(spec, model))


def _reference_step(rule, params, ref_x, ref_state, occ, frozen_ids):
    """Apply ``rule`` to each parameter alone, with the summed gradient of its places."""
    total: dict[int, torch.Tensor] = {}
    for t, g in occ:
        if g is not None:
            total[id(t)] = g.clone() if id(t) not in total else total[id(t)] + g
    with torch.no_grad():
        for t in params:
            k = id(t)
            if k in frozen_ids or k not in total:
                continue
            ref_state[k], upd = rule.apply(ref_state[k], ref_x[k], total[k])
            if upd is not None:
                ref_x[k].sub_(upd)


@SETTINGS
@given(cases, st.integers(0, 2**16))
def test_update_equals_per_leaf_rule_and_frozen_or_untrainable_never_change(case, gseed):
    spec, seed, r = case
    rule = RULES[r]
    model = _make(spec, seed)
    state = ft.setup(rule, model)
    params = _unique_params(spec, model)
    rng = random.Random(gseed)

    leaf_by = {}
    _leaf_of(spec, model, state, leaf_by)
    frozen_ids = {id(t) for t in params if rng.random() < 0.25}
    for t in params:
        if id(t) in frozen_ids:
            ft.freeze_(leaf_by[id(t)][0])

    untrainable = []
    _non_trainables(spec, model, untrainable)
    untrainable_before = [u.clone() for u in untrainable]
    start = {id(t): t.detach().clone() for t in params}
    frozen_state_before = {k: _state_atoms(leaf_by[k][0].state) for k in frozen_ids}

    ref_x = {id(t): t.detach().clone() for t in params}
    with torch.no_grad():
        ref_state = {id(t): rule.init(ref_x[id(t)]) for t in params}

    for step in range(3):
        grads = _draw_grads(spec, model, rng)
        occ = []
        _occurrences(spec, model, grads, occ)
        if step == 0:
            # the copying update mutates nothing and gives the same as the in-place one
            state_atoms = [_state_atoms(leaf.state) for leaf in ft.leaves(state)]
            _, new_model = ft.update(state, model, grads)
            for t in params:
                assert torch.equal(t.detach(), start[id(t)])
            for leaf, before in zip(ft.leaves(state), state_atoms):
                assert _equal_atoms(_state_atoms(leaf.state), before)
            copied = [t.detach().clone() for t in _unique_params(spec, new_model)]
        ft.update_(state, model, grads)
        _reference_step(rule, params, ref_x, ref_state, occ, frozen_ids)
        if step == 0:
            for t, c in zip(params, copied):
                assert torch.equal(t.detach(), c)
        for t in params:
            tol = TOL[t.dtype]
            torch.testing.assert_close(t.detach(), ref_x[id(t)], rtol=tol, atol=tol)

    for t in params:
        if id(t) in frozen_ids:
            assert torch.equal(t.detach(), start[id(t)])
            assert _equal_atoms(_state_atoms(leaf_by[id(t)][0].state), frozen_state_before[id(t)])
    for u, before in zip(untrainable, untrainable_before):
        assert torch.equal(u, before)


def _corrupt(spec, model, grads, rng: random.Random, kind: str):
    """``grads`` with one trainable place (or one dict node) made wrong; None if impossible."""
    places = []

    def walk(sp, m, g, setter):
        if sp[0] in ("t", "s"):
            places.append(("leaf", m, setter))
            return
        if not _is_container(sp):
            return
        if g is None:
            return
        if isinstance(g, dict):
            places.append(("dict", g, None))
        for k, c, mm, ok in _children_spec(sp, m):
            if not ok:
                continue
            if isinstance(g, dict):
                walk(c, mm, g.get(k), lambda v, g=g, k=k: g.__setitem__(k, v))
            elif isinstance(g, list):
                walk(c, mm, g[k], lambda v, g=g, k=k: g.__setitem__(k, v))

    holder = {"root": grads}
    walk(spec, model, grads, lambda v: holder.__setitem__("root", v))
    if kind == "extra_key":
        dicts = [p for p in places if p[0] == "dict"]
        if not dicts:
            return None
        _, g, _ = rng.choice(dicts)
        g["zz_not_in_model"] = torch.zeros(1, dtype=torch.float64)
        return holder["root"]
    leaves = [p for p in places if p[0] == "leaf"]
    if not leaves:
        return None
    _, m, setter = rng.choice(leaves)
    if kind == "shape":
        setter(torch.zeros(m.numel() + 1, dtype=torch.float64))
    else:
        setter("not a gradient")
    return holder["root"]


def _lists_not_tuples(g):
    # Gradients drawn with lists where the model has tuples, so that corruption can write there.
    if isinstance(g, tuple):
        return [_lists_not_tuples(x) for x in g]
    if isinstance(g, list):
        return [_lists_not_tuples(x) for x in g]
    if isinstance(g, dict):
        return {k: _lists_not_tuples(v) for k, v in g.items()}
    return g


@SETTINGS
@given(cases, st.integers(0, 2**16), st.sampled_from(["shape", "type", "extra_key"]))
def test_failed_update_leaves_every_parameter_and_state_unchanged(case, gseed, kind):
    spec, seed, r = case
    rule = RULES[r]
    model = _make(spec, seed)
    state = ft.setup(rule, model)
    rng = random.Random(gseed)
    # one good step first, so that state is not all initial values and the engine has a plan
    ft.update_(state, model, _draw_grads(spec, model, rng))

    bad = _corrupt(spec, model, _lists_not_tuples(_draw_grads(spec, model, rng)), rng, kind)
    if bad is None:
        return  # nothing to corrupt in this model (no trainable place reached by the gradient)
    params = _unique_params(spec, model)
    before_x = [t.detach().clone() for t in params]
    before_state = [_state_atoms(leaf.state) for leaf in ft.leaves(state)]
    untrainable = []
    _non_trainables(spec, model, untrainable)
    before_u = [u.clone() for u in untrainable]

    with pytest.raises((ValueError, TypeError)):
        ft.update_(state, model, bad)

    for t, b in zip(params, before_x):
        assert torch.equal(t.detach(), b)
    for leaf, b in zip(ft.leaves(state), before_state):
        assert _equal_atoms(_state_atoms(leaf.state), b)
    for u, b in zip(untrainable, before_u):
        assert torch.equal(u, b)


# --- sequences of operations on one state ---------------------------------------------------

SEQ_RULES = [
    ft.Adam(0.1),
    ft.AdamW(0.1, lambd=0.05),
    ft.AdaGrad(0.1),
    ft.Momentum(0.1),
    ft.Rprop(0.05),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Adam(0.1)),
    ft.OptimiserChain(ft.ClipNorm(1.0), ft.NAdam(0.1)),
]


class Sub(nn.Module):
    def __init__(self, shared: nn.Parameter):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.shared = shared
        self.register_buffer("stat", torch.zeros(2, dtype=torch.float64))


def _seq_model():
    gen = torch.Generator().manual_seed(3)
    shared = nn.Parameter(torch.randn(2, generator=gen, dtype=torch.float64))
    return {
        "net": Sub(shared),
        "pair": (shared, torch.randn(3, generator=gen, dtype=torch.float64)),
        "w": torch.randn(2, 2, generator=gen, dtype=torch.float64),
        "name": "x",
    }


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


ops = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.integers(0, 2**16)),
        st.tuples(st.just("dotgrad"), st.integers(0, 2**16)),
        st.tuples(st.just("adjust"), st.integers(0, 4), st.sampled_from([0.01, 0.05, 0.2])),
        st.tuples(st.just("freeze"), st.integers(0, 4)),
        st.tuples(st.just("thaw"), st.integers(0, 4)),
        st.tuples(st.just("reset"), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=8,
)


@SETTINGS
@given(st.sampled_from(range(len(SEQ_RULES))), ops)
def test_any_sequence_of_updates_adjusts_freezes_and_resets_matches_per_leaf_reference(r, seq):
    rule = SEQ_RULES[r]
    model = _seq_model()
    state = ft.setup(rule, model)
    found = ft.trainables(model, path=True)
    params = [t for _, t in found]
    leaves = [_at(state, p) for p, _ in found]
    assert len(params) == 5 and len({id(leaf) for leaf in leaves}) == 5

    ref_x = [t.detach().clone() for t in params]
    with torch.no_grad():
        ref_state = [rule.init(x) for x in ref_x]
    ref_rules = [rule] * len(params)
    frozen = [False] * len(params)

    for op in seq:
        kind = op[0]
        if kind in ("update", "dotgrad"):
            rng = random.Random(op[1])
            grads = [
                None if rng.random() < 0.25 else torch.randn(t.shape, dtype=torch.float64)
                for t in params
            ]
            if kind == "update":
                by_id = {id(t): g for t, g in zip(params, grads)}
                tree = {
                    "net": {
                        "lin": {"weight": by_id[id(model["net"].lin.weight)],
                                "bias": by_id[id(model["net"].lin.bias)]},
                        "shared": by_id[id(model["net"].shared)],
                    },
                    # the tied tensor's gradient is given once, at net.shared
                    "pair": (None, by_id[id(model["pair"][1])]),
                    "w": by_id[id(model["w"])],
                }  # fmt: skip
                ft.update_(state, model, tree)
            else:
                for t, g in zip(params, grads):
                    t.grad = g
                ft.update_(state, model)
                for t in params:
                    t.grad = None
            with torch.no_grad():
                for i, g in enumerate(grads):
                    if g is None or frozen[i]:
                        continue
                    ref_state[i], upd = ref_rules[i].apply(ref_state[i], ref_x[i], g)
                    if upd is not None:
                        ref_x[i].sub_(upd)
        elif kind == "adjust":
            ft.adjust_(leaves[op[1]], op[2])
            ref_rules[op[1]] = ft.adjust(ref_rules[op[1]], op[2])
        elif kind == "freeze":
            ft.freeze_(leaves[op[1]])
            frozen[op[1]] = True
        elif kind == "thaw":
            ft.thaw_(leaves[op[1]])
            frozen[op[1]] = False
        else:
            ft.reset_(leaves[op[1]])
            with torch.no_grad():
                ref_state[op[1]] = ref_rules[op[1]].init(ref_x[op[1]])
        for i, t in enumerate(params):
            torch.testing.assert_close(t.detach(), ref_x[i], rtol=1e-10, atol=1e-12)
            assert leaves[i].rule == ref_rules[i] and leaves[i].frozen == frozen[i]
            got, want = _state_atoms(leaves[i].state), _state_atoms(ref_state[i])
            assert len(got) == len(want)
            for a, b in zip(got, want):
                if isinstance(a, torch.Tensor):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
                elif isinstance(a, float):
                    assert a == pytest.approx(b, rel=1e-12)
                else:
                    assert a == b
    assert torch.equal(model["net"].stat, torch.zeros(2, dtype=torch.float64))
    assert model["pair"][0] is model["net"].shared and model["name"] == "x"
