"""FSDP2 (``fully_shard``) training and sharded checkpoints, with 2 CPU processes (gloo).

Two spawns in all: one runs every rule (and adjust_/freeze_, a partly sharded model) on 2 ranks,
the other sharded checkpoints, resume and the Learner; each compares with one plain process.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fluxtrain as ft

sys.path.insert(0, str(Path(__file__).parent))
import _fsdp_worker as worker

# The same server process as test_distributed.py's (preloading both workers): ranks fork from it
# without importing torch again.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(
    ["torch", "torch.distributed.fsdp", "fluxtrain", "_ddp_worker", "_fsdp_worker"]
)


def spawn_two_ranks(task: str, out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        FORKSERVER.Process(target=worker.rank_main, args=(task, r, 2, port, out)) for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0], "a rank failed (its traceback is above)"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_fsdp2_on_two_ranks_equals_one_process_for_every_rule_adjust_freeze_partial_and_implicit(
    tmp_path,
):
    out = tmp_path / "rules.safetensors"
    spawn_two_ranks("rules", str(out))
    got = load_file(out)
    want = worker.run_rules(None)  # the same problems, unsharded, all rows in one process
    assert set(got) == set(want)
    names = {k.split("/")[0] for k in want}
    rules = set(worker.rule_configs())
    assert rules | {"adjust_freeze", "partly_sharded", "implicit"} == names
    configs = worker.rule_configs().values()
    covered = {type(r).__name__ for cfg in configs for r in ft.optimisers.engine.rules_in(cfg)}
    covered |= {type(cfg).__name__ for cfg in configs}  # rules_in looks inside chains
    assert set(ft.optimisers.rules.__all__) - {"Rule"} <= covered  # all 22 rules
    worst = {n: max((got[k] - want[k]).abs().max().item() for k in want if k.startswith(n + "/"))
             for n in names}  # fmt: skip
    assert all(d < 1e-5 for d in worst.values()), {n: d for n, d in worst.items() if d >= 1e-5}
    # The runs did train, and the clipping rules did clip (else they would equal plain Descent).
    init = dict(worker.model().named_parameters())
    for n in names:
        moved = max((got[f"{n}/param/{p}"] - w).abs().max().item() for p, w in init.items())
        assert moved > 1e-4, n
    for clipped in ("ClipNorm", "ClipGrad"):
        assert not torch.allclose(got[f"{clipped}/param/0.weight"], got["Descent/param/0.weight"])


def _forbid_unpickling(monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("loading a checkpoint unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_sharded_checkpoints_reshard_resume_bit_for_bit_and_never_pickle(tmp_path, monkeypatch):
    # A checkpoint written by one plain process, for the 2 ranks to load.
    m = worker.dropout_model()
    st = ft.setup(worker.resume_rule(), m)
    ft.train_(worker.lossfn, m, worker.rank_data(None, range(2)), st)
    ft.save_sharded(tmp_path / "one_rank", model=m, opt_state=st)
    one_rank = {}
    worker.snapshot("x", m, st, one_rank)

    spawn_two_ranks("checkpoints", str(tmp_path))
    got = load_file(tmp_path / "result.safetensors")

    def part(prefix):
        return {k.split("/", 1)[1]: v for k, v in got.items() if k.startswith(prefix + "/")}

    # Resumed on 2 ranks (train_, and the Learner's Checkpointer + fit_(resume=)) equals the
    # uninterrupted run bit for bit: parameters, optimiser state, counters, schedule positions.
    for run in ("", "learner_"):
        whole, resumed = part(run + "uninterrupted"), part(run + "resumed")
        assert whole and whole.keys() == resumed.keys()
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), run
    # ... and they did train (the Learner too), so the equalities above say something.
    assert not torch.equal(part("saved")["param/0.weight"], part("uninterrupted")["param/0.weight"])
    initial = worker.dropout_model()[0].weight.detach()
    assert not torch.allclose(part("learner_uninterrupted")["param/0.weight"], initial, atol=1e-4)
    # Saved by 1 process, loaded on 2 ranks: identical.
    loaded = part("one_to_two")
    assert all(torch.equal(loaded[k.split("/", 1)[1]], v) for k, v in one_rank.items())

    # Saved by 2 ranks, loaded in 1 process: identical, and nothing is unpickled.
    ckpt = tmp_path / "two_ranks"
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == [
        "fluxtrain.json",
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    for f in ckpt.iterdir():
        head = f.read_bytes()[:8]
        assert head[:1] != b"\x80" and head[:4] != b"PK\x03\x04", f  # no pickle, no torch.save
        if f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert set(load_file(f)), f  # a safetensors file
    m1 = worker.dropout_model()
    st1 = ft.setup(ft.Descent(), m1)
    _forbid_unpickling(monkeypatch)
    extras = ft.load(ckpt, model=m1, opt_state=st1)
    assert extras["step"] == 2 and extras["data"]["shard"] == [0, 2]  # rank 0's extras
    mine = {}
    worker.snapshot("x", m1, st1, mine)
    saved = part("saved")
    assert mine.keys() and all(torch.equal(saved[k.split("/", 1)[1]], v) for k, v in mine.items())


def test_failed_sharded_load_leaves_model_and_state_as_they_were(tmp_path):
    m = torch.nn.Linear(3, 2).double()
    st = ft.setup(ft.Adam(0.1), m)
    ft.save_sharded(tmp_path / "ck", model=m, opt_state=st)
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)).double()
    other_st = ft.setup(ft.Momentum(), other)
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ft.CheckpointError, match=r"the model has 0\.weight but the checkpoint"):
        ft.load(tmp_path / "ck", model=other, opt_state=other_st)
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), before))
    assert type(other_st[0].weight.rule) is ft.Momentum


def test_save_sharded_never_replaces_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ft.CheckpointError, match="is not a sharded fluxtrain checkpoint"):
        ft.save_sharded(tmp_path / "mine", model=torch.nn.Linear(1, 1))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # Its own checkpoint is replaced (atomically, through a temporary directory).
    m = {"w": torch.ones(2)}
    ft.save_sharded(tmp_path / "ck", model=m)
    m["w"] += 1
    ft.save_sharded(tmp_path / "ck", model=m)
    target = {"w": torch.zeros(2)}
    ft.load_sharded(tmp_path / "ck", model=target)
    assert torch.equal(target["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "mine"]  # no temporaries left


def test_setup_and_update_see_through_fsdp1_wrapper_as_through_ddp(one_process_group):
    import copy

    from torch.distributed.fsdp import FullyShardedDataParallel

    from fluxtrain.optimisers.state import unwrap

    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    inner = copy.deepcopy(plain)
    wrapped = FullyShardedDataParallel(inner, use_orig_params=True, device_id="cpu")
    assert unwrap(wrapped) is inner
    st = ft.setup(ft.Adam(0.1), wrapped)
    assert list(ft.tree.children(st)) == ["0", "1"]  # the inner model's tree: no "module"
    ref = ft.setup(ft.Adam(0.1), plain)
    x = torch.randn(5, 3)
    wrapped(x).sum().backward()
    ft.update_(st, wrapped)
    plain(x).sum().backward()
    ft.update_(ref, plain)
    assert all(torch.allclose(p, q) for p, q in zip(plain.parameters(), inner.parameters()))


def test_sharded_load_refuses_a_damaged_or_missing_shard_file_and_changes_nothing(tmp_path):
    m = torch.nn.Linear(3, 2).double()
    ft.save_sharded(tmp_path / "ck", model=m)
    shard = tmp_path / "ck" / "shard-00001-model-00001-of-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF  # one bit pattern in the tensor data
    shard.write_bytes(bytes(raw))
    target = torch.nn.Linear(3, 2).double()
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(ft.CheckpointError, match="is damaged"):
        ft.load(tmp_path / "ck", model=target)
    shard.unlink()
    with pytest.raises(ft.CheckpointError, match="was a file removed or added"):
        ft.load(tmp_path / "ck", model=target)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), before))
