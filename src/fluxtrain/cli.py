"""The ``fluxtrain`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _quickstart(args: argparse.Namespace) -> int:
    # Seed 000's loop, end to end: setup, gradient, update_ on a small regression problem.
    import torch

    import fluxtrain as ft

    torch.manual_seed(args.seed)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt_state = ft.setup(ft.Adam(0.01), model)
    for epoch in range(1, args.epochs + 1):
        for i in range(0, 256, 32):
            xb, yb = x[i : i + 32], y[i : i + 32]
            val, grads = ft.withgradient(lambda m: ((m(xb) - yb) ** 2).mean(), model)
            ft.update_(opt_state, model, grads[0])
        if epoch % 10 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}  loss {val:.5f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fluxtrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model end to end")
    demo.add_argument("--epochs", type=int, default=50, help="number of epochs (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _quickstart(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
