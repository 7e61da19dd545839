"""The data-feeding code blocks of seeds 000/002 (and seed 001's DataLoader), in Python.

Translation rule (API.md): the batch is the FIRST dimension, so Julia's ``rand(28, 28, 60_000)``
is ``torch.rand(60_000, 28, 28)``, ``eachslice(X; dims=3)`` is iterating over ``X`` (its first
dimension), ``eachcol(Y)`` of a ``10 x 60_000`` matrix is iterating over a ``60_000 x 10`` one,
and ``size(x1) == (28, 28, 32)`` becomes ``x1.shape == (32, 28, 28)``.
Each block is followed by a short training run showing that the data feeds a model.
"""

import itertools

import pytest
import torch

import fluxtrain as ft


@pytest.fixture(scope="module")
def mnist_sized():
    # Seeds: X = rand(28, 28, 60_000); Y = rand(10, 60_000)   (batch last in Julia)
    g = torch.Generator().manual_seed(0)
    return torch.rand(60_000, 28, 28, generator=g), torch.rand(60_000, 10, generator=g)


def small_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))


def mse_loss(m, x, y):
    return ft.losses.mse(m(x), y)


def test_seed_000_002_a_single_example_as_data():
    # x = randn(28, 28); y = rand(10); data = [(x, y)]
    x = torch.randn(28, 28)
    y = torch.rand(10)
    data = [(x, y)]
    # or data = [(x, y), (x, y), (x, y)] for the same values three times
    data3 = [(x, y), (x, y), (x, y)]

    model = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(784, 10))
    state = ft.setup(ft.Descent(0.01), model)
    losses = ft.train_(mse_loss, model, data, state, progress=False)
    assert len(losses) == 1
    losses3 = ft.train_(mse_loss, model, data3, state, progress=False)
    assert len(losses3) == 3 and losses3[-1] < losses[0]


def test_seed_000_002_zip_of_eachslice_and_eachcol(mnist_sized):
    X, Y = mnist_sized
    # data = zip(eachslice(X; dims=3), eachcol(Y))
    data = zip(X, Y)
    # first(data) isa Tuple{AbstractMatrix, AbstractVector}  # true
    first = next(iter(data))
    assert isinstance(first, tuple)
    assert first[0].shape == (28, 28) and first[1].shape == (10,)
    assert torch.equal(first[0], X[0]) and torch.equal(first[1], Y[0])

    model = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(784, 10))
    state = ft.setup(ft.Descent(0.01), model)
    losses = ft.train_(mse_loss, model, itertools.islice(zip(X, Y), 5), state, progress=False)
    assert len(losses) == 5


def test_seed_000_002_dataloader_batchsize_32(mnist_sized):
    X, Y = mnist_sized
    # data = Flux.DataLoader((X, Y), batchsize=32)
    data = ft.DataLoader((X, Y), batchsize=32)
    # x1, y1 = first(data)
    x1, y1 = next(iter(data))
    # size(x1) == (28, 28, 32)   -> batch first
    assert x1.shape == (32, 28, 28)
    assert y1.shape == (32, 10)
    # length(data) == 1875 === 60_000 ÷ 32
    assert len(data) == 1875 == 60_000 // 32

    model = small_model()
    state = ft.setup(ft.Adam(), model)
    losses = ft.train_(mse_loss, model, itertools.islice(data, 10), state, progress=False)
    assert len(losses) == 10


def test_seed_001_dataloader_with_two_positional_arrays():
    # X = rand(28, 28, 60000); Y = rand(0:9, 60000); data = DataLoader(X, Y, batchsize=128)
    X = torch.rand(60_000, 28, 28)
    Y = torch.randint(0, 10, (60_000,))
    data = ft.DataLoader(X, Y, batchsize=128)  # accepted: same as DataLoader((X, Y), ...)
    assert len(data) == 469  # ceil(60_000 / 128): the last, partial batch is kept
    x, y = next(iter(data))
    assert x.shape == (128, 28, 28) and y.shape == (128,) and y.dtype == torch.int64

    model = small_model()
    state = ft.setup(ft.Adam(), model)
    losses = ft.train_(
        lambda m, x, y: ft.losses.logitcrossentropy(m(x), y),
        model,
        itertools.islice(data, 5),
        state,
        progress=False,
    )
    assert len(losses) == 5
