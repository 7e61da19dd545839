"""Exact resume: N steps straight == k steps, save, load in a fresh process, N-k more steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import fluxtrain as ft

sys.path.insert(0, str(Path(__file__).parent))
import _resume_worker as worker

N, K = 15, 7  # 5 batches per epoch: the checkpoint is taken in the middle of epoch 2


def test_train_resumed_in_a_fresh_process_is_bit_identical_to_training_straight(tmp_path):
    threads = torch.get_num_threads()
    try:
        model, st, loader = worker.build()
        assert len(loader) == 5
        worker.train_steps(model, st, loader, N)
        straight = [p.detach().clone() for p in model.parameters()]
        straight_bn = model[1].running_mean.clone()

        model, st, loader = worker.build()
        worker.train_steps(model, st, loader, K)
        ft.save(tmp_path / "k.safetensors", model=model, opt_state=st, data=loader)
        # Draw from every generator after saving: the fresh process must not depend on it.
        torch.rand(5)
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "resumed.safetensors"
    res = subprocess.run(
        [
            sys.executable,
            str(Path(worker.__file__)),
            str(tmp_path / "k.safetensors"),
            str(N - K),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, _, _ = worker.build()
    ft.load(out, model=resumed)
    torch.set_num_threads(threads)
    for a, b in zip(straight, resumed.parameters()):
        assert torch.equal(a, b)  # bit-identical, not merely close
    assert torch.equal(straight_bn, resumed[1].running_mean)


def test_resume_without_the_loader_state_would_differ(tmp_path):
    """The test above can fail: skipping the data order breaks bit-identity."""
    threads = torch.get_num_threads()
    try:
        model, st, loader = worker.build()
        worker.train_steps(model, st, loader, N)
        straight = [p.detach().clone() for p in model.parameters()]

        model, st, loader = worker.build()
        worker.train_steps(model, st, loader, K)
        ft.save(tmp_path / "k.safetensors", model=model, opt_state=st)  # no data=
        model2, st2, loader2 = worker.build()
        ft.load(tmp_path / "k.safetensors", model=model2, opt_state=st2)
        worker.train_steps(model2, st2, loader2, N - K)
    finally:
        torch.set_num_threads(threads)
    assert not all(torch.equal(a, b) for a, b in zip(straight, model2.parameters()))


def test_learner_resumed_with_fit_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    threads = torch.get_num_threads()
    try:
        straight = worker.build_learner(tmp_path / "straight")
        ft.fit_(straight, 4)
        expected = [p.detach().clone() for p in straight.model.parameters()]

        first = worker.build_learner(tmp_path / "first")
        ft.fit_(first, 2)  # an interrupted run: its Checkpointer wrote epoch 1 and 2
        ckpt = tmp_path / "first" / "epoch_002.safetensors"
        assert ckpt.exists()
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "resumed.safetensors"
    cmd = [sys.executable, str(Path(worker.__file__)), "--learner", str(ckpt), "4", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, _, _ = worker.build()
    torch.set_num_threads(threads)
    assert ft.load(out, model=resumed)["epoch"] == 4
    for a, b in zip(expected, resumed.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.model[1].running_var, resumed[1].running_var)
