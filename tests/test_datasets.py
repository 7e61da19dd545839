"""Digits (from scikit-learn, no download) and the IDX reader / MNIST loader on files the tests write."""

import gzip
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

import fluxtrain as ft


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """Write IDX by hand (independently of read_idx): header, sizes, big-endian values."""
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_byte]
    return header + array.astype(big).tobytes()


def test_load_digits_shapes_dtypes_range_and_split():
    (Xtr, ytr), (Xva, _yva) = ft.load_digits(split=0.25, seed=1)
    assert Xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert Xtr.shape[1:] == (1, 8, 8) and Xva.shape[1:] == (1, 8, 8)
    assert Xtr.shape[0] + Xva.shape[0] == 1797
    assert Xva.shape[0] == round(0.25 * 1797)
    assert float(Xtr.min()) == 0.0 and float(Xtr.max()) == 1.0
    assert set(ytr.tolist()) == set(range(10))


def test_load_digits_is_scikit_learns_data_scaled_by_16():
    (Xtr, ytr), (Xva, yva) = ft.load_digits(split=0.2, seed=0)
    raw = sk_load_digits()
    X = torch.cat([Xtr, Xva])[:, 0] * 16
    y = torch.cat([ytr, yva])
    # the two parts together are a permutation of the original images, labels attached
    rows = {(tuple(img.flatten().tolist()), int(t)) for img, t in zip(raw.images, raw.target)}
    assert all((tuple(x.flatten().tolist()), int(t)) in rows for x, t in zip(X, y))
    assert sorted(y.tolist()) == sorted(raw.target.tolist())


def test_load_digits_split_depends_on_seed_only():
    a = ft.load_digits(seed=3)
    b = ft.load_digits(seed=3)
    c = ft.load_digits(seed=4)
    assert torch.equal(a[1][1], b[1][1])
    assert not torch.equal(a[1][1], c[1][1])
    with pytest.raises(ValueError, match="split must be in"):
        ft.load_digits(split=1.0)


def test_digits_loaders_train_shuffles_and_valid_keeps_order():
    train, valid = ft.digits_loaders(batchsize=100, seed=0)
    (_, _), (_Xva, yva) = ft.load_digits(seed=0)
    assert train.shuffle and not valid.shuffle
    assert torch.equal(torch.cat([y for _, y in valid]), yva)
    e1 = torch.cat([y for _, y in train])
    e2 = torch.cat([y for _, y in train])
    assert not torch.equal(e1, e2) and sorted(e1.tolist()) == sorted(e2.tolist())


def test_a_small_model_learns_digits():
    torch.manual_seed(0)
    train, valid = ft.digits_loaders(batchsize=128, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        for x, y in train:
            opt.zero_grad()
            ft.losses.logitcrossentropy(model(x), y).backward()
            opt.step()
    correct = sum(int((ft.onecold(model(x)) == y).sum()) for x, y in valid)
    assert correct / valid.nobs > 0.85


@pytest.mark.parametrize(
    "type_byte, dtype, torch_dtype",
    [
        (0x08, np.uint8, torch.uint8),
        (0x09, np.int8, torch.int8),
        (0x0B, np.int16, torch.int16),
        (0x0C, np.int32, torch.int32),
        (0x0D, np.float32, torch.float32),
        (0x0E, np.float64, torch.float64),
    ],
)
def test_read_idx_every_type(tmp_path, type_byte, dtype, torch_dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    f = tmp_path / "data.idx"
    f.write_bytes(idx_bytes(a, type_byte))
    t = ft.read_idx(f)
    assert t.dtype == torch_dtype and t.shape == (3, 4, 5)
    assert np.array_equal(t.numpy(), a)


def test_read_idx_reads_gzip_by_content(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    f = tmp_path / "images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(ft.read_idx(f).numpy(), a)


def test_read_idx_truncated_file_is_a_clear_error(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    f = tmp_path / "cut-idx3-ubyte"
    f.write_bytes(idx_bytes(a)[:-7])
    with pytest.raises(
        ValueError,
        match=r"cut-idx3-ubyte is truncated: shape \(3, 4, 5\) needs 60 bytes of data but 53",
    ):
        ft.read_idx(f)


def test_read_idx_other_corruptions(tmp_path):
    f = tmp_path / "bad"
    f.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="is not an IDX file"):
        ft.read_idx(f)
    f.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too few for an IDX header"):
        ft.read_idx(f)
    f.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))
    with pytest.raises(ValueError, match="header declares 3 dimensions"):
        ft.read_idx(f)
    f.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="longer than its header says"):
        ft.read_idx(f)
    f.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(ValueError, match="damaged gzip"):
        ft.read_idx(f)


def write_mnist(directory, n_train=5, n_test=3, gz=False, dotted=False):
    rng = np.random.default_rng(1)
    parts = {}
    for kind, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        parts[kind] = (images, labels)
        for what, arr, d in (("images", images, 3), ("labels", labels, 1)):
            name = f"{kind}-{what}{'.' if dotted else '-'}idx{d}-ubyte"
            data = idx_bytes(arr)
            if gz:
                name, data = name + ".gz", gzip.compress(data)
            (directory / name).write_bytes(data)
    return parts


@pytest.mark.parametrize("gz, dotted", [(False, False), (True, False), (False, True)])
def test_load_mnist_reads_the_four_files(tmp_path, gz, dotted):
    parts = write_mnist(tmp_path, gz=gz, dotted=dotted)
    (Xtr, ytr), (Xte, yte) = ft.load_mnist(tmp_path)
    assert Xtr.shape == (5, 1, 28, 28) and Xte.shape == (3, 1, 28, 28)
    assert Xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert torch.allclose(Xtr[:, 0] * 255, torch.from_numpy(parts["train"][0]).float())
    assert ytr.tolist() == parts["train"][1].tolist() and yte.tolist() == parts["t10k"][1].tolist()
    x, _y = next(iter(ft.DataLoader((Xtr, ytr), batchsize=2)))
    assert x.shape == (2, 1, 28, 28)


def test_load_mnist_missing_file_and_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte"):
        ft.load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match=r"\(4,\) labels for 3 images"):
        ft.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ft.load_mnist(tmp_path / "nowhere")
