"""Draw the figures of the documentation into docs/img/ (run: .venv/bin/python docs/make_pictures.py).

The PNGs are committed, so the docs build needs neither training nor matplotlib; re-run this
script after changing a schedule, the Learner's callbacks or the demo, and commit the result.
Everything is seeded, so a re-run on the same versions redraws the same curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import fluxtrain as ft

IMG = Path(__file__).resolve().parent / "img"


def schedules_figure(path: Path) -> Path:
    """A grid of the common schedules over 100 iterations."""
    panels = {
        "Cos(l0=1e-4, l1=1e-2, period=25)": ft.Cos(l0=1e-4, l1=1e-2, period=25),
        "Step(1e-2, 0.5, 20)": ft.Step(1e-2, 0.5, 20),
        "Exp(1e-2, 0.97)": ft.Exp(1e-2, 0.97),
        "OneCycle(100, 1e-2)": ft.OneCycle(100, 1e-2),
        "Triangle(l0=1e-4, l1=1e-2, period=40)": ft.Triangle(l0=1e-4, l1=1e-2, period=40),
        "warmup(CosAnneal(l0=0, l1=1e-2, period=90), 10)": ft.warmup(
            ft.CosAnneal(l0=0.0, l1=1e-2, period=90, restart=False), 10
        ),
    }
    ts = list(range(1, 101))
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), dpi=100, sharex=True)
    for ax, (title, s) in zip(axes.flat, panels.items()):
        ax.plot(ts, [s(t) for t in ts], color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes[1]:
        ax.set_xlabel("iteration t")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _digits_learner(callbacks: list, seed: int = 0) -> ft.Learner:
    """The demo's CNN on the digits, as ``fluxtrain demo`` builds it."""
    from fluxtrain.cli import make_cnn

    torch.manual_seed(seed)
    train, valid = ft.digits_loaders(batchsize=32, seed=seed)
    return ft.Learner(
        make_cnn(1, 8, 8),
        ft.losses.logitcrossentropy,
        ft.Adam(3e-3),
        callbacks=callbacks,
        data=(train, valid),
    )


def recorder_figure(path: Path, epochs: int = 8) -> Path:
    """What ``Metrics`` records during a fit, drawn by ``ft.callbacks.plot_metrics``."""
    metrics = ft.callbacks.Metrics(ft.callbacks.Accuracy())
    learner = _digits_learner([metrics, ft.callbacks.Recorder()])
    ft.fit_(learner, epochs)
    return ft.callbacks.plot_metrics(learner.cbstate, path)


def lr_find_figure(path: Path) -> Path:
    """The learning-rate range test on the demo's fresh CNN."""
    learner = _digits_learner([])
    result = ft.lr_find(learner, 1e-5, 1.0, nsteps=100, plot=path)
    print(f"lr_find suggests {result.suggestion:.3g}")
    return path


def demo_figures(out: Path) -> list[Path]:
    """The loss and accuracy curves ``fluxtrain demo`` writes, from a default run."""
    import shutil
    import tempfile

    from fluxtrain.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        cli_main(["demo", "--out", tmp, "--name", "run", "--no-progress"])
        written = []
        for name in ("loss", "accuracy"):
            target = out / f"demo_{name}.png"
            shutil.copyfile(Path(tmp) / "run" / f"{name}.png", target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=IMG, help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the fastest for these small models
    torch.manual_seed(0)
    for path in (
        schedules_figure(args.out / "schedules.png"),
        recorder_figure(args.out / "recorder_curves.png"),
        lr_find_figure(args.out / "lr_find.png"),
        *demo_figures(args.out),
    ):
        print("wrote", path)


if __name__ == "__main__":
    main()
