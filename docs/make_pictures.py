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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=IMG, help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for path in (schedules_figure(args.out / "schedules.png"),):
        print("wrote", path)


if __name__ == "__main__":
    main()
