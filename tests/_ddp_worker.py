"""A training script the distributed tests launch in several processes (not a test itself).

python -m torch.distributed.run --nproc-per-node 2 tests/_ddp_worker.py train OUT
RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python tests/_ddp_worker.py die raise|kill|kill-idle
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

import fluxtrain as ft

EPOCHS = 2
GLOBAL_BATCH = 8


def problem():
    """Model and data, identical in every process (and in the 1-process reference)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    ).double()
    return model, X, Y


def lossfn(m, x, y):
    return ((m(x) - y) ** 2).mean()


def train(out: str) -> None:
    rank, world = ft.init_distributed(timeout=60, heartbeat_timeout=20)
    model, X, Y = problem()
    ddp = ft.data_parallel(model)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.Adam(0.01)), ddp)
    loader = ft.DataLoader(
        (X, Y), batchsize=GLOBAL_BATCH // world, shuffle=True, rng=7, shard="auto"
    )
    epoch_losses = []
    for _ in range(EPOCHS):
        losses = ft.train_(lossfn, ddp, loader, st)
        epoch_losses.append(ft.all_reduce_mean(sum(losses) / len(losses)))
    # The Learner (its step differentiates with ft.gradient) on a second wrapped model.
    learner_model = problem()[0]
    learner = make_learner(ft.data_parallel(learner_model), world)
    ft.fit_(learner, EPOCHS)
    # Every rank asks to save: only rank 0 writes.
    ft.save(f"{out}.rank{rank}", model=ddp)
    ft.save(out, model=ddp, opt_state=st, epoch_losses=epoch_losses, world=world)
    ft.save(f"{out}.learner", model=learner.model, opt_state=learner.opt_state)
    ft.shutdown_distributed()


def make_learner(model, world: int):
    _, X, Y = problem()
    shard = "auto" if world > 1 else None
    loader = ft.DataLoader(
        (X, Y), batchsize=GLOBAL_BATCH // world, shuffle=True, rng=3, shard=shard
    )
    mse = torch.nn.functional.mse_loss
    return ft.Learner(model, mse, ft.Momentum(0.05), callbacks=[], data=loader)


def die(how: str) -> None:
    rank, _ = ft.init_distributed(timeout=120, heartbeat_timeout=5, heartbeat_interval=0.5)
    model, X, Y = problem()
    ddp = ft.data_parallel(model)
    st = ft.setup(ft.Adam(0.01), ddp)
    loader = ft.DataLoader((X, Y), batchsize=4, shuffle=True, rng=7, shard="auto")
    print(f"rank {rank} ready", flush=True)
    if how == "kill-idle":
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        for _ in range(600):  # busy in Python, in no collective: only the watchdog can tell
            time.sleep(0.1)
        print("rank 0 was never stopped", flush=True)
        return
    for step, (x, y) in enumerate(loader):
        if rank == 1 and step == 2:
            if how == "raise":
                raise ValueError("boom on purpose in rank 1")
            os.kill(os.getpid(), signal.SIGKILL)
        ft.train_(lossfn, ddp, [(x, y)], st)
    for _ in range(100):
        ft.train_(lossfn, ddp, loader, st)


def forked_rank(how: str, rank: int, world: int, port: int, log: str) -> None:
    """Entry point of a rank started with multiprocessing (output to ``log``)."""
    sys.stdout = sys.stderr = open(log, "w", buffering=1)
    os.dup2(sys.stdout.fileno(), 1)
    os.dup2(sys.stdout.fileno(), 2)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        die(how)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # what the interpreter does with a script's exception
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2])
    else:
        die(sys.argv[2])
