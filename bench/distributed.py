"""Per-rank memory of parameters and optimiser state under FSDP2, fluxtrain against torch.optim.

    python bench/distributed.py            # prints the table, writes bench/results/distributed.json

A ~42M-parameter MLP (10 float32 layers of 2048 x 2048 plus biases) is trained for 3 steps with
Adam in each configuration, each in fresh processes:

- world size 1: one process, the plain model;
- world size 2: two processes (gloo, CPU), every layer and the root ``fully_shard``-ed (FSDP2).

Measured on each rank after setup and 3 steps: the bytes of the parameters and of the optimiser
state that the rank holds (for a DTensor its local shard), and the process's peak resident
memory (``VmHWM``) and its growth over setup and the 3 steps (from the peak of one forward and
backward run before the optimiser is set up, which includes FSDP's own buffers).  The figure that
matters for sharding is the optimiser state per rank: at world size 2 it should be half of world
size 1's, and fluxtrain's should equal torch.optim's (both keep Adam's two moments per element).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

LAYERS, WIDTH, BATCH, STEPS = 10, 2048, 8, 3


def _vm(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _local_bytes(t: Any) -> int:
    import torch

    if isinstance(t, torch.nn.Parameter):
        t = t.data
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _rank(world: int, rank: int, port: int, which: str, queue: Any) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    import torch

    import fluxtrain as ft

    torch.set_num_threads(1)
    ft.init_distributed(heartbeat_timeout=None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    x = torch.randn(BATCH, WIDTH)
    model(x).square().mean().backward()  # FSDP's lazy set-up and its buffers, before measuring
    for p in model.parameters():
        p.grad = None
    rss_before = _vm("VmHWM")
    if which == "fluxtrain":
        state = ft.setup(ft.Adam(1e-4), model)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(STEPS):
        model(x).square().mean().backward()
        t0 = time.perf_counter()
        if which == "fluxtrain":
            ft.update_(state, model)
        else:
            opt.step()
        times.append(time.perf_counter() - t0)
        for p in model.parameters():
            p.grad = None
    if which == "fluxtrain":
        from fluxtrain.optimisers.engine import atoms
        from fluxtrain.optimisers.state import leaves

        tensors = [a for leaf in leaves(state) for a in atoms(leaf.state)]
    else:
        tensors = [v for s in opt.state.values() for v in s.values()]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    result = {
        "world": world,
        "rank": rank,
        "optimiser": which,
        "parameters": sum(p.numel() for p in model.parameters()),  # a DTensor's: the whole
        "param_bytes": sum(_local_bytes(p) for p in model.parameters()),
        "state_bytes": sum(_local_bytes(t) for t in tensors),
        "peak_rss": _vm("VmHWM"),
        "rss_growth": _vm("VmHWM") - rss_before,
        "step_seconds": min(times),
    }
    queue.put(result)
    ft.shutdown_distributed()


def run(world: int, which: str) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_rank, args=(world, r, port, which, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a rank of world={world} {which} failed (exit {p.exitcode})")
    return sorted(out, key=lambda r: r["rank"])


def main() -> None:
    from _timing import machine, table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "distributed.json"
    )
    args = parser.parse_args()
    results = []
    for world in (1, 2):
        for which in ("fluxtrain", "torch.optim"):
            results += run(world, which)
    mib = 2**20
    state1 = {r["optimiser"]: r["state_bytes"] for r in results if r["world"] == 1}
    rows = []
    for r in results:
        rows.append([
            r["world"], r["rank"], r["optimiser"], f"{r['parameters'] / 1e6:.1f}M",
            f"{r['param_bytes'] / mib:.1f}", f"{r['state_bytes'] / mib:.1f}",
            f"{r['state_bytes'] / state1[r['optimiser']]:.2f}",
            f"{r['peak_rss'] / mib:.0f}", f"{r['rss_growth'] / mib:.0f}",
            f"{r['step_seconds'] * 1e3:.0f}",
        ])  # fmt: skip
    headers = [
        "world", "rank", "optimiser", "model", "params MiB/rank", "opt state MiB/rank",
        "state vs world 1", "peak RSS MiB", "RSS growth MiB", "update ms",
    ]  # fmt: skip
    print(table(headers, rows))
    ratio = {}
    for r in results:
        if r["world"] == 2 and r["optimiser"] == "fluxtrain":
            peer = next(
                q for q in results
                if q["world"] == 2 and q["optimiser"] == "torch.optim" and q["rank"] == r["rank"]
            )  # fmt: skip
            ratio[r["rank"]] = r["state_bytes"] / peer["state_bytes"]
    print("fluxtrain / torch.optim optimiser state per rank at world size 2:", ratio)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "results": results, "vs_torch": ratio}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
