"""Exact-resume test helper: one training setup, and a script that resumes it (not a test).

    python tests/_resume_worker.py CHECKPOINT STEPS OUT
loads CHECKPOINT into a freshly built setup, trains STEPS more batches and saves the model to OUT.

    python tests/_resume_worker.py --learner CHECKPOINT EPOCHS OUT
builds a fresh Learner, ``fit_(learner, EPOCHS, resume=CHECKPOINT)``, saves the model to OUT.
"""

from __future__ import annotations

import itertools
import sys

import torch

import fluxtrain as ft


def build():
    """Model (with Dropout and BatchNorm), optimiser state and shuffling loader, all seeded."""
    torch.set_num_threads(1)  # one thread: the same summation order in every process
    torch.manual_seed(42)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 6, generator=g)
    Y = torch.randn(40, 1, generator=g)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(16, 1),
    )
    st = ft.setup(ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.01, lambd=0.01)), model)
    loader = ft.DataLoader((X, Y), batchsize=8, shuffle=True)  # seeded from torch's global rng
    return model, st, loader


def lossfn(m, x, y):
    return torch.nn.functional.mse_loss(m(x), y)


def train_steps(model, st, loader, n):
    """Train ``n`` batches, continuing the loader's current epoch, then whole epochs."""
    done = 0
    while done < n:
        take = min(len(loader) - loader.state_dict()["position"], n - done)
        ft.train_(lossfn, model, itertools.islice(loader, take), st)
        done += take
    return model


def build_learner(folder):
    """The same run as a Learner with a Checkpointer writing to ``folder`` every epoch."""
    model, _, loader = build()
    g = torch.Generator().manual_seed(5)
    valid = [(torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)) for _ in range(2)]
    return ft.Learner(
        model,
        torch.nn.functional.mse_loss,
        ft.OptimiserChain(ft.ClipNorm(1.0), ft.AdamW(0.01, lambd=0.01)),
        callbacks=[ft.callbacks.Checkpointer(folder), ft.callbacks.Recorder()],
        data=(loader, valid),
    )


if __name__ == "__main__" and sys.argv[1] == "--learner":
    ckpt, epochs, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    learner = build_learner(out + ".checkpoints")
    ft.fit_(learner, epochs, resume=ckpt)
    ft.save(out, model=learner.model, epoch=learner.epoch)
elif __name__ == "__main__":
    ckpt, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model, st, loader = build()
    ft.load(ckpt, model=model, opt_state=st, data=loader)
    train_steps(model, st, loader, steps)
    ft.save(out, model=model)
