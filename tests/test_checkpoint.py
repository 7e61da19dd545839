"""ft.save / ft.load: exact round trips keyed by tree path, clear errors, nothing unpickled."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fluxtrain as ft
from fluxtrain import checkpoint as ck

ALL_RULES = [
    ft.Descent(0.1),
    ft.Momentum(0.01, 0.8),
    ft.Nesterov(0.01),
    ft.RMSProp(0.01),
    ft.RMSProp(0.01, centred=True),
    ft.Rprop(0.01),
    ft.Adam(0.01),
    ft.RAdam(0.01),
    ft.AdaMax(0.01),
    ft.OAdam(0.01),
    ft.AdaGrad(0.1),
    ft.AdaDelta(0.9),
    ft.AMSGrad(0.01),
    ft.NAdam(0.01),
    ft.AdamW(0.01, lambd=0.1),
    ft.AdaBelief(0.01),
    ft.Lion(0.01),
    ft.WeightDecay(0.1),
    ft.SignDecay(0.1),
    ft.ClipGrad(0.5),
    ft.ClipNorm(1.0),
    ft.OptimiserChain(ft.ClipNorm(1.0), ft.WeightDecay(0.01), ft.Adam(0.01)),
    ft.OptimiserChain(ft.AccumGrad(2), ft.Momentum(0.1)),
    ft.MixedPrecision(ft.Adam(0.01)),
    ft.Scheduler(ft.Adam, eta=ft.CosAnneal(l0=0.01, l1=0.001, period=4)),
    ft.OptimiserChain(ft.WeightDecay(0.01), ft.Scheduler(ft.Momentum, ft.Exp(0.1, 0.5), rho=0.8)),
]


def small_model() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "a": torch.randn(3, generator=g, dtype=torch.float64),
        "b": [torch.randn(2, 2, generator=g, dtype=torch.float64), len],
    }


def grads_for(step: int) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    return {
        "a": torch.randn(3, generator=g, dtype=torch.float64),
        "b": [torch.randn(2, 2, generator=g, dtype=torch.float64), None],
    }


def assert_same_state(x, y, where="state"):
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), where
        assert x.dtype == y.dtype and x.shape == y.shape, where
        assert torch.equal(x, y), where
    elif isinstance(x, (tuple, list)):
        assert type(x) is type(y) and len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            assert_same_state(a, b, f"{where}.{i}")
    else:
        assert x == y and type(x) is type(y), where


def assert_same_leaves(st1, st2):
    l1, l2 = dict(ck._state_leaves(st1)), dict(ck._state_leaves(st2))
    assert l1.keys() == l2.keys()
    for p in l1:
        assert l1[p].rule == l2[p].rule, p
        assert l1[p].frozen == l2[p].frozen, p
        assert_same_state(l1[p].state, l2[p].state, p)


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: repr(r)[:40])
def test_every_rule_state_round_trips_exactly_and_training_continues_identically(rule, tmp_path):
    model = small_model()
    st = ft.setup(rule, model)
    for step in range(3):
        ft.update_(st, model, grads_for(step))
    path = tmp_path / "c.safetensors"
    ft.save(path, model=model, opt_state=st)

    fresh = {"a": torch.zeros(3, dtype=torch.float64), "b": [torch.zeros(2, 2).double(), len]}
    st2 = ft.setup(ft.Descent(), fresh)  # another rule: the checkpoint's rules replace it
    ft.load(path, model=fresh, opt_state=st2)
    assert torch.equal(fresh["a"], model["a"]) and torch.equal(fresh["b"][0], model["b"][0])
    assert_same_leaves(st, st2)

    for step in range(3, 5):
        ft.update_(st, model, grads_for(step))
        ft.update_(st2, fresh, grads_for(step))
    assert torch.equal(fresh["a"], model["a"]) and torch.equal(fresh["b"][0], model["b"][0])


def test_bare_tensor_model_and_leaf_state_round_trip(tmp_path):
    x = torch.tensor([1.0, -2.0])
    st = ft.setup(ft.Adam(0.1), x)
    ft.update_(st, x, torch.tensor([0.5, 0.5]))
    ft.save(tmp_path / "c.safetensors", model=x, opt_state=st)
    y = torch.zeros(2)
    st2 = ft.setup(ft.Descent(), y)
    ft.load(tmp_path / "c.safetensors", model=y, opt_state=st2)
    assert torch.equal(x, y) and st2.rule == ft.Adam(0.1)
    assert_same_state(st.state, st2.state)


def test_chain_frozen_subtree_and_adjusted_eta_survive(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    st = ft.setup(ft.OptimiserChain(ft.WeightDecay(0.01), ft.Adam(0.001)), model)
    x = torch.randn(5, 3)
    for _ in range(2):
        ft.update_(st, model, ft.gradient(lambda m: m(x).pow(2).sum(), model)[0])
    ft.freeze_(st[0])
    ft.adjust_(st[2], 0.0375)

    ft.save(tmp_path / "c.safetensors", model=model, opt_state=st)
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    st2 = ft.setup(ft.Momentum(), model2)
    ft.load(tmp_path / "c.safetensors", model=model2, opt_state=st2)

    assert st2[0].weight.frozen and st2[0].bias.frozen and not st2[2].weight.frozen
    assert st2[2].weight.rule == ft.OptimiserChain(ft.WeightDecay(0.01), ft.Adam(0.0375))
    assert st2[0].weight.rule.opts[1].eta == 0.001
    assert_same_leaves(st, st2)
    for m in (model, model2):
        ft.update_(st if m is model else st2, m, ft.gradient(lambda m: m(x).sum(), m)[0])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


class EncDec(torch.nn.Module):
    def __init__(self, first: str):
        super().__init__()
        # The same named children, registered in a different order.
        for name in (first, "dec" if first == "enc" else "enc"):
            setattr(self, name, torch.nn.Linear(2, 2))

    def forward(self, x):
        return self.dec(self.enc(x))


def test_loading_into_model_with_modules_defined_in_another_order_matches_by_path(tmp_path):
    a, b = EncDec("enc"), EncDec("dec")
    assert [n for n, _ in a.named_children()] != [n for n, _ in b.named_children()]
    st_a = ft.setup(ft.Momentum(0.1), a)
    x = torch.randn(4, 2)
    ft.update_(st_a, a, ft.gradient(lambda m: m(x).sum(), a)[0])
    ft.save(tmp_path / "c.safetensors", model=a, opt_state=st_a)

    st_b = ft.setup(ft.Momentum(0.1), b)
    ft.load(tmp_path / "c.safetensors", model=b, opt_state=st_b)
    assert torch.equal(a.enc.weight, b.enc.weight) and torch.equal(a.dec.bias, b.dec.bias)
    assert torch.equal(st_a.enc.weight.state, st_b.enc.weight.state)
    assert torch.equal(st_a.dec.weight.state, st_b.dec.weight.state)
    assert torch.equal(a(x), b(x))


def test_file_is_standard_safetensors_keyed_by_tree_path(tmp_path):
    model = {"layers": {"enc": torch.nn.Linear(2, 3)}}
    st = ft.setup(ft.Adam(), model)
    ft.save(tmp_path / "c.safetensors", model=model, opt_state=st)
    tensors = load_file(tmp_path / "c.safetensors")
    assert torch.equal(tensors["model/layers.enc.weight"], model["layers"]["enc"].weight)
    assert "opt/layers.enc.weight.0" in tensors  # Adam's first moment of that parameter


def test_batchnorm_buffers_and_tied_weights_are_saved_once_and_restored(tmp_path):
    emb = torch.nn.Linear(3, 3, bias=False)
    model = torch.nn.ModuleDict({"enc": emb, "bn": torch.nn.BatchNorm1d(3)})
    model.dec = torch.nn.Linear(3, 3, bias=False)
    model.dec.weight = emb.weight  # tied
    model.bn(torch.randn(8, 3) * 3 + 1)  # running statistics move
    st = ft.setup(ft.Momentum(0.1), model)
    x = torch.randn(4, 3)
    ft.update_(st, model, ft.gradient(lambda m: m.dec(m.enc(x)).sum(), model)[0])
    ft.save(tmp_path / "c.safetensors", model=model, opt_state=st)
    assert (
        sum(
            k.startswith("model/") and k.endswith("weight")
            for k in load_file(tmp_path / "c.safetensors")
        )
        == 2
    )

    fresh = torch.nn.ModuleDict({"enc": torch.nn.Linear(3, 3, bias=False)})
    fresh.bn = torch.nn.BatchNorm1d(3)
    fresh.dec = torch.nn.Linear(3, 3, bias=False)
    fresh.dec.weight = fresh.enc.weight
    st2 = ft.setup(ft.Descent(), fresh)
    ft.load(tmp_path / "c.safetensors", model=fresh, opt_state=st2)
    assert st2.dec.weight is st2.enc.weight  # still one Leaf for the tied weight
    assert torch.equal(st2.enc.weight.state, st.enc.weight.state)
    assert torch.equal(fresh.bn.running_mean, model.bn.running_mean)
    assert int(fresh.bn.num_batches_tracked) == 1
    assert fresh.dec.weight is fresh.enc.weight and torch.equal(fresh.enc.weight, emb.weight)


def snapshot(model, st):
    return [p.detach().clone() for p in model.parameters()], [
        (leaf.rule, leaf.frozen, [t.clone() for t in leaf.state if isinstance(t, torch.Tensor)])
        for _, leaf in ck._state_leaves(st)
    ]


def assert_unchanged(before, model, st):
    params, leaves = before
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))
    now = [(leaf, leaf.state) for _, leaf in ck._state_leaves(st)]
    for (rule, frozen, tensors), (leaf, state) in zip(leaves, now):
        assert leaf.rule == rule and leaf.frozen == frozen
        got = [t for t in state if isinstance(t, torch.Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(tensors, got))


def make(out_features=2, extra=False, dtype=torch.float32):
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, out_features)).to(dtype)
    if extra:
        m.append(torch.nn.Linear(out_features, 1).to(dtype))
    return m


@pytest.mark.parametrize(
    "other, message",
    [
        (lambda: make(extra=True), "the model has 2.weight but the checkpoint does not"),
        (lambda: make(out_features=5), "shape mismatch at 1.weight"),
        (lambda: make(dtype=torch.float64), "dtype mismatch at 0.weight"),
    ],
    ids=["missing", "shape", "dtype"],
)
def test_mismatch_names_the_path_and_leaves_model_and_state_unchanged(other, message, tmp_path):
    ft.save(tmp_path / "c.safetensors", model=make(), opt_state=ft.setup(ft.Adam(), make()))
    target = other()
    st = ft.setup(ft.Momentum(0.5), target)
    before = snapshot(target, st)
    with pytest.raises(ft.CheckpointError, match=message):
        ft.load(tmp_path / "c.safetensors", model=target, opt_state=st)
    assert_unchanged(before, target, st)


def test_extra_key_in_checkpoint_is_an_error_naming_it(tmp_path):
    ft.save(tmp_path / "c.safetensors", model=make(extra=True))
    with pytest.raises(
        ft.CheckpointError, match=r"checkpoint has 2\.weight but the model does not"
    ):
        ft.load(tmp_path / "c.safetensors", model=make())


def test_strict_false_loads_what_fits_and_reports_what_was_skipped(tmp_path):
    src = make()
    ft.save(tmp_path / "c.safetensors", model=src, epoch=7)
    target = make(out_features=5)
    with pytest.warns(UserWarning, match="skipped"):
        extras = ft.load(tmp_path / "c.safetensors", model=target, strict=False)
    assert extras == {"epoch": 7}
    assert torch.equal(target[0].weight, src[0].weight)
    assert any("shape mismatch at 1.weight" in s for s in extras.skipped)
    assert any("1.bias" in s for s in extras.skipped)


def test_optimiser_state_for_another_shape_is_an_error_naming_the_path(tmp_path):
    small, big = {"w": torch.zeros(2)}, {"w": torch.zeros(3)}
    ft.save(tmp_path / "c.safetensors", opt_state=ft.setup(ft.Adam(), small))
    st = ft.setup(ft.Adam(), big)
    with pytest.raises(ft.CheckpointError, match=r"state at w is for a parameter of shape \[2\]"):
        ft.load(tmp_path / "c.safetensors", opt_state=st)


def test_extras_round_trip_nested_values_tensors_rules_and_stateful_objects(tmp_path):
    scaler = ft.LossScaler(init_scale=64.0)
    scaler.update(True)
    scaler.skipped = 3
    learner = {
        "epoch": 4,
        "history": [0.5, float("inf"), None],
        "cfg": {"rule": ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.1)), 3: (1, "x")},
        "schedule": ft.Sequence((ft.Triangle(l0=0.0, l1=1.0, period=4), 5), (ft.Exp(1.0, 0.9), 10)),
        "best": torch.arange(4, dtype=torch.int32),
    }
    ft.save(tmp_path / "c.safetensors", learner=learner, scaler=scaler, note="hi")
    other = ft.LossScaler()
    extras = ft.load(tmp_path / "c.safetensors", scaler=other)
    assert extras["note"] == "hi"
    got = extras["learner"]
    assert got["epoch"] == 4 and got["history"] == [0.5, float("inf"), None]
    assert got["cfg"] == {"rule": ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.1)), 3: (1, "x")}
    assert got["schedule"] == learner["schedule"]
    assert [got["schedule"](t) for t in range(1, 16)] == [
        learner["schedule"](t) for t in range(1, 16)
    ]
    assert torch.equal(got["best"], learner["best"]) and got["best"].dtype == torch.int32
    assert other.state_dict() == scaler.state_dict() and other.scale_value == 32.0


def test_object_refusing_its_state_leaves_model_unchanged(tmp_path):
    X = torch.arange(20.0)
    loader = ft.DataLoader(X, batchsize=4, shuffle=True, rng=0)
    running = iter(loader)
    next(running)
    model = make()
    ft.save(tmp_path / "c.safetensors", model=model, data=loader)
    target = make()
    before = [p.clone() for p in target.parameters()]
    other = ft.DataLoader(X, batchsize=5, shuffle=True, rng=0)
    with pytest.raises(ValueError, match="batchsize"):
        ft.load(tmp_path / "c.safetensors", model=target, data=other)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    same = ft.DataLoader(X, batchsize=4, shuffle=True, rng=99)
    ft.load(tmp_path / "c.safetensors", model=target, data=same)
    assert torch.equal(next(iter(same)), next(running))  # continues where loader stopped


def test_a_single_file_checkpoint_written_by_rank_0_resumes_another_ranks_loader(tmp_path):
    # DDP: rank 0 writes the file, every rank loads it into its own sharded loader.
    X = torch.arange(24.0)
    rank0 = ft.DataLoader(X, batchsize=2, shuffle=True, shard=(0, 2))
    rank1 = ft.DataLoader(X, batchsize=2, shuffle=True, shard=(1, 2))
    running0, running1 = iter(rank0), iter(rank1)
    for _ in range(2):
        next(running0), next(running1)
    ft.save(tmp_path / "c.safetensors", model=make(), data=rank0)
    resumed1 = ft.DataLoader(X, batchsize=2, shuffle=True, shard=(1, 2))
    ft.load(tmp_path / "c.safetensors", model=make(), data=resumed1)
    assert [b.tolist() for b in resumed1] == [b.tolist() for b in running1]


def test_unsaveable_extra_is_an_error_before_anything_is_written(tmp_path):
    ft.save(tmp_path / "c.safetensors", epoch=1)
    with pytest.raises(ft.CheckpointError, match="cannot save function at extra/fn"):
        ft.save(tmp_path / "c.safetensors", epoch=2, fn=lambda: 0)
    assert ft.load(tmp_path / "c.safetensors") == {"epoch": 1}


def test_rng_states_are_restored_by_load(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    ft.save(tmp_path / "c.safetensors")
    first = (torch.rand(3), np.random.rand(3), random.random())
    ft.load(tmp_path / "c.safetensors")
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
    ft.load(tmp_path / "c.safetensors", restore_rng=False)
    assert not torch.equal(torch.rand(3), first[0])


def test_ddp_wrapped_model_is_saved_without_module_prefix(tmp_path, one_process_group):
    inner = make()
    ddp = torch.nn.parallel.DistributedDataParallel(inner)
    st = ft.setup(ft.Adam(), ddp)
    ft.save(tmp_path / "c.safetensors", model=ddp, opt_state=st)
    names = list(load_file(tmp_path / "c.safetensors"))
    assert "model/0.weight" in names and not any("module" in n for n in names)
    plain = make()
    ft.load(tmp_path / "c.safetensors", model=plain)  # loads into an unwrapped model
    assert torch.equal(plain[1].weight, inner[1].weight)


# ---------------------------------------------------------------------------------------------
# Damaged and hostile files


class _Marker:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_pickle_payload_is_refused_and_executes_nothing(tmp_path):
    marker = tmp_path / "ran"
    for i, payload in enumerate([pickle.dumps(_Marker(marker)), None]):
        f = tmp_path / f"evil{i}.safetensors"
        if payload is None:
            torch.save({"x": _Marker(marker)}, f)  # torch.save: a zip of pickles
        else:
            f.write_bytes(payload)
        with pytest.raises(ft.CheckpointError, match="pickle"):
            ft.load(f, model=make())
        assert not marker.exists()
    # A text (protocol 0) pickle has no magic bytes: it is refused as a damaged file.
    f = tmp_path / "evil_text.safetensors"
    f.write_bytes(pickle.dumps(_Marker(marker), protocol=0))
    with pytest.raises(ft.CheckpointError, match="is not a checkpoint"):
        ft.load(f, model=make())
    assert not marker.exists()


def test_truncated_file_gives_a_clear_error(tmp_path):
    model = make()
    ft.save(tmp_path / "c.safetensors", model=model, opt_state=ft.setup(ft.Adam(), model))
    raw = (tmp_path / "c.safetensors").read_bytes()
    for cut in (len(raw) - 10, 100, 4):
        (tmp_path / "t.safetensors").write_bytes(raw[:cut])
        with pytest.raises(ft.CheckpointError, match="truncated"):
            ft.load(tmp_path / "t.safetensors", model=model)


def test_tampered_header_gives_a_clear_error(tmp_path):
    model = make()
    st = ft.setup(ft.Adam(), model)
    ft.save(tmp_path / "c.safetensors", model=model, opt_state=st)
    raw = (tmp_path / "c.safetensors").read_bytes()
    # Flip a frozen flag (same length with JSON whitespace): the header checksum catches it.
    tampered = raw.replace(b'\\"frozen\\": false', b'\\"frozen\\": true ', 1)
    assert tampered != raw
    (tmp_path / "t.safetensors").write_bytes(tampered)
    with pytest.raises(ft.CheckpointError, match="tampered"):
        ft.load(tmp_path / "t.safetensors", model=model, opt_state=st)
    # Corrupt tensor data: the data checksum catches it.
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    (tmp_path / "d.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ft.CheckpointError, match="damaged"):
        ft.load(tmp_path / "d.safetensors", model=model)
    # Garbage header length.
    (tmp_path / "g.safetensors").write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    with pytest.raises(ft.CheckpointError, match="header"):
        ft.load(tmp_path / "g.safetensors", model=model)


def test_header_naming_a_foreign_class_is_refused_even_with_a_valid_checksum(tmp_path):
    marker = tmp_path / "ran"
    structure = {
        "format": "fluxtrain-checkpoint",
        "version": 1,
        "extra": {
            "x": {"__object__": "pathlib.Path", "fields": {}},
            "y": {"__object__": "builtins.eval", "fields": {"source": f"open('{marker}','w')"}},
        },
    }
    ck._write_file(tmp_path / "evil.safetensors", json.dumps(structure), {})
    with pytest.raises(ft.CheckpointError, match="not one of fluxtrain's classes"):
        ft.load(tmp_path / "evil.safetensors")
    assert not marker.exists()


def test_sigkill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "c.safetensors"
    script = textwrap.dedent(
        f"""
        import os, sys, time, torch, fluxtrain as ft
        from fluxtrain import checkpoint as ck
        model = {{"w": torch.arange(1000.0)}}
        ft.save({str(path)!r}, model=model, step=1)
        def slow_write(f, chunks):
            for i, c in enumerate(chunks):
                f.write(c)
                if i == 2:  # header and the first tensor bytes are on disk
                    f.flush()
                    print("WRITING", flush=True)
                    time.sleep(60)
        ck._write_all = slow_write
        model["w"] += 1
        ft.save({str(path)!r}, model=model, step=2)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1  # the new checkpoint is being written beside the old one
        proc.kill()  # SIGKILL in the middle of save
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    model = {"w": torch.zeros(1000)}
    assert ft.load(path, model=model) == {"step": 1}
    assert torch.equal(model["w"], torch.arange(1000.0))
    with pytest.raises(ft.CheckpointError, match="truncated"):
        ft.load(temps[0], model=model)  # the half-written file is recognisably incomplete
    # A later save succeeds, replaces the old checkpoint and removes the dead save's leftover.
    ft.save(path, model={"w": torch.ones(1000)}, step=3)
    assert ft.load(path) == {"step": 3}
    assert not temps[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_checkpoint_file_gets_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        ft.save(tmp_path / "c.safetensors", epoch=1)
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644


def test_unregistered_rule_is_refused_at_save_and_registered_one_round_trips(tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Halve(ft.Rule):
        eta: float = 0.5

        def apply(self, state, x, dx):
            return state, dx * self.eta

    st = ft.setup(Halve(), {"w": torch.ones(2)})
    with pytest.raises(ft.CheckpointError, match="register_checkpoint_class"):
        ft.save(tmp_path / "c.safetensors", opt_state=st)
    ft.register_checkpoint_class(Halve)
    ft.save(tmp_path / "c.safetensors", opt_state=st)
    st2 = ft.setup(ft.Descent(), {"w": torch.ones(2)})
    ft.load(tmp_path / "c.safetensors", opt_state=st2)
    assert st2["w"].rule == Halve()


# ---------------------------------------------------------------------------------------------
# Issue 14: everything the loader uses is checked, and every failure is a CheckpointError


def _header_of(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8 : 8 + n])


def _rewrite(path, edit_structure):
    """Re-save ``path`` with its structure JSON edited and every checksum recomputed, as
    someone who knows the format would."""
    _, _, header = _header_of(path)
    structure = json.loads(header["__metadata__"]["fluxtrain"])
    edit_structure(structure)
    ck._write_file(Path(path), json.dumps(structure), load_file(path))


def test_swapping_the_data_offsets_of_two_same_shape_tensors_is_refused(tmp_path):
    src = {"a": torch.full((4,), 1.0), "b": torch.full((4,), 2.0)}
    path = tmp_path / "c.safetensors"
    ft.save(path, model=src)
    raw, n, header = _header_of(path)
    oa, ob = header["model/a"]["data_offsets"], header["model/b"]["data_offsets"]
    swapped = raw[8 : 8 + n].replace(
        json.dumps({"data_offsets": oa}, separators=(",", ":"))[1:-1].encode(), b"@A@"
    )
    swapped = swapped.replace(
        json.dumps({"data_offsets": ob}, separators=(",", ":"))[1:-1].encode(),
        json.dumps({"data_offsets": oa}, separators=(",", ":"))[1:-1].encode(),
    )
    swapped = swapped.replace(
        b"@A@", json.dumps({"data_offsets": ob}, separators=(",", ":"))[1:-1].encode()
    )
    assert len(swapped) == n and swapped != raw[8 : 8 + n]
    path.write_bytes(raw[:8] + swapped + raw[8 + n :])
    target = {"a": torch.zeros(4), "b": torch.zeros(4)}
    with pytest.raises(ft.CheckpointError, match="tampered"):
        ft.load(path, model=target)
    assert torch.equal(target["a"], torch.zeros(4)) and torch.equal(target["b"], torch.zeros(4))


def test_extra_metadata_or_reformatted_header_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    ft.save(path, model={"w": torch.ones(2)})
    raw, n, header = _header_of(path)
    header["__metadata__"]["note"] = "added"
    for text in (json.dumps(header, separators=(",", ":")), json.dumps(header, indent=1)):
        h = text.encode()
        h += b" " * (-len(h) % 8)
        path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])
        with pytest.raises(ft.CheckpointError, match="tampered"):
            ft.load(path, model={"w": torch.zeros(2)})


def _open_fifo_writer_later(fifo, stop):
    """Connect a writer to ``fifo`` once a reader has opened it (so a blocking reader returns),
    without ever blocking this thread; gives up when ``stop`` is set."""
    import errno
    import time

    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            time.sleep(0.01)
            continue
        os.close(fd)
        return


# /dev/zero, /dev/urandom and FIFOs exist only on POSIX systems (CI runs Linux, where this test
# always runs); elsewhere there is nothing of the kind to refuse.
@pytest.mark.skipif(os.name != "posix", reason="devices and FIFOs are POSIX")
@pytest.mark.parametrize("kind", ["dev_zero", "dev_urandom", "fifo", "directory"])
def test_load_refuses_what_is_not_a_regular_file_without_reading_it(kind, tmp_path):
    import threading

    path = tmp_path / "c.safetensors"
    stop = threading.Event()
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
        threading.Thread(target=_open_fifo_writer_later, args=(path, stop), daemon=True).start()
    else:
        os.symlink("/dev/zero" if kind == "dev_zero" else "/dev/urandom", path)
    try:
        with pytest.raises(ft.CheckpointError, match="not a regular file"):
            ft.load(path, model={"w": torch.zeros(2)})
    finally:
        stop.set()


def test_sizes_in_the_header_are_checked_against_the_file_length(tmp_path):
    path = tmp_path / "c.safetensors"
    ft.save(path, model={"w": torch.ones(1000)})
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 50_000_000) + raw[8:])
    with pytest.raises(ft.CheckpointError, match=r"header needs 50000000 bytes but the file has"):
        ft.load(path)


def test_malformed_rng_entry_is_refused_before_anything_changes(tmp_path):
    path = tmp_path / "c.safetensors"
    src = make()
    ft.save(path, model=src, opt_state=ft.setup(ft.Adam(), src))

    def break_python_rng(structure):
        for item in structure["rng"]["__dict__"]:
            if item[0] == "python":
                item[1] = {"__tuple__": [3, [1, 2, 3], None]}  # 3 words instead of 625

    _rewrite(path, break_python_rng)
    target = make()
    st = ft.setup(ft.Momentum(0.5), target)
    before = snapshot(target, st)
    torch_rng = torch.get_rng_state()
    with pytest.raises(ft.CheckpointError, match=r"rng\.python"):
        ft.load(path, model=target, opt_state=st)
    assert_unchanged(before, target, st)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    # Without restoring the RNG the entry is not used, so the load goes through.
    ft.load(path, model=target, opt_state=st, restore_rng=False)
    assert torch.equal(target[0].weight, src[0].weight)


def _nested_header(tmp_path):
    h = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "x").write_bytes(struct.pack("<Q", len(h)) + h)
    return tmp_path / "x"


def _nested_structure(tmp_path):
    ck._write_file(tmp_path / "x", "[" * 100_000 + "]" * 100_000, {})
    return tmp_path / "x"


def _long_number_in_header(tmp_path):
    h = b'{"a":' + b"1" * 100_000 + b"}"
    (tmp_path / "x").write_bytes(struct.pack("<Q", len(h)) + h)
    return tmp_path / "x"


def _long_number_in_structure(tmp_path):
    ck._write_file(tmp_path / "x", '{"version": 1, "extra": {"n": ' + "7" * 100_000 + "}}", {})
    return tmp_path / "x"


def _non_rule_in_a_chain(tmp_path):
    m = {"w": torch.ones(2)}
    ft.save(tmp_path / "x", model=m, opt_state=ft.setup(ft.OptimiserChain(ft.Adam()), m))
    not_a_rule = {"__object__": "FitProgress", "fields": {"nepochs": 1}}
    _rewrite(
        tmp_path / "x",
        lambda s: s["opt_state"]["w"]["rule"]["fields"].update(opts={"__tuple__": [not_a_rule]}),
    )
    return tmp_path / "x"


def _rule_class_instead_of_instance(tmp_path):
    m = {"w": torch.ones(2)}
    ft.save(tmp_path / "x", model=m, opt_state=ft.setup(ft.OptimiserChain(ft.Adam()), m))
    _rewrite(
        tmp_path / "x",
        lambda s: s["opt_state"]["w"]["rule"]["fields"].update(
            opts={"__tuple__": [{"__class__": "Adam"}]}
        ),
    )
    return tmp_path / "x"


@pytest.mark.parametrize(
    "make_file, message",
    [
        (_nested_header, "damaged header"),
        (_nested_structure, "damaged header"),
        (_long_number_in_header, "damaged header"),
        (_long_number_in_structure, "damaged header"),
        (lambda tmp_path: tmp_path, "not a regular file"),
        (_non_rule_in_a_chain, "opt_state.w.rule"),
        (_rule_class_instead_of_instance, "opt_state.w.rule|cannot be set up"),
    ],
    ids=[
        "nested-header",
        "nested-structure",
        "long-number-header",
        "long-number-structure",
        "directory",
        "non-rule-in-chain",
        "rule-class-in-chain",
    ],
)
def test_every_unreadable_checkpoint_raises_checkpoint_error(make_file, message, tmp_path):
    path = make_file(tmp_path)
    m = {"w": torch.zeros(2)}
    st = ft.setup(ft.Descent(), m)
    with pytest.raises(ft.CheckpointError, match=message):
        ft.load(path, model=m, opt_state=st)
    assert torch.equal(m["w"], torch.zeros(2)) and st["w"].rule == ft.Descent()


def test_missing_checkpoint_is_both_a_checkpoint_error_and_file_not_found(tmp_path):
    with pytest.raises(ft.CheckpointError, match="no checkpoint at") as err:
        ft.load(tmp_path / "nope.safetensors")
    assert isinstance(err.value, FileNotFoundError)


def test_next_save_removes_temporaries_that_dead_saves_left_in_the_folder(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphans = [
        tmp_path / f".epoch_{i:03d}.safetensors.{host}.{dead.pid}.a_{i}cdefg.tmp"
        for i in range(1, 6)
    ]
    live = tmp_path / f".epoch_007.safetensors.{host}.{os.getppid()}.abcdefgh.tmp"
    mine = [tmp_path / ".notes.tmp", tmp_path / f".x.{host}.{dead.pid}.txt"]
    for p in [*orphans, live, *mine]:
        p.write_bytes(b"half a checkpoint")
    ft.save(tmp_path / "epoch_006.safetensors", model={"w": torch.ones(2)})
    assert not any(p.exists() for p in orphans)
    assert live.exists()  # a save in progress in a running process is left alone
    assert all(p.exists() for p in mine)  # files that are not our temporaries are left alone


def _as_legacy_file(path, edit_index=lambda index: None):
    """Rewrite ``path`` as the previous version wrote it: a digest of names, dtypes and shapes
    only (``fluxtrain_sha256``)."""
    raw, n, header = _header_of(path)
    meta = header.pop("__metadata__")
    edit_index(header)
    header["__metadata__"] = {
        "format": meta["format"],
        "fluxtrain": meta["fluxtrain"],
        "fluxtrain_sha256": ck._legacy_header_digest(meta["fluxtrain"], header),
        "fluxtrain_data_crc32": meta["fluxtrain_data_crc32"],
    }
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def test_files_of_the_previous_version_load_but_not_with_moved_offsets(tmp_path):
    path = tmp_path / "c.safetensors"
    ft.save(path, model={"a": torch.full((4,), 1.0), "b": torch.full((4,), 2.0)}, epoch=2)
    _as_legacy_file(path)
    target = {"a": torch.zeros(4), "b": torch.zeros(4)}
    assert ft.load(path, model=target) == {"epoch": 2}
    assert torch.equal(target["b"], torch.full((4,), 2.0))

    def swap(index):
        a, b = index["model/a"], index["model/b"]
        a["data_offsets"], b["data_offsets"] = b["data_offsets"], a["data_offsets"]

    _as_legacy_file(path, swap)  # the old digest does not cover offsets: the layout check does
    target = {"a": torch.zeros(4), "b": torch.zeros(4)}
    with pytest.raises(ft.CheckpointError, match=r"tensor 'model/a' is not where ft\.save puts it"):
        ft.load(path, model=target)
    assert torch.equal(target["a"], torch.zeros(4))


def test_an_object_refusing_its_state_is_a_checkpoint_error_and_undoes_the_others(tmp_path):
    X = torch.arange(20.0)
    scaler = ft.LossScaler(init_scale=64.0)
    scaler.update(True)
    ft.save(tmp_path / "c.safetensors", scaler=scaler, data=ft.DataLoader(X, batchsize=4))
    other = ft.LossScaler(init_scale=8.0)
    before = other.state_dict()
    with pytest.raises(ft.CheckpointError, match="the extra 'data' does not fit this DataLoader"):
        ft.load(
            tmp_path / "c.safetensors", scaler=other, data=ft.DataLoader(X, batchsize=5)
        )  # the scaler is loaded first, then the loader refuses: the scaler gets its state back
    assert other.state_dict() == before
