"""Multi-process training with torch.distributed (gloo on 127.0.0.1, 2 processes)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import fluxtrain as ft

WORKER = str(Path(__file__).with_name("_ddp_worker.py"))
sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker as worker  # noqa: E402

# Ranks are forked from a server process that has imported torch, fluxtrain and the worker once
# (and run no torch op, so forking is safe): no 5-10 s start-up per process.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["torch", "torch.distributed.fsdp", "fluxtrain", "_ddp_worker"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_train_and_learner_equal_one_process_on_concatenated_batches(tmp_path):
    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        WORKER, "train", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]

    # The reference: one process, the same model, batches of both ranks' size together.
    model, X, Y = worker.problem()
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01)), model)
    loader = ft.DataLoader((X, Y), batchsize=worker.GLOBAL_BATCH, shuffle=True, rng=7)
    ref_losses = []
    for _ in range(worker.EPOCHS):
        losses = ft.train_(worker.lossfn, model, loader, st)
        ref_losses.append(sum(losses) / len(losses))

    ddp_model, _, _ = worker.problem()
    ddp_state = ft.setup(ft.Descent(), ddp_model)
    extras = ft.load(out, model=ddp_model, opt_state=ddp_state)
    assert extras["world"] == 2
    initial = worker.problem()[0]
    for p, q, p0 in zip(model.parameters(), ddp_model.parameters(), initial.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
        assert not torch.allclose(p, p0, rtol=0, atol=1e-3)  # training did move it
    for a, b in zip(extras["epoch_losses"], ref_losses):
        assert abs(a - b) < 1e-6  # metrics are the mean over ranks
    # The Learner on a DDP model equals the Learner in one process.
    learner = worker.make_learner(worker.problem()[0], world=1)
    ft.fit_(learner, worker.EPOCHS)
    ddp_learned = worker.problem()[0]
    ft.load(f"{out}.learner", model=ddp_learned)
    for p, q in zip(learner.model.parameters(), ddp_learned.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    # Checkpoints carry no "module." prefix, and only rank 0 wrote.
    assert (tmp_path / "ddp.safetensors.rank0").exists()
    assert not (tmp_path / "ddp.safetensors.rank1").exists()


def run_dying(how: str, tmp_path: Path) -> tuple[int, str]:
    port = free_port()
    logs = [str(tmp_path / f"rank{r}.log") for r in range(2)]
    procs = [
        FORKSERVER.Process(target=worker.forked_rank, args=(how, r, 2, port, logs[r]))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        # Bounded: a hang fails the join below instead of blocking the suite.
        procs[0].join(timeout=45)
        procs[1].join(timeout=5)
        assert procs[0].exitcode is not None, "rank 0 hangs after rank 1 died"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return procs[0].exitcode, Path(logs[0]).read_text()


def test_rank_that_raises_makes_the_other_exit_with_an_error_naming_it(tmp_path):
    code, out = run_dying("raise", tmp_path)
    assert code != 0
    assert "rank 1 failed: ValueError: boom on purpose in rank 1" in out


def test_killed_rank_makes_the_other_exit_with_a_clear_error_not_a_hang(tmp_path):
    code, out = run_dying("kill", tmp_path)
    assert code != 0
    assert "rank 1" in out or "another rank" in out


def test_watchdog_stops_an_idle_rank_whose_peer_was_killed(tmp_path):
    code, out = run_dying("kill-idle", tmp_path)
    assert code == ft.distributed.WATCHDOG_EXIT_CODE
    assert "rank 1 has sent no heartbeat" in out
    assert "never stopped" not in out


def test_helpers_are_identities_in_a_single_process():
    assert ft.init_distributed() == (0, 1)
    assert (ft.rank(), ft.world_size(), ft.is_main_process()) == (0, 1, True)
    m = torch.nn.Linear(1, 1)
    assert ft.data_parallel(m) is m
    assert ft.broadcast_object([1, 2]) == [1, 2]
    assert ft.all_reduce_mean(torch.tensor(2.0)) == torch.tensor(2.0)
