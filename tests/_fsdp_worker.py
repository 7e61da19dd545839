"""What the FSDP2 tests run in each of 2 processes (gloo on CPU), and the same problems run in
one unsharded process as the reference (not a test itself).

Every problem is small and in float64, so that 2 sharded ranks and 1 plain process agree to far
better than the 1e-5 the tests ask for.  Rank 0 gathers the full parameters and optimiser state
(``DTensor.full_tensor()``) and writes them with ``safetensors`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

import fluxtrain as ft
from fluxtrain.optimisers.engine import atoms
from fluxtrain.optimisers.state import leaves, unwrap

BATCH = 4  # rows per rank; the reference takes both ranks' rows at once
STEPS = 4


def rule_configs() -> dict[str, ft.Rule]:
    """Every rule of ``ft.optimisers.rules.__all__`` (gradient transforms inside a chain)."""
    return {
        "Descent": ft.Descent(0.1),
        "Momentum": ft.Momentum(0.01, 0.9),
        "Nesterov": ft.Nesterov(0.01),
        "RMSProp": ft.RMSProp(0.01, centred=True),
        "Rprop": ft.Rprop(0.01),
        "Adam": ft.Adam(0.01),
        "RAdam": ft.RAdam(0.01),
        "AdaMax": ft.AdaMax(0.01),
        "OAdam": ft.OAdam(0.01),
        "AdaGrad": ft.AdaGrad(0.1),
        "AdaDelta": ft.AdaDelta(),
        "AMSGrad": ft.AMSGrad(0.01),
        "NAdam": ft.NAdam(0.01),
        "AdamW": ft.AdamW(0.01, lambd=0.1),
        "AdaBelief": ft.AdaBelief(0.01),
        "Lion": ft.Lion(0.001),
        "WeightDecay": ft.OptimiserChain(ft.WeightDecay(0.1), ft.Descent(0.1)),
        "SignDecay": ft.OptimiserChain(ft.SignDecay(0.01), ft.Descent(0.1)),
        "ClipGrad": ft.OptimiserChain(ft.ClipGrad(0.05), ft.Descent(0.1)),
        "ClipNorm": ft.OptimiserChain(ft.ClipNorm(0.3), ft.Descent(0.1)),
        "ClipNorm_AdamW": ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.01, lambd=0.1)),
        "ClipNorm_global": ft.OptimiserChain(ft.ClipNorm(0.3, scope="global"), ft.Momentum(0.05)),
        "AccumGrad": ft.OptimiserChain(ft.AccumGrad(2), ft.Adam(0.01)),
        "Scheduler": ft.Scheduler(ft.Momentum, eta=ft.Exp(0.1, 0.5)),
    }


def model() -> torch.nn.Sequential:
    """The same initial model everywhere; 3 outputs so that the last layer shards unevenly."""
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both ranks' rows of one step: rank r takes rows ``r*BATCH:(r+1)*BATCH``."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(2 * BATCH, 6, generator=g, dtype=torch.float64)
    y = torch.randn(2 * BATCH, 3, generator=g, dtype=torch.float64)
    return x, y


def lossfn(m: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((m(x) - y) ** 2).mean()


def shard(m: torch.nn.Module, which: str = "all") -> torch.nn.Module:
    """``fully_shard`` each Linear and the root (``which="first"``: only the first Linear)."""
    from torch.distributed.fsdp import fully_shard

    if which == "first":
        fully_shard(m[0])
        return m
    fully_shard(m[0])
    fully_shard(m[2])
    fully_shard(m)
    return m


def train_rule(m: Any, rule: ft.Rule, rank: int | None, between: Any = None) -> Any:
    """STEPS steps: even steps through ``.grad``, odd ones with a gradient tree.

    ``rank=None`` is the reference (all rows); ``between(st, step)`` runs after each step.
    """
    st = ft.setup(rule, m)
    for step in range(STEPS):
        x, y = data(step)
        if rank is not None:
            x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
        if step % 2 == 0:
            lossfn(m, x, y).backward()
            ft.update_(st, m)
            for p in m.parameters():
                p.grad = None
        else:
            ft.update_(st, m, ft.gradient(lossfn, m, x, y)[0])
        if between is not None:
            between(st, step)
    return st


def adjust_freeze(st: Any, step: int) -> None:
    """Change one sub-model's learning rate, freeze another, thaw it, reset one (as a user)."""
    if step == 0:
        ft.adjust_(st[0], 0.05)
        ft.freeze_(st[2])
    elif step == 1:
        ft.thaw_(st[2])
        ft.reset_(st[0])


def full(t: Any) -> Any:
    f = getattr(t, "full_tensor", None)
    return f() if f is not None else t


def snapshot(prefix: str, m: Any, st: Any, out: dict[str, torch.Tensor]) -> None:
    """Full parameters and full state tensors (and counters as tensors) under ``prefix``."""
    for name, p in unwrap(m).named_parameters():
        out[f"{prefix}/param/{name}"] = full(p.detach()).clone()
    for i, leaf in enumerate(leaves(st)):
        for j, a in enumerate(atoms(leaf.state)):
            if isinstance(a, torch.Tensor):
                out[f"{prefix}/state/{i}/{j}"] = full(a).clone()
            elif isinstance(a, (int, float)):
                out[f"{prefix}/state/{i}/{j}"] = torch.tensor(float(a), dtype=torch.float64)


def run_rules(rank: int | None) -> dict[str, torch.Tensor]:
    """Every rule, the adjust_/freeze_ problem and the partly sharded model."""
    out: dict[str, torch.Tensor] = {}
    for name, rule in rule_configs().items():
        m = model() if rank is None else shard(model())
        st = train_rule(m, rule, rank)
        snapshot(name, m, st, out)
    m = model() if rank is None else shard(model())
    st = train_rule(m, ft.Adam(0.01), rank, between=adjust_freeze)
    snapshot("adjust_freeze", m, st, out)
    # Only the first layer sharded; the rest plain (so both ranks must see the same rows).
    m = model() if rank is None else shard(model(), "first")
    st = train_rule(m, ft.OptimiserChain(ft.ClipNorm(0.3), ft.Adam(0.01)), None)
    snapshot("partly_sharded", m, st, out)
    # The implicit style (Flux <= 0.13): Params, gradient of a closure, update_(rule, ps, gs).
    m = model() if rank is None else shard(model())
    ps = ft.params(m)
    rule = ft.Momentum(0.05)
    for step in range(STEPS):
        x, y = data(step)
        if rank is not None:
            x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
        ft.update_(rule, ps, ft.gradient(lambda: lossfn(m, x, y), ps))  # noqa: B023
    snapshot("implicit", m, {}, out)
    return out


def rank_main(task: str, rank: int, world: int, port: int, out: str) -> None:
    """Entry point of one rank started by multiprocessing."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        ft.init_distributed(timeout=60, heartbeat_timeout=30)
        if task == "rules":
            result = run_rules(rank)
            if rank == 0:
                from safetensors.torch import save_file

                save_file(result, out)
        else:
            getattr(sys.modules[__name__], task)(rank, world, out)
        ft.shutdown_distributed()
    except BaseException:
        sys.excepthook(*sys.exc_info())
        os._exit(1)
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints, resume, Learner


def dropout_model() -> torch.nn.Sequential:
    """With Dropout, so that a resumed run equals the uninterrupted one only if each rank's
    RNG state is restored too."""
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def resume_rule() -> ft.Rule:
    return ft.OptimiserChain(ft.ClipNorm(1.0), ft.Scheduler(ft.Adam, eta=ft.Exp(0.01, 0.9)))


def shard_dropout(m: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(m[0])
    fully_shard(m[3])
    fully_shard(m)
    return m


def rank_data(rank: int | None, steps: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for step in steps:
        x, y = data(step)
        if rank is not None:
            x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
        out.append((x, y))
    return out


def learner(m: Any, rank: int, folder: str) -> Any:
    from fluxtrain.callbacks import Checkpointer

    batches = rank_data(rank, range(3))
    return ft.Learner(
        m, torch.nn.functional.mse_loss, resume_rule(),
        callbacks=[Checkpointer(folder, keep=2)], data=(batches, None),
        usedefaultcallbacks=False,
    )  # fmt: skip


class no_unpickling:
    """Make ``pickle.load``/``loads``/``Unpickler`` and ``torch.load`` fail while it is active:
    loading a sharded checkpoint must use none of them (on any rank)."""

    def __enter__(self) -> None:
        import pickle

        def refuse(*args: Any, **kw: Any) -> Any:
            raise AssertionError("loading a checkpoint unpickled something")

        self.saved = [(pickle, n, getattr(pickle, n)) for n in ("load", "loads", "Unpickler")]
        self.saved.append((torch, "load", torch.load))
        for mod, name, _ in self.saved:
            setattr(mod, name, refuse)

    def __exit__(self, *exc: Any) -> None:
        for mod, name, f in self.saved:
            setattr(mod, name, f)


def sharded_loader() -> ft.DataLoader:
    x, y = data(0)
    return ft.DataLoader((x, y), batchsize=2, shuffle=True, rng=5, shard="auto")


def checkpoints(rank: int, world: int, out: str) -> None:
    """Sharded save/load on 2 ranks; results for the 1-process checks of the test in ``out``."""
    from safetensors.torch import save_file

    result: dict[str, torch.Tensor] = {}
    # train_ 2 steps, save (every rank writes its shards), 2 more: the uninterrupted run.
    torch.manual_seed(10 + rank)  # each rank its own dropout masks
    m = shard_dropout(dropout_model())
    st = ft.setup(resume_rule(), m)
    ft.train_(lossfn, m, rank_data(rank, range(2)), st)
    loader = sharded_loader()  # its state differs by rank: each rank must get its own back
    batches = iter(loader)
    next(batches)  # saved in the middle of an epoch
    ft.save(f"{out}/two_ranks", model=m, opt_state=st, step=2, data=loader)
    snapshot("saved", m, st, result)
    ft.train_(lossfn, m, rank_data(rank, range(2, 4)), st)
    snapshot("uninterrupted", m, st, result)
    # Resume: a fresh model and state, loaded from the checkpoint, the same 2 more steps.
    torch.manual_seed(99)  # the checkpoint's RNG states must override this
    m2 = shard_dropout(dropout_model())
    st2 = ft.setup(ft.Descent(), m2)
    loader2 = sharded_loader()
    with no_unpickling():
        extras = ft.load(f"{out}/two_ranks", model=m2, opt_state=st2, data=loader2)
    assert extras["step"] == 2 and extras["data"]["shard"] == [rank, world], extras
    assert all(torch.equal(a, b) for a, b in zip(next(iter(loader2)), next(batches)))
    ft.train_(lossfn, m2, rank_data(rank, range(2, 4)), st2)
    snapshot("resumed", m2, st2, result)
    # A checkpoint the test wrote in one process, loaded on 2 ranks (resharded).
    m3 = shard_dropout(dropout_model())
    st3 = ft.setup(ft.Descent(), m3)
    with no_unpickling():
        ft.load(f"{out}/one_rank", model=m3, opt_state=st3)
    snapshot("one_to_two", m3, st3, result)
    # The Learner: Checkpointer under FSDP2, then fit_(..., resume=) of a fresh learner.
    torch.manual_seed(20 + rank)
    full_run = learner(shard_dropout(dropout_model()), rank, f"{out}/learner_full")
    ft.fit_(full_run, 3)
    snapshot("learner_uninterrupted", full_run.model, full_run.opt_state, result)
    torch.manual_seed(20 + rank)
    first = learner(shard_dropout(dropout_model()), rank, f"{out}/learner_part")
    ft.fit_(first, 2)
    torch.manual_seed(98)
    again = learner(shard_dropout(dropout_model()), rank, f"{out}/learner_part")
    ft.fit_(again, 3, resume=f"{out}/learner_part/epoch_002.safetensors")
    snapshot("learner_resumed", again.model, again.opt_state, result)
    if rank == 0:
        save_file(result, f"{out}/result.safetensors")
