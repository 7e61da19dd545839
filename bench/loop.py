"""Training-loop overhead: ``ft.train_`` against a hand-written PyTorch loop (and Lightning).

A small MLP (64 -> 128 -> 128 -> 10, ReLU, cross-entropy) on 16,384 samples of 64 features in
batches of 64 (256 steps per epoch): a case where the Python work around each step matters.
Every row trains the same model from the same initial weights with Adam(1e-3) and slices the
batches by index (``X[i:i + 64]``); one run measures all rows, interleaved epoch by epoch so that
a busy machine slows them alike, and reports the best epoch of each.

Rows:

* ``torch: hand loop, Adam(fused=True)``: ``zero_grad``, forward, ``backward``, ``step``: the
  reference;
* ``fluxtrain: train_``: ``ft.train_(loss, model, batches, opt_state)``;
* ``fluxtrain: hand loop, backward + update_``: the same engine without ``train_``, so the ratio
  to the row above is the cost of ``train_`` itself;
* ``fluxtrain: hand loop, withgradient + update_``: seed 000's loop written out;
* ``lightning: Trainer.fit``: if ``pytorch_lightning`` (or ``lightning``) is importable.

Prints seconds per epoch, microseconds per step and the ratio to the torch loop, and writes
bench/results/loop.json.

    python bench/loop.py            # 12 timed epochs per row
    python bench/loop.py --quick    # 3 timed epochs per row, 4096 samples
    python bench/loop.py --threads 1 --clock cpu   # steadier figures on a busy machine
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fluxtrain as ft

FEATURES, CLASSES, BATCH = 64, 10, 64


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, FEATURES, generator=g)
    Y = torch.randint(0, CLASSES, (n,), generator=g)
    return X, Y


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES)
    )


def batches(X: torch.Tensor, Y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(X), BATCH):
        yield X[i : i + BATCH], Y[i : i + BATCH]


def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(m(x), y)


# --- one epoch of each way of training ----------------------------------------------------------


def torch_loop(X: torch.Tensor, Y: torch.Tensor) -> tuple[nn.Module, Callable[[], None]]:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def epoch() -> None:
        for x, y in batches(X, Y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    return model, epoch


def ft_train(X: torch.Tensor, Y: torch.Tensor) -> tuple[nn.Module, Callable[[], None]]:
    model = make_model()
    opt_state = ft.setup(ft.Adam(1e-3), model)

    def epoch() -> None:
        ft.train_(loss_fn, model, batches(X, Y), opt_state, progress=False)

    return model, epoch


def ft_backward_loop(X: torch.Tensor, Y: torch.Tensor) -> tuple[nn.Module, Callable[[], None]]:
    model = make_model()
    opt_state = ft.setup(ft.Adam(1e-3), model)
    params = list(model.parameters())

    def epoch() -> None:
        for x, y in batches(X, Y):
            for p in params:
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            ft.update_(opt_state, model)

    return model, epoch


def ft_withgradient_loop(X: torch.Tensor, Y: torch.Tensor) -> tuple[nn.Module, Callable[[], None]]:
    model = make_model()
    opt_state = ft.setup(ft.Adam(1e-3), model)

    def epoch() -> None:
        for x, y in batches(X, Y):
            _, grads = ft.withgradient(lambda m: loss_fn(m, x, y), model)  # noqa: B023
            ft.update_(opt_state, model, grads[0])

    return model, epoch


class _Batches:
    """The batches of one epoch, with a length (so the Learner's progress bar knows it)."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.X, self.Y = X, Y

    def __len__(self) -> int:
        return (len(self.X) + BATCH - 1) // BATCH

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(self.X, self.Y)


def ft_learner(X: torch.Tensor, Y: torch.Tensor) -> tuple[nn.Module, Callable[[], None]]:
    """``fit_`` for one epoch with the default callbacks (metrics, recorder, printer...)."""
    model = make_model()
    learner = ft.Learner(model, F.cross_entropy, ft.Adam(1e-3), data=(_Batches(X, Y), None))

    def epoch() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the metrics table of each epoch
            ft.fit_(learner, 1)

    return model, epoch


def _lightning():
    try:
        import lightning.pytorch as pl  # type: ignore[import-not-found]
    except ImportError:
        try:
            import pytorch_lightning as pl  # type: ignore[import-not-found]
        except ImportError:
            return None
    return pl


def lightning_epochs(
    X: torch.Tensor, Y: torch.Tensor, n_epochs: int, clock: Callable[[], float]
) -> list[float] | None:
    """Seconds of each epoch of ``Trainer.fit`` (times taken by a callback), or None."""
    pl = _lightning()
    if pl is None:
        return None
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its banners are not results

    class Slices(torch.utils.data.Dataset):
        # One item per batch, cut by index slicing as in the other rows.
        def __len__(self) -> int:
            return (len(X) + BATCH - 1) // BATCH

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return X[i * BATCH : (i + 1) * BATCH], Y[i * BATCH : (i + 1) * BATCH]

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)

    class EpochTimes(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            self.t0 = clock()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.times.append(clock() - self.t0)

    timer = EpochTimes()
    trainer = pl.Trainer(
        max_epochs=n_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(Slices(), batch_size=None, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), loader)
    return timer.times


# --- measurement -------------------------------------------------------------------------------


ROWS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[nn.Module, Callable[[], None]]]] = {
    "torch: hand loop, Adam(fused=True)": torch_loop,
    "fluxtrain: train_": ft_train,
    "fluxtrain: hand loop, backward + update_": ft_backward_loop,
    "fluxtrain: hand loop, withgradient + update_": ft_withgradient_loop,
    "fluxtrain: Learner fit_, default callbacks": ft_learner,
}
REFERENCE = "torch: hand loop, Adam(fused=True)"


@torch.no_grad()
def _max_difference(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def check_same_training(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Largest parameter difference after one epoch between train_ and the torch loop."""
    a, epoch_a = torch_loop(X, Y)
    b, epoch_b = ft_train(X, Y)
    epoch_a()
    epoch_b()
    return _max_difference(a, b)


def measure(n: int, epochs: int, clock: Callable[[], float]) -> dict:
    X, Y = make_data(n)
    steps = (n + BATCH - 1) // BATCH
    runners = {name: make(X, Y)[1] for name, make in ROWS.items()}
    for run in runners.values():  # warm-up epoch (allocations, lazy inits, plan building)
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(epochs):
        for name, run in runners.items():
            t0 = clock()
            run()
            times[name].append(clock() - t0)
    lightning = lightning_epochs(X, Y, epochs + 1, clock)
    if lightning is not None:
        times["lightning: Trainer.fit"] = lightning[1:]  # its first epoch is the warm-up

    ref = min(times[REFERENCE])
    rows = []
    for name, ts in times.items():
        best = min(ts)
        rows.append(
            {
                "impl": name,
                "s_per_epoch": round(best, 5),
                "median_s_per_epoch": round(statistics.median(ts), 5),
                "us_per_step": round(1e6 * best / steps, 1),
                "vs_torch_loop": round(best / ref, 3),
            }
        )
    return {
        "samples": n,
        "features": FEATURES,
        "batchsize": BATCH,
        "steps_per_epoch": steps,
        "timed_epochs": epochs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": "not installed" if lightning is None else "measured",
        "max_param_diff_train__vs_torch_after_1_epoch": check_same_training(X, Y),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default), or the CPU time of this thread: steadier on a busy machine "
        "(use with --threads 1, as other threads' work is not counted)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, epochs = (4096, 3) if args.quick else (16384, 12)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    result = measure(n, epochs, clock)
    result["clock"] = args.clock

    width = max(len(r["impl"]) for r in result["rows"])
    print(
        f"{result['samples']} samples x {FEATURES} features, batch {BATCH} "
        f"({result['steps_per_epoch']} steps/epoch), best of {epochs} epochs, "
        f"{result['threads']} threads, {args.clock} clock, torch {result['torch']}"
    )
    print(f"{'impl':<{width}}  s/epoch   us/step  vs torch loop")
    for r in result["rows"]:
        print(
            f"{r['impl']:<{width}}  {r['s_per_epoch']:7.4f}  {r['us_per_step']:8.1f}  "
            f"{r['vs_torch_loop']:6.3f}x"
        )
    if result["lightning"] != "measured":
        print("(lightning: not installed, row skipped)")
    diff = result["max_param_diff_train__vs_torch_after_1_epoch"]
    print(f"max |train_ - torch loop| over parameters after one epoch: {diff:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
