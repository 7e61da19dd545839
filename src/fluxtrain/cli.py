"""The ``fluxtrain`` command line.

``fluxtrain demo`` trains a small convolutional network on the scikit-learn digits (8x8 images,
10 classes, shipped with scikit-learn: nothing is downloaded) with [`fluxtrain.Learner`][fluxtrain.learner.Learner],
shows a progress bar and a metrics table per epoch, and writes a run folder::

    runs/<name>/metrics.csv          one row per epoch: training and validation loss and accuracy
    runs/<name>/loss.png             training and validation loss per epoch
    runs/<name>/accuracy.png         training and validation accuracy per epoch
    runs/<name>/model.safetensors    the final model and optimiser state (``ft.save``)

An existing run folder is never overwritten silently: the command stops before training unless
``--overwrite`` is given. At the end it prints the two lines of Python that load the model back.
``--device`` trains on a GPU (``cuda``, ``cuda:1``, ``mps``, or ``auto`` for CUDA when present);
asking for a device this machine lacks is an error before anything runs.

The learning rate follows a cosine decay from ``--lr`` to ``--lr/100`` (an ``ft.Scheduler``
rule around the chosen ``--optimiser``).

``fluxtrain demo --mnist DIR`` trains the same kind of network on MNIST IDX files found in DIR.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["main"]

_CSV_FIELDS = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {v}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    # Show "(default: ...)" only where there is a default worth showing.
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Identity, not ==: a default of 0 (--seed) is worth showing, and 0 == False.
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``.

    Example:
        >>> _plural(1, "epoch"), _plural(12, "epoch"), _plural(12, "batch")
        ('1 epoch', '12 epochs', '12 batches')
    """
    if n == 1:
        return f"{n} {word}"
    hissing = word.endswith(("s", "x", "sh")) or (word.endswith("ch") and word != "epoch")
    return f"{n} {word}es" if hissing else f"{n} {word}s"


def _version() -> str:
    import torch

    from . import __version__

    return f"fluxtrain {__version__} (torch {torch.__version__})"


def _device(text: str) -> str:
    """Check a --device value names a device kind torch knows (availability is checked later)."""
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    return text


def resolve_device(name: str) -> Any:
    """The ``torch.device`` that ``--device name`` stands for; ``auto`` is CUDA when present,
    else the CPU. A device this machine does not have is a ``ValueError`` saying so.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    from .learner.callbacks.device import check_device_available

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    check_device_available(device, f"--device {name}")
    return device


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fluxtrain`` command (``fluxtrain demo --help``).

    Example:
        >>> args = build_parser().parse_args(["demo", "--epochs", "3", "--optimiser", "AdamW"])
        >>> args.epochs, args.optimiser, args.lr, str(args.out)
        (3, 'AdamW', 0.003, 'runs')
    """
    parser = argparse.ArgumentParser(
        prog="fluxtrain",
        description="fluxtrain: Flux.jl's training system on PyTorch.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train a small CNN on the digits data set and write a run folder",
        description=(
            "Train a small convolutional network on the scikit-learn digits set (or MNIST with "
            "--mnist) using fluxtrain's Learner; print a metrics table per epoch and the final "
            "validation accuracy; write metrics.csv, loss.png, accuracy.png and the final "
            "checkpoint model.safetensors to OUT/NAME/. The learning rate decays from LR to "
            "LR/100 along a cosine."
        ),
        formatter_class=_HelpFormatter,
    )
    demo.add_argument("--epochs", type=_positive_int, default=12, help="passes over the data")
    demo.add_argument("--batchsize", type=_positive_int, default=32, help="images per batch")
    demo.add_argument(
        "--optimiser",
        default="Adam",
        metavar="RULE",
        help="name of a fluxtrain rule taking the learning rate first: Adam, AdamW, NAdam, "
        "Momentum, Nesterov, Descent, RMSProp, Lion, ...",
    )
    demo.add_argument(
        "--lr",
        type=_positive_float,
        default=3e-3,
        help="peak learning rate (the rule's eta); 3e-3 suits Adam, try 0.05 for Momentum",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("runs"), help="folder that receives the run folder"
    )
    demo.add_argument(
        "--name",
        default=None,
        help="run folder name (default: <dataset>-<optimiser>-seed<seed>)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of weights and shuffling")
    demo.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="where to train: cpu, cuda, cuda:N, mps, or auto (CUDA when present, else the "
        "CPU); this small model trains fastest on the CPU",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an existing run folder (without it, an existing run folder "
        "is an error)",
    )
    demo.add_argument(
        "--mnist",
        type=Path,
        default=None,
        metavar="DIR",
        help="train on MNIST instead (validating on its test set): DIR holds the four IDX "
        "files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-..., optionally .gz); "
        "60,000 images take far longer per epoch than the digits, so try --epochs 3",
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads during training (one is fastest for this small model)",
    )
    demo.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser


@dataclass
class DemoResult:
    """What a demo run produced: where, the per-epoch rows, and the final validation accuracy."""

    run_dir: Path
    rows: list[dict[str, float]] = field(default_factory=list)
    valid_accuracy: float = float("nan")
    files: list[Path] = field(default_factory=list)


def write_metrics_csv(rows: Sequence[dict[str, float]], path: Path) -> Path:
    """Write ``rows`` (one dict per epoch) to the CSV file ``path`` and return ``path``.

    Columns: epoch, train_loss, train_accuracy, valid_loss, valid_accuracy (empty when missing).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = write_metrics_csv([{"epoch": 1, "train_loss": 0.5}], path)
        >>> path.read_text().splitlines()
        ['epoch,train_loss,train_accuracy,valid_loss,valid_accuracy', '1,0.5,,,']
    """
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(_CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in _CSV_FIELDS})
    return path


def plot_curves(rows: Sequence[dict[str, float]], run_dir: Path) -> list[Path]:
    """Draw ``loss.png`` (log scale) and ``accuracy.png`` into ``run_dir``: training and
    validation curves against the epoch; returns the two paths.

    Example:
        >>> import tempfile
        >>> rows = [{"epoch": e, "train_loss": 1 / e, "valid_loss": 1.2 / e,
        ...          "train_accuracy": 1 - 0.5 / e, "valid_accuracy": 1 - 0.6 / e} for e in (1, 2)]
        >>> [p.name for p in plot_curves(rows, Path(tempfile.mkdtemp()))]
        ['loss.png', 'accuracy.png']
    """
    # The object-oriented API draws off-screen without touching pyplot's global backend, so
    # calling this from a notebook leaves its plotting set-up alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    written = []
    for metric, ylabel in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig = Figure(figsize=(6, 4), dpi=100, layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for phase, style in (("train", "o-"), ("valid", "s-")):
            ax.plot(epochs, [r[f"{phase}_{metric}"] for r in rows], style, label=phase, ms=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if metric == "loss":
            ax.set_yscale("log")
        ax.set_title(f"{metric} per epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = run_dir / f"{metric}.png"
        fig.savefig(path)
        written.append(path)
    return written


def resolve_rule(name: str) -> type:
    """The fluxtrain rule class called ``name`` (case-insensitive) that has a learning rate
    ``eta``; a ``ValueError`` listing the choices otherwise.

    Example:
        >>> resolve_rule("nesterov")
        <class 'fluxtrain.optimisers.rules.Nesterov'>
    """
    import fluxtrain as ft

    rules = {
        n: obj
        for n in dir(ft)
        if isinstance(obj := getattr(ft, n), type)
        and issubclass(obj, ft.Rule)
        and obj is not ft.Rule
        and dataclasses.is_dataclass(obj)
        and "eta" in {f.name for f in dataclasses.fields(obj)}
    }
    by_lower = {n.lower(): n for n in rules}
    if name.lower() not in by_lower:
        raise ValueError(
            f"--optimiser {name!r} is not a fluxtrain rule with a learning rate; "
            f"choose one of {', '.join(sorted(rules))}"
        )
    return rules[by_lower[name.lower()]]


def make_cnn(channels: int, height: int, width: int, nclasses: int = 10) -> Any:
    """A small CNN for ``(N, channels, height, width)`` images: two 3x3 convolutions, a 2x2 max
    pool, a hidden dense layer with dropout, and ``nclasses`` logits.

    Example:
        >>> import torch
        >>> make_cnn(1, 8, 8)(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """
    import fluxtrain as ft

    pool = 2 if height <= 8 else 4  # MNIST's 28x28 is pooled harder to keep the demo quick
    flat = 32 * (height // pool) * (width // pool)
    return ft.Chain(
        ft.Conv((3, 3), (channels, 16), ft.relu, pad=1),
        ft.Conv((3, 3), (16, 32), ft.relu, pad=1),
        ft.MaxPool((pool, pool)),
        ft.flatten,
        ft.Dense(flat, 64, ft.relu),
        ft.Dropout(0.25),
        ft.Dense(64, nclasses),
    )


def _epoch_rows(learner: Any) -> list[dict[str, float]]:
    """One dict per completed epoch from the ``Metrics`` callback's per-epoch history."""
    import fluxtrain as ft

    epoch_hist = learner.cbstate.metrics_epoch
    rows: dict[int, dict[str, float]] = {}
    for phase, prefix in ((ft.TrainingPhase(), "train"), (ft.ValidationPhase(), "valid")):
        hist = epoch_hist.get(phase)
        if hist is None:
            continue
        for metric, col in (("Loss", "loss"), ("Accuracy", "accuracy")):
            if metric in hist:
                for epoch, value in zip(hist.steps(metric), hist[metric]):
                    rows.setdefault(epoch, {"epoch": epoch})[f"{prefix}_{col}"] = value
    return [rows[e] for e in sorted(rows)]


def run_demo(args: argparse.Namespace) -> DemoResult:
    """Train the demo CNN as ``args`` say, print the table, write the run folder."""
    import torch

    import fluxtrain as ft

    rule_class = resolve_rule(args.optimiser)
    if args.mnist is not None:
        (xtr, ytr), (xva, yva) = ft.load_mnist(args.mnist)
        dataset = "mnist"
    else:
        (xtr, ytr), (xva, yva) = ft.load_digits(split=0.2, seed=args.seed)
        dataset = "digits"
    train = ft.DataLoader((xtr, ytr), batchsize=args.batchsize, shuffle=True, rng=args.seed)
    valid = ft.DataLoader((xva, yva), batchsize=max(args.batchsize, 256))
    name = args.name or f"{dataset}-{rule_class.__name__.lower()}-seed{args.seed}"
    run_dir = Path(args.out) / name
    if run_dir.exists() and not getattr(args, "overwrite", False):
        raise ValueError(
            f"the run folder {run_dir} already exists; pass --overwrite to replace its files, "
            "or --name to write a new one"
        )
    device = resolve_device(getattr(args, "device", "cpu"))

    threads = torch.get_num_threads()
    # A model this small runs fastest on one thread (and much faster than two on a busy machine).
    torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(args.seed)
        cnn_args = (*xtr.shape[1:], int(ytr.max()) + 1)
        model = make_cnn(*cnn_args[:3], nclasses=cnn_args[3])
        # Cosine decay of the learning rate from --lr to --lr/100 over the run, step by step
        # (a Scheduler rule keeps its step counter in the optimiser state, so it is saved too).
        nsteps = args.epochs * len(train)
        eta = ft.CosAnneal(l0=args.lr / 100, l1=args.lr, period=nsteps, restart=False)
        rule = ft.Scheduler(rule_class, eta=eta)
        print(
            f"fluxtrain demo: {dataset}, {len(xtr)} training and {len(xva)} validation images, "
            f"{_plural(args.epochs, 'epoch')} of {_plural(len(train), 'batch')}, {rule}"
            + ("" if device.type == "cpu" else f", on {device}")
        )
        callbacks = [
            ft.callbacks.ProgressBar(disable=True if args.no_progress else None),
            ft.callbacks.Metrics(ft.callbacks.Accuracy()),
            ft.callbacks.Recorder(),
            ft.callbacks.StopOnNaNLoss(),
            ft.callbacks.MetricsPrinter(),
        ]
        if device.type != "cpu":
            callbacks.insert(0, ft.callbacks.ToDevice(device))
        learner = ft.Learner(
            model, ft.losses.logitcrossentropy, rule, callbacks=callbacks, data=(train, valid)
        )
        ft.fit_(learner, args.epochs)
    finally:
        torch.set_num_threads(threads)

    rows = _epoch_rows(learner)
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folder
    result = DemoResult(run_dir=run_dir, rows=rows)
    result.valid_accuracy = rows[-1]["valid_accuracy"] if rows else float("nan")
    result.files.append(write_metrics_csv(rows, run_dir / "metrics.csv"))
    result.files.extend(plot_curves(rows, run_dir))
    checkpoint = ft.save(
        run_dir / "model.safetensors",
        model=learner.model,
        opt_state=learner.opt_state,
        epoch=len(rows),
        valid_accuracy=result.valid_accuracy,
    )
    if checkpoint is not None:
        result.files.append(Path(checkpoint))
    print(f"final validation accuracy: {result.valid_accuracy:.2%}")
    print(f"run folder: {run_dir}/ ({', '.join(p.name for p in result.files)})")
    if checkpoint is not None:
        c, h, w, k = cnn_args
        print(
            "load the model in Python with:\n"
            "    import fluxtrain as ft\n"
            "    from fluxtrain.cli import make_cnn\n"
            f"    model = make_cnn({c}, {h}, {w}, nclasses={k})\n"
            f"    ft.load({Path(checkpoint).as_posix()!r}, model=model)"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fluxtrain`` console script and of ``python -m fluxtrain``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            run_demo(args)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
