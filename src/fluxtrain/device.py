"""Moving models and data between devices and precisions: Flux's ``gpu``, ``cpu``, ``f16``,
``bf16``, ``f32``, ``f64``.

Each works on a tensor, a Module or any tree of them (dicts, lists, dataclasses...), returning a
new tree built with [`fluxtrain.fmap`][fluxtrain.tree.fmap]; a tensor reached twice (tied weights) gives one new
tensor reached twice, so ties survive.  Like Flux's, the precision helpers convert only
floating-point tensors (integer labels and counters are left alone), and ``gpu`` returns its
argument unchanged when no GPU is available, so the same script runs everywhere; as Flux's, it
then warns once per process, so a missing GPU does not go unnoticed.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

import torch

from .tree import fmap

__all__ = ["bf16", "cpu", "f16", "f32", "f64", "gpu"]

T = TypeVar("T")


def _gpu_device() -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return None


def _map(f: Any, x: T) -> T:
    if isinstance(x, torch.Tensor):
        return f(x)
    return fmap(f, x)


# Flux warns once (``@warn ... maxlog=1``) that gpu() found no GPU; so do we, per process.
_warned_no_gpu = False


def gpu(x: T) -> T:
    """``x`` with every tensor on the GPU (CUDA, else Apple's MPS); ``x`` itself, unchanged,
    when there is none (Flux's ``gpu``), with a warning the first time.

    Example:
        >>> import torch, warnings, fluxtrain as ft
        >>> t = torch.ones(2)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # "no GPU is available" on a CPU-only machine
        ...     moved = ft.gpu(t)
        >>> moved is t or moved.device.type in ("cuda", "mps")
        True
    """
    global _warned_no_gpu
    dev = _gpu_device()
    if dev is None:
        if not _warned_no_gpu:
            _warned_no_gpu = True
            warnings.warn(
                "ft.gpu: no GPU is available (torch.cuda.is_available() and "
                "torch.backends.mps.is_available() are False), so the model and data stay on "
                "the CPU. Nothing to do if that is what you want; otherwise install a CUDA "
                "build of torch. This warning is shown once.",
                UserWarning,
                stacklevel=2,
            )
        return x
    return _map(lambda t: t.to(dev), x)


def cpu(x: T) -> T:
    """``x`` with every tensor in CPU memory (Flux's ``cpu``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.cpu({"w": torch.ones(2)})["w"].device
        device(type='cpu')
    """
    return _map(lambda t: t.cpu(), x)


def _precision(dtype: torch.dtype):
    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return convert


def f16(x: T) -> T:
    """``x`` with floating-point tensors converted to ``torch.float16`` (Flux's ``f16``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.f16(torch.ones(2)).dtype, ft.f16(torch.arange(2)).dtype
        (torch.float16, torch.int64)
    """
    return _map(_precision(torch.float16), x)


def bf16(x: T) -> T:
    """``x`` with floating-point tensors converted to ``torch.bfloat16``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.bf16(torch.ones(2)).dtype
        torch.bfloat16
    """
    return _map(_precision(torch.bfloat16), x)


def f32(x: T) -> T:
    """``x`` with floating-point tensors converted to ``torch.float32`` (Flux's ``f32``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.f32(torch.ones(2, dtype=torch.float64)).dtype
        torch.float32
    """
    return _map(_precision(torch.float32), x)


def f64(x: T) -> T:
    """``x`` with floating-point tensors converted to ``torch.float64`` (Flux's ``f64``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = ft.f64(ft.Dense(2, 3))
        >>> m.weight.dtype, m(torch.ones(1, 2, dtype=torch.float64)).dtype
        (torch.float64, torch.float64)
    """
    return _map(_precision(torch.float64), x)
