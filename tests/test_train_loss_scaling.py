"""train_ with a LossScaler: overflowing steps are skipped and counted, schedules do not move."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fluxtrain as ft


def _data(n: int = 12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, 4, generator=g)
    y = x.sum(dim=2, keepdim=True) * 0.5
    return [(x[i], y[i]) for i in range(n)]


def _loss(m, x, y):
    return ((m(x) - y) ** 2).mean()


@pytest.mark.parametrize("as_tree", [False, True])
def test_overflowing_steps_are_skipped_counted_and_do_not_advance_the_schedule(as_tree):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    if as_tree:  # the withgradient path of train_
        model = {"w": model.weight.detach().clone(), "b": model.bias.detach().clone()}
        loss = lambda m, x, y: (((x @ m["w"].T + m["b"]) - y) ** 2).mean()  # noqa: E731
    else:
        loss = _loss
    state = ft.setup(ft.Scheduler(ft.Descent, ft.Exp(0.05, 0.99)), model)
    # a scale of 2^140 overflows float32 gradients until it has been halved ~13 times
    scaler = ft.LossScaler(init_scale=2.0**140, backoff_factor=0.5, growth_interval=1000)
    losses = ft.train_(loss, model, _data(40), state, scaler=scaler, progress=False)
    assert scaler.skipped >= 10 and scaler.steps == 40 - scaler.skipped
    leaf = next(iter(ft.leaves(state)))
    assert leaf.state[0] == 1 + scaler.steps  # the schedule moved only on steps taken
    assert all(v == v and v < float("inf") for v in losses)
    assert losses[-1] < losses[scaler.skipped]  # and training went on to learn


def test_without_overflow_a_scaler_gives_the_unscaled_training():
    torch.manual_seed(0)
    a = nn.Linear(4, 1).double()
    b = nn.Linear(4, 1).double()
    b.load_state_dict(a.state_dict())
    data = [(x.double(), y.double()) for x, y in _data()]
    sa, sb = ft.setup(ft.Adam(0.01), a), ft.setup(ft.Adam(0.01), b)
    la = ft.train_(_loss, a, data, sa, progress=False)
    lb = ft.train_(_loss, b, data, sb, progress=False, scaler=ft.LossScaler(init_scale=1024.0))
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb))
    torch.testing.assert_close(a.weight, b.weight)
