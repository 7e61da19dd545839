"""One shuffled epoch over in-memory data: fluxtrain's DataLoader against torch's DataLoader
and against raw index slicing.

Data: X float32 of 60,000 x 28 x 28 and Y int64 of 60,000 (MNIST-sized), batch sizes 32 and 256.

* ``fluxtrain``: ``ft.DataLoader((X, Y), batchsize=b, shuffle=True)``;
* ``torch``: ``torch.utils.data.DataLoader(TensorDataset(X, Y), batch_size=b, shuffle=True)``
  (default settings: one process, per-sample indexing and ``default_collate``);
* ``raw``: ``perm = torch.randperm(n)`` then ``X[perm[i:i+b]], Y[perm[i:i+b]]`` in a loop,
  the floor for a Python loop that gathers shuffled batches.

Each time is the best of a few full epochs. Targets: at least 20x faster than torch's
DataLoader at batch size 32, and within 1.2x of raw slicing. The table goes to stdout, the
figures to bench/results/dataloader.json.

    python bench/dataloader.py            # full run
    python bench/dataloader.py --quick    # fewer repeats (torch's loader: one epoch)
    python bench/dataloader.py --threads 1  # on a busy machine: avoids OpenMP contention
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fluxtrain as ft
from _timing import best_time, machine, table

N = 60_000
RESULTS = Path(__file__).resolve().parent / "results" / "dataloader.json"


def epoch(loader) -> None:
    for _x, _y in loader:
        pass


def raw_epoch(X: torch.Tensor, Y: torch.Tensor, b: int) -> None:
    perm = torch.randperm(X.shape[0])
    for i in range(0, X.shape[0], b):
        idx = perm[i : i + b]
        _x, _y = X[idx], Y[idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat, torch_repeat = (3, 1) if args.quick else (7, 3)

    torch.manual_seed(0)
    X = torch.rand(N, 28, 28)
    Y = torch.randint(0, 10, (N,))
    rows, results = [], []
    for b in (32, 256):
        ours = ft.DataLoader((X, Y), batchsize=b, shuffle=True, rng=0)
        theirs = TorchDataLoader(TensorDataset(X, Y), batch_size=b, shuffle=True)
        t_ours = best_time(lambda ours=ours: epoch(ours), repeat)
        t_raw = best_time(lambda b=b: raw_epoch(X, Y, b), repeat)
        t_torch = best_time(lambda theirs=theirs: epoch(theirs), torch_repeat)
        r = {
            "batchsize": b,
            "fluxtrain_s": t_ours,
            "torch_dataloader_s": t_torch,
            "raw_slicing_s": t_raw,
            "speedup_vs_torch": t_torch / t_ours,
            "ratio_to_raw": t_ours / t_raw,
        }
        results.append(r)
        rows.append(
            [b, t_ours * 1e3, t_torch * 1e3, t_raw * 1e3, r["speedup_vs_torch"], r["ratio_to_raw"]]
        )

    print(
        f"One shuffled epoch of X {tuple(X.shape)} float32 + Y int64, best of {repeat} "
        f"(torch's loader: {torch_repeat})"
    )
    print(table(["batch", "fluxtrain ms", "torch DL ms", "raw ms", "torch/ours", "ours/raw"], rows))
    at32 = results[0]
    met = {
        "20x_faster_than_torch_at_32": at32["speedup_vs_torch"] >= 20,
        "within_1.2x_of_raw": all(r["ratio_to_raw"] <= 1.2 for r in results),
    }
    print("targets:", ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": machine(), "quick": args.quick, "n": N, "results": results, "targets": met},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
