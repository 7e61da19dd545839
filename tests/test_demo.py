"""``fluxtrain demo``: the README's first command trains, reports and writes a usable run folder."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import fluxtrain as ft
from fluxtrain.cli import main, make_cnn, resolve_rule, run_demo

RUN_FILES = ("metrics.csv", "loss.png", "accuracy.png", "model.safetensors")


def _demo(tmp_path: Path, *extra: str) -> Path:
    assert main(["demo", "--out", str(tmp_path), "--name", "run", "--no-progress", *extra]) == 0
    return tmp_path / "run"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_real_picture(path: Path) -> None:
    img = matplotlib.image.imread(path)  # raises if the PNG does not decode
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].var()) > 0
    colours = np.unique(img[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 2, f"{path.name} has {len(colours)} colours: blank"


def test_short_demo_writes_csv_pictures_and_a_loadable_checkpoint(tmp_path, capsys):
    run = _demo(tmp_path, "--epochs", "3")
    out = capsys.readouterr().out
    assert "final validation accuracy" in out
    assert "valid Accuracy" in out  # the per-epoch table's header
    for name in RUN_FILES:
        assert (run / name).is_file(), name

    rows = _csv_rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        for col in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            assert np.isfinite(float(r[col])), (col, r)
        assert 0.0 <= float(r["valid_accuracy"]) <= 1.0
    # Three epochs on digits already learn something: the loss falls.
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    for name in ("loss.png", "accuracy.png"):
        assert_real_picture(run / name)

    model = make_cnn(1, 8, 8)
    extras = ft.load(run / "model.safetensors", model=model)
    assert extras["epoch"] == 3
    assert abs(extras["valid_accuracy"] - float(rows[-1]["valid_accuracy"])) < 1e-9


def test_default_demo_reaches_97_percent_validation_accuracy(tmp_path):
    args = _parser_args(["demo", "--out", str(tmp_path), "--no-progress"])
    result = run_demo(args)
    assert result.valid_accuracy >= 0.97, result.rows
    assert len(result.rows) == args.epochs
    assert result.run_dir == tmp_path / "digits-adam-seed0"


def _parser_args(argv: list[str]):
    from fluxtrain.cli import build_parser

    return build_parser().parse_args(argv)


def test_demo_restores_torch_thread_count(tmp_path):
    before = torch.get_num_threads()
    _demo(tmp_path, "--epochs", "1", "--threads", "1")
    assert torch.get_num_threads() == before


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--epochs",
        "--batchsize",
        "--optimiser",
        "--lr",
        "--out",
        "--name",
        "--seed",
        "--mnist",
    ):
        assert option in text, option
    assert "digits" in text and "validation accuracy" in text


def test_unknown_optimiser_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--optimiser", "Adamm", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Adamm" in err and "Adam" in err and "Nesterov" in err
    assert not any(tmp_path.iterdir()), "nothing is written when the arguments are wrong"


def test_optimiser_names_resolve_case_insensitively_to_rules_with_eta():
    assert resolve_rule("adamw") is ft.AdamW
    assert resolve_rule("Momentum") is ft.Momentum
    with pytest.raises(ValueError, match="ClipGrad"):
        resolve_rule("ClipGrad")  # a rule, but without a learning rate


def test_non_positive_epochs_and_learning_rate_are_refused(capsys):
    for argv in (["demo", "--epochs", "0"], ["demo", "--lr", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "positive" in capsys.readouterr().err


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_option_trains_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for kind, n in (("train", 96), ("t10k", 32)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        images[np.arange(n), 2 + 2 * labels, :] = 255  # a learnable stripe per class
        _write_idx(data / f"{kind}-images-idx3-ubyte", images)
        _write_idx(data / f"{kind}-labels-idx1-ubyte", labels)
    run = _demo(tmp_path, "--mnist", str(data), "--epochs", "2")
    rows = _csv_rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert_real_picture(run / "loss.png")


def test_missing_mnist_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--mnist", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "nowhere" in capsys.readouterr().err


def test_python_dash_m_fluxtrain_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "fluxtrain", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--mnist" in result.stdout


def test_version_prints_fluxtrain_and_torch_versions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert (
        capsys.readouterr().out.strip() == f"fluxtrain {ft.__version__} (torch {torch.__version__})"
    )


def test_help_shows_the_seed_default_and_the_device_and_overwrite_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "random seed of weights and shuffling (default: 0)" in text
    assert "--device" in text and "(default: cpu)" in text and "--overwrite" in text


def test_one_epoch_is_singular_and_the_loading_code_printed_works(tmp_path, capsys):
    run = _demo(tmp_path, "--epochs", "1")
    out = capsys.readouterr().out
    assert "1 epoch of 45 batches" in out and "1 epochs" not in out
    code = out[out.index("load the model in Python with:") :].splitlines()[1:]
    assert any("model.safetensors" in line for line in code)
    namespace: dict = {}
    exec("\n".join(line.strip() for line in code), namespace)  # the printed lines run as given
    model = namespace["model"]
    saved = make_cnn(1, 8, 8)
    ft.load(run / "model.safetensors", model=saved)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved.parameters()))


def test_an_existing_run_folder_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        _demo(tmp_path, "--epochs", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"the run folder {run} already exists; pass --overwrite" in err
    assert (run / "metrics.csv").read_text() == "precious"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv"]
    _demo(tmp_path, "--epochs", "1", "--overwrite")
    assert (run / "metrics.csv").read_text().startswith("epoch,")


def test_device_option_checks_the_device_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--device", "cuda", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["demo", "--device", "floppy"])
    assert "'floppy' is not a device" in capsys.readouterr().err
    run = _demo(tmp_path, "--epochs", "1", "--device", "auto")  # the CPU here
    assert (run / "model.safetensors").is_file()
