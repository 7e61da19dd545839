"""Data sets that need no download: scikit-learn's digits, and MNIST-format IDX files on disk.

Images come batch first as ``float32`` tensors of shape ``(N, 1, H, W)`` scaled to [0, 1] (the
layout of ``Conv``), labels as ``int64`` class indices.

IDX format (used by MNIST, Fashion-MNIST, EMNIST; LeCun et al., http://yann.lecun.com/exdb/mnist/):
two zero bytes, a type byte, the number of dimensions ``d``, then ``d`` big-endian 32-bit sizes
and the values, big-endian, in row-major order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .data import DataLoader

__all__ = ["digits_loaders", "load_digits", "load_mnist", "read_idx"]

Split = tuple[torch.Tensor, torch.Tensor]

# IDX type byte -> (big-endian numpy dtype, torch dtype)
_IDX_TYPES = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}


def load_digits(split: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's handwritten digits (1,797 images of 8x8, 10 classes), split in two.

    Returns ``((Xtrain, ytrain), (Xvalid, yvalid))`` with ``X`` float32 of shape
    ``(N, 1, 8, 8)`` in [0, 1] and ``y`` int64 in 0..9. A fraction ``split`` of the images,
    chosen at random with ``seed``, goes to the validation part. The data ship with
    scikit-learn (``pip install scikit-learn``): nothing is downloaded.

    Example:
        >>> (Xtr, ytr), (Xva, yva) = load_digits(split=0.2, seed=0)
        >>> Xtr.shape, Xva.shape, ytr.dtype
        (torch.Size([1438, 1, 8, 8]), torch.Size([359, 1, 8, 8]), torch.int64)
        >>> float(Xtr.min()), float(Xtr.max())
        (0.0, 1.0)
    """
    if not 0 <= split < 1:
        raise ValueError(f"load_digits: split must be in [0, 1), got {split}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn, which ships the digits data: "
            "pip install scikit-learn (or fluxtrain[demo])"
        ) from e
    raw = sk_load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap).
    X = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(raw.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_valid = round(split * len(y))
    valid, train = perm[:n_valid], perm[n_valid:]
    return (X[train], y[train]), (X[valid], y[valid])


def digits_loaders(
    batchsize: int = 32, seed: int = 0, split: float = 0.2
) -> tuple[DataLoader, DataLoader]:
    """Ready loaders over [`load_digits`][fluxtrain.datasets.load_digits]: ``(train, valid)``.

    The training loader reshuffles every epoch (rng seeded with ``seed``); the validation
    loader keeps its order. Both yield ``(x, y)`` with ``x`` of shape ``(batchsize, 1, 8, 8)``.

    Example:
        >>> train, valid = digits_loaders(batchsize=64, seed=0)
        >>> len(train), len(valid)
        (23, 6)
        >>> x, y = next(iter(train))
        >>> tuple(x.shape), tuple(y.shape)
        ((64, 1, 8, 8), (64,))
    """
    (Xtr, ytr), (Xva, yva) = load_digits(split=split, seed=seed)
    train = DataLoader((Xtr, ytr), batchsize=batchsize, shuffle=True, rng=seed)
    valid = DataLoader((Xva, yva), batchsize=batchsize)
    return train, valid


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (MNIST's format), plain or gzip-compressed, into a tensor.

    The tensor has the file's shape and element type (``uint8`` for MNIST images and labels).
    A file that is not IDX, is truncated or has trailing bytes raises ``ValueError`` naming the
    file and what is wrong.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = f.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(f)
        tensor([7, 2, 1], dtype=torch.uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"read_idx: {path} is a damaged gzip file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"read_idx: {path} has {len(raw)} bytes, too few for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"read_idx: {path} is not an IDX file (header bytes {raw[:4].hex(' ')}; expected "
            "00 00, a type byte among 08 09 0b 0c 0d 0e, and the number of dimensions)"
        )
    np_dtype, torch_dtype = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"read_idx: {path} is truncated: its header declares {ndim} dimensions "
            f"({header} bytes) but the file has {len(raw)} bytes"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise ValueError(
            f"read_idx: {path} is {what}: shape {shape} needs {expected} bytes of data "
            f"but {actual} follow the header"
        )
    values = np.frombuffer(raw, dtype=np_dtype, offset=header).reshape(shape)
    return torch.from_numpy(values.astype(np_dtype.newbyteorder("="))).to(torch_dtype)


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(directory: Path, stem: str) -> Path:
    # Distributions differ: "train-images-idx3-ubyte" or "train-images.idx3-ubyte", maybe .gz.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"load_mnist: no {stem}[.gz] (or {dotted}[.gz]) in {directory}; it needs the four "
        f"standard files: {', '.join(_MNIST_FILES.values())}"
    )


def load_mnist(directory: str | os.PathLike) -> tuple[Split, Split]:
    """MNIST (or Fashion-MNIST, ...) from the four standard IDX files in ``directory``.

    Returns ``((Xtrain, ytrain), (Xtest, ytest))``: ``X`` float32 of shape ``(N, 1, H, W)``
    scaled to [0, 1], ``y`` int64. Files may be gzip-compressed (``.gz``). Nothing is
    downloaded; a missing or damaged file, or image and label counts that differ, raise an
    error naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> img = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(8))
        >>> lab = bytes([0, 0, 8, 1, 0, 0, 0, 2, 5, 9])
        >>> for kind in ("train", "t10k"):
        ...     _ = (d / f"{kind}-images-idx3-ubyte").write_bytes(img)
        ...     _ = (d / f"{kind}-labels-idx1-ubyte").write_bytes(lab)
        >>> (X, y), _ = load_mnist(d)
        >>> tuple(X.shape), y.tolist()
        ((2, 1, 2, 2), [5, 9])
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"load_mnist: {directory} is not a directory")
    paths = {k: _find(directory, stem) for k, stem in _MNIST_FILES.items()}
    out = []
    for part in ("train", "test"):
        images = read_idx(paths[f"{part}_images"])
        labels = read_idx(paths[f"{part}_labels"])
        if images.dim() != 3:
            raise ValueError(
                f"load_mnist: {paths[f'{part}_images']} holds shape {tuple(images.shape)}, "
                "expected images (N, H, W)"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"load_mnist: {paths[f'{part}_labels']} holds {tuple(labels.shape)} labels for "
                f"{images.shape[0]} images in {paths[f'{part}_images'].name}"
            )
        X = (images.to(torch.float32) / 255.0).unsqueeze(1)
        out.append((X, labels.to(torch.int64)))
    return out[0], out[1]
