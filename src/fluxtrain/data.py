"""``DataLoader``: mini-batches of in-memory arrays or of any dataset (Flux's/MLUtils' DataLoader).

Observations run along the FIRST dimension (Flux uses the last):
``DataLoader((X, Y), batchsize=32)`` with ``X.shape == (60000, 28, 28)`` yields ``x`` of shape
``(32, 28, 28)``. A batch of in-memory data is one indexing operation per tensor: a slice (a view,
no copy) in order, ``index_select`` with the batch's indices when shuffled or sharded.

What is checked, and when: at construction, the options (``batchsize``, ``collate``, ``rng``
even when ``shuffle=False``, an int seed in torch's range), equal observation counts across the
data's items, and a loader that would yield no batches warns (naming the data). While loading a
dataset of samples, an error from ``__getitem__``, ``__getitems__`` or ``collate`` gets a note
naming the dataset indices and the batch; samples that cannot be collated (different shapes, a
field with different types, tuples of different lengths, dicts with different keys) are an error
naming the field and the dataset indices of the two samples that disagree.

Source of the semantics: FluxML/MLUtils.jl ``src/eachobs.jl`` (``DataLoader``); the sharding
follows ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["DataLoader"]

# ---- the structure of in-memory data ----------------------------------------------------------


def _as_leaf(x: Any) -> Any:
    """A tensor for arrays (sharing memory when possible); other sequences stay as they are."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray) and x.dtype != object:
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    return x


def _is_array(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or (isinstance(x, np.ndarray) and x.dtype != object)


def _is_tree(x: Any) -> bool:
    """Data made of arrays: an array, or a tuple/namedtuple/dict whose leaves are arrays."""
    if _is_array(x):
        return True
    if isinstance(x, tuple | Mapping) and len(x) > 0:
        # As in Flux, a tuple holds data sources (X, Y), not samples: samples go in a list.
        items = x.values() if isinstance(x, Mapping) else x
        return all(_is_tree(v) or _is_sequence(v) for v in items)
    return False


def _is_sequence(x: Any) -> bool:
    return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, str | bytes)


def _flatten(x: Any, path: str, leaves: list[tuple[str, Any]]) -> Callable[[Iterator[Any]], Any]:
    """Collect the leaves of ``x`` (with their paths) and return a function rebuilding ``x``'s
    structure from an iterator over new leaves."""
    if _is_array(x) or not isinstance(x, tuple | Mapping):
        leaves.append((path, _as_leaf(x)))
        return next
    if isinstance(x, Mapping):
        keys = list(x)
        parts = [_flatten(x[k], f"{path}[{k!r}]", leaves) for k in keys]
        return lambda it: {k: p(it) for k, p in zip(keys, parts)}
    if hasattr(type(x), "_fields"):  # namedtuple
        cls = type(x)
        parts = [_flatten(v, f"{path}.{f}", leaves) for f, v in zip(cls._fields, x)]
        return lambda it: cls(*(p(it) for p in parts))
    parts = [_flatten(v, f"{path}[{i}]", leaves) for i, v in enumerate(x)]
    return lambda it: tuple(p(it) for p in parts)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor | np.ndarray):
        kind = "Tensor" if isinstance(x, torch.Tensor) else "ndarray"
        dtype = str(x.dtype).removeprefix("torch.")
        return f"{kind}{list(x.shape)} {dtype}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in x.items()) + "}"
    if isinstance(x, tuple):
        inner = ", ".join(_describe(v) for v in x)
        if hasattr(type(x), "_fields"):
            return f"{type(x).__name__}({inner})"
        return f"({inner}{',' if len(x) == 1 else ''})"
    try:
        return f"{type(x).__name__} of {len(x)}"
    except TypeError:
        return type(x).__name__


# ---- collation of samples ---------------------------------------------------------------------


def _kind(x: Any) -> str:
    """What a sample field is, for collation: samples of one field must agree on it."""
    if _is_array(x):
        return "array"
    if isinstance(x, bool | int | float | np.number | np.bool_):
        return "number"
    if isinstance(x, Mapping):
        return "dict"
    if isinstance(x, tuple):
        return type(x).__name__ if hasattr(type(x), "_fields") else "tuple"
    return type(x).__name__


def _collate(samples: list[Any], indices: list[int], where: str) -> Any:
    """Stack a list of samples into a batch: tensors/arrays stacked along a new first dimension,
    numbers into a tensor, tuples/namedtuples/dicts field by field; other values (strings...)
    stay a list when every sample has the same type. ``indices`` are the samples' dataset
    indices, named in errors; ``where`` names the field (``batch 3[0]['image']``)."""
    first = samples[0]
    kind = _kind(first)
    for s, i in zip(samples, indices):
        if _kind(s) != kind:
            raise TypeError(
                f"DataLoader: cannot collate {where}: the sample at dataset index {indices[0]} "
                f"has a {type(first).__name__} there but the sample at dataset index {i} has a "
                f"{type(s).__name__}; every sample needs the same types (pass collate=False "
                "for lists of samples, or a collate function)"
            )
    if kind == "array":
        tensors = [_as_leaf(s) for s in samples]
        shape = tuple(tensors[0].shape)
        for t, i in zip(tensors, indices):
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"DataLoader: cannot stack {where}: the sample at dataset index "
                    f"{indices[0]} has shape {shape} but the sample at dataset index {i} has "
                    f"{tuple(t.shape)}; pass collate=False for lists of samples, or a collate "
                    "function"
                )
        return torch.stack(tensors)
    if kind == "number":
        if all(isinstance(s, bool | int | float) for s in samples):
            return torch.tensor(samples)
        return torch.from_numpy(np.asarray(samples))
    if kind == "dict":
        keys = list(first)
        for s, i in zip(samples, indices):
            if list(s) != keys and set(s) != set(keys):
                raise ValueError(
                    f"DataLoader: cannot collate {where}: the sample at dataset index "
                    f"{indices[0]} has keys {keys} but the sample at dataset index {i} has "
                    f"{list(s)}"
                )
        return {k: _collate([s[k] for s in samples], indices, f"{where}[{k!r}]") for k in keys}
    if isinstance(first, tuple):
        for s, i in zip(samples, indices):
            if len(s) != len(first):
                raise ValueError(
                    f"DataLoader: cannot collate {where}: the sample at dataset index "
                    f"{indices[0]} is a tuple of {len(first)} but the sample at dataset index "
                    f"{i} is a tuple of {len(s)}"
                )
        fields = [
            _collate([s[j] for s in samples], indices, f"{where}[{j}]") for j in range(len(first))
        ]
        return type(first)(*fields) if hasattr(type(first), "_fields") else tuple(fields)
    return list(samples)


# ---- random number generators -----------------------------------------------------------------


def _check_rng(rng: Any) -> None:
    """Refuse an rng that is not an int seed in torch's range, a torch or a numpy Generator."""
    if rng is None or isinstance(rng, torch.Generator | np.random.Generator):
        return
    if isinstance(rng, bool) or not isinstance(rng, int | np.integer):
        raise TypeError(
            "DataLoader: rng must be an int seed, a torch.Generator or a numpy.random.Generator, "
            f"got {type(rng).__name__} {rng!r}"
        )
    if not -(2**63) <= int(rng) < 2**64:
        raise ValueError(
            f"DataLoader: the rng seed {int(rng)} is outside the range torch's generator takes "
            "(-2**63 to 2**64 - 1); reduce it, e.g. rng=seed % 2**64, or pass "
            "rng=numpy.random.default_rng(seed), which takes any int"
        )


def _make_rng(rng: Any, sharded: bool) -> torch.Generator | np.random.Generator:
    _check_rng(rng)
    if rng is None:
        # Ranks must agree on the order: a fixed seed when sharded (as DistributedSampler).
        # Otherwise seeded from torch's global generator, so torch.manual_seed reproduces runs.
        seed = 0 if sharded else int(torch.randint(0, 2**62, (), dtype=torch.int64))
        return torch.Generator().manual_seed(seed)
    if isinstance(rng, int | np.integer):
        return torch.Generator().manual_seed(int(rng))
    return rng


def _rng_state(rng: torch.Generator | np.random.Generator) -> Any:
    if isinstance(rng, torch.Generator):
        return rng.get_state().clone()
    return rng.bit_generator.state


def _set_rng_state(rng: torch.Generator | np.random.Generator, state: Any) -> None:
    if isinstance(rng, torch.Generator):
        if not isinstance(state, torch.Tensor):
            raise ValueError(
                "DataLoader.load_state_dict: this loader's rng is a torch.Generator "
                "but the saved rng state is not a tensor"
            )
        rng.set_state(state)
    else:
        if not isinstance(state, Mapping):
            raise ValueError(
                "DataLoader.load_state_dict: this loader's rng is a numpy Generator "
                "but the saved rng state is not a numpy generator state"
            )
        rng.bit_generator.state = state


def _permutation(rng: torch.Generator | np.random.Generator, n: int) -> torch.Tensor:
    if isinstance(rng, torch.Generator):
        return torch.randperm(n, generator=rng, device=rng.device).cpu()
    return torch.from_numpy(rng.permutation(n).astype(np.int64))


# ---- the loader -------------------------------------------------------------------------------


# Shuffled in-memory batches are gathered in blocks of about this many bytes (several batches
# at once when batches are small): measured ~1.5x faster than one gather per batch at batch 32.
_GATHER_BYTES = 1 << 19


class DataLoader:
    """Iterate over mini-batches of ``data`` (Flux's ``DataLoader``), observations along dim 0.

    ``data`` is one of
      * a tensor or NumPy array: batches are tensors ``data[i:i+batchsize]``;
      * a tuple, namedtuple or dict of them (nested too), all with the same number of
        observations: batches have the same structure, e.g. ``(x, y)``;
      * any indexable dataset (``__len__`` and ``__getitem__``: a list of samples, a torch
        ``Dataset``): a batch is the samples ``data[i]`` put together by ``collate``.
    ``DataLoader(X, Y, ...)`` (old Flux, seed 001) means ``DataLoader((X, Y), ...)``.

    Args:
        batchsize: observations per batch.
        shuffle: draw a new random order at each iteration (each epoch), from ``rng``.
        partial: keep the last, shorter batch; ``False`` drops it.
        collate: for datasets of samples: ``None`` stacks tensors/arrays/numbers (field by field
            in tuples and dicts), ``False`` gives the list of samples, or a function of that list.
        rng: the loader's own random generator: an int seed, a ``torch.Generator`` or a
            ``numpy.random.Generator``. Default: seeded from torch's global generator at
            construction (so ``torch.manual_seed`` reproduces a run); seed 0 when sharded.
        prefetch: load up to this many batches ahead in a background thread (for slow datasets,
            e.g. reading files); 0 (default) loads in the caller's thread.
        shard: ``(rank, world_size)`` or ``"auto"`` (from [`fluxtrain.rank`][fluxtrain.distributed.rank] and
            [`fluxtrain.world_size`][fluxtrain.distributed.world_size]): this process takes every ``world_size``-th index of
            each epoch's order, starting at ``rank``. All ranks draw the same order (same seed),
            so their parts are disjoint. When the number of observations does not divide by
            ``world_size``, ``partial=True`` pads the order with its first indices (a few
            observations are seen twice per epoch) and ``partial=False`` drops the last ones;
            either way every rank has the same number of batches, so collective operations
            never wait for a rank that has finished.

    ``len(loader)`` is the number of batches per epoch (on this rank). ``state_dict()`` and
    ``load_state_dict()`` save and restore the rng and the position within the epoch, so a
    resumed run sees exactly the batches it would have seen.

    Example:
        >>> X, Y = torch.rand(100, 3), torch.arange(100)
        >>> loader = DataLoader((X, Y), batchsize=32)
        >>> len(loader)
        4
        >>> [tuple(x.shape) for x, y in loader]
        [(32, 3), (32, 3), (32, 3), (4, 3)]
        >>> len(DataLoader((X, Y), batchsize=32, partial=False))
        3
        >>> x, y = next(iter(DataLoader((X, Y), batchsize=5, shuffle=True, rng=0)))
        >>> torch.equal(x, X[y])
        True
    """

    def __init__(
        self,
        data: Any,
        *more_data: Any,
        batchsize: int = 1,
        shuffle: bool = False,
        partial: bool = True,
        collate: Callable[[list[Any]], Any] | bool | None = None,
        rng: int | torch.Generator | np.random.Generator | None = None,
        prefetch: int = 0,
        shard: tuple[int, int] | str | None = None,
    ) -> None:
        if more_data:
            for i, extra in enumerate(more_data, start=1):
                if isinstance(extra, int | float) and not _is_array(extra):
                    raise TypeError(
                        f"DataLoader: positional argument {i} is the number {extra!r}; options "
                        f"are keywords: DataLoader(data, batchsize={extra!r})"
                    )
            data = (data, *more_data)
        if isinstance(batchsize, bool) or not isinstance(batchsize, int | np.integer):
            raise TypeError(f"DataLoader: batchsize must be an int, got {batchsize!r}")
        if batchsize < 1:
            raise ValueError(f"DataLoader: batchsize must be at least 1, got {batchsize}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if not (collate is None or collate is False or callable(collate)):
            raise TypeError(
                f"DataLoader: collate must be None, False or a function, got {collate!r}"
            )
        self.data = data
        self.batchsize = int(batchsize)
        self.shuffle = bool(shuffle)
        self.partial = bool(partial)
        self.collate = collate
        self.prefetch = prefetch
        self.shard = _shard(shard)

        if isinstance(data, torch.utils.data.TensorDataset):
            data = tuple(data.tensors)
        self._leaves: list[Any] = []
        if _is_tree(data):
            paths: list[tuple[str, Any]] = []
            self._rebuild = _flatten(data, "data", paths)
            self._leaves = [leaf for _, leaf in paths]
            self._source = None
            self.nobs = _common_nobs(paths)
            self._single = len(paths) == 1 and _is_array(data)
            self._flat_tuple = (
                type(data) is tuple and len(paths) == len(data) and all(map(_is_array, data))
            )
        elif _is_sequence(data):
            self._source = data
            self.nobs = len(data)
        else:
            raise TypeError(
                f"DataLoader: cannot load batches from {type(data).__name__}: data must be a "
                "tensor, an array, a tuple/dict of them, or a dataset with __len__ and "
                "__getitem__ (wrap an iterator in list() first)"
            )
        _check_rng(rng)  # an invalid rng is an error even when it goes unused (shuffle=False)
        self._rng = _make_rng(rng, self.shard is not None) if self.shuffle else None
        self._epoch = 0  # index of the epoch running now, or of the next one
        self._position = 0  # batches handed out in the running epoch
        self._running = False
        self._epoch_rng_state: Any = None
        self._resume_at = 0
        if len(self) == 0:
            _warn_no_batches(self)

    # -- sizes --

    def _nobs_here(self) -> int:
        if self.shard is None:
            return self.nobs
        world = self.shard[1]
        return math.ceil(self.nobs / world) if self.partial else self.nobs // world

    def __len__(self) -> int:
        n = self._nobs_here()
        return math.ceil(n / self.batchsize) if self.partial else n // self.batchsize

    # -- one epoch's order --

    def _order(self) -> torch.Tensor | None:
        """This epoch's indices for this rank; None for 0..nobs-1 in order (slices)."""
        perm = _permutation(self._rng, self.nobs) if self._rng is not None else None
        if self.shard is None:
            return perm
        rank, world = self.shard
        if perm is None:
            perm = torch.arange(self.nobs)
        total = self._nobs_here() * world
        if total > self.nobs:
            perm = perm.repeat(math.ceil(total / max(self.nobs, 1)))
        return perm[:total][rank::world]

    def __iter__(self) -> Iterator[Any]:
        if self._running:
            # A new iteration while one is unfinished starts the next epoch.
            self._epoch += 1
        self._epoch_rng_state = _rng_state(self._rng) if self._rng is not None else None
        order = self._order()
        start, self._resume_at = self._resume_at, 0
        self._position = start
        self._running = True
        batches = self._batches(order, start)
        if self.prefetch:
            batches = _prefetched(batches, self.prefetch)
        return self._counted(batches)

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._position += 1
            yield batch
        self._running = False
        self._epoch += 1
        self._position = 0

    def _batches(self, order: torch.Tensor | None, start: int) -> Iterator[Any]:
        b, nb = self.batchsize, len(self)
        if self._source is not None:
            idx = torch.arange(self.nobs) if order is None else order
            for k, chunk in enumerate(idx.split(b)[start:nb], start=start):
                yield self._from_dataset(chunk.tolist(), k)
            return
        leaves = self._leaves
        if order is None:
            ranges = ((i * b, min((i + 1) * b, self.nobs)) for i in range(start, nb))
            if self._single:
                (x,) = leaves
                for lo, hi in ranges:
                    yield x[lo:hi]
            elif self._flat_tuple:
                for lo, hi in ranges:
                    yield tuple([x[lo:hi] for x in leaves])
            else:
                for lo, hi in ranges:
                    yield self._rebuild(iter([_take_range(x, lo, hi) for x in leaves]))
            return
        chunks = order.split(b)[start:nb]
        if (self._single or self._flat_tuple) and all(x.device == order.device for x in leaves):
            # Gather several batches with one index_select per tensor and hand out slices of
            # it: fewer calls, and each gather writes a block that stays in cache.
            row_bytes = sum(x[:1].numel() * x.element_size() for x in leaves) or 1
            per = max(1, _GATHER_BYTES // (b * row_bytes))
            picked = order[start * b : min(nb * b, len(order))]
            for idx in picked.split(per * b) if len(picked) else ():
                parts = [x.index_select(0, idx).split(b) for x in leaves]
                if self._single:
                    yield from parts[0]
                else:
                    yield from (tuple(batch) for batch in zip(*parts))
        else:
            for idx in chunks:
                yield self._rebuild(iter([_take(x, idx) for x in leaves]))

    def _from_dataset(self, indices: list[int], k: int) -> Any:
        data = self._source
        if hasattr(data, "__getitems__"):
            try:
                samples = data.__getitems__(indices)
            except Exception as e:
                e.add_note(
                    f"(while DataLoader loaded samples {_shorten(indices)} for batch {k} "
                    f"with {type(data).__name__}.__getitems__)"
                )
                raise
            if not hasattr(samples, "__len__") or len(samples) != len(indices):
                got = f"{len(samples)} samples" if hasattr(samples, "__len__") else "no list"
                raise ValueError(
                    f"DataLoader: {type(data).__name__}.__getitems__ returned {got} for the "
                    f"{len(indices)} dataset indices {_shorten(indices)} of batch {k}"
                )
        else:
            samples = []
            for i in indices:
                try:
                    samples.append(data[i])
                except Exception as e:
                    e.add_note(f"(while DataLoader loaded sample {i} for batch {k})")
                    raise
        if self.collate is False:
            return samples
        if self.collate is None:
            return _collate(list(samples), indices, f"batch {k}")
        try:
            return self.collate(samples)
        except Exception as e:
            name = getattr(self.collate, "__name__", type(self.collate).__name__)
            e.add_note(
                f"(while DataLoader collated the samples at dataset indices {_shorten(indices)} "
                f"into batch {k} with {name})"
            )
            raise

    # -- resuming --

    def state_dict(self) -> dict[str, Any]:
        """The loader's position: epoch, batches done in it, and the rng state that reproduces
        the epoch's order. Plain data and tensors, for checkpoints.

        Example:
            >>> loader = DataLoader(torch.arange(10), batchsize=3, shuffle=True, rng=1)
            >>> it = iter(loader); first = next(it)
            >>> sd = loader.state_dict()
            >>> rest = list(it)
            >>> again = DataLoader(torch.arange(10), batchsize=3, shuffle=True, rng=99)
            >>> again.load_state_dict(sd)
            >>> all(torch.equal(a, b) for a, b in zip(again, rest))
            True
        """
        epoch = self._epoch
        if self._running and self._position < len(self):
            # Mid-epoch: the rng as it was before this epoch's order was drawn, to redraw it.
            rng_state, position = self._epoch_rng_state, self._position
        else:
            if self._running:  # every batch handed out: resuming starts the next epoch
                epoch += 1
            rng_state = _rng_state(self._rng) if self._rng is not None else None
            position = 0 if self._running else self._resume_at
        return {
            "epoch": epoch,
            "position": position,
            "rng_state": rng_state,
            "nobs": self.nobs,
            "batchsize": self.batchsize,
            "shuffle": self.shuffle,
            "partial": self.partial,
            "shard": list(self.shard) if self.shard is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by [`state_dict`][fluxtrain.data.DataLoader.state_dict]: the next iteration continues that
        epoch where it stopped. The data and options must match; nothing changes on error."""
        for key in ("nobs", "batchsize", "shuffle", "partial"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"DataLoader.load_state_dict: saved {key}={state[key]!r} but this loader has "
                    f"{key}={getattr(self, key)!r}; the order could not be reproduced"
                )
        saved_shard = state.get("shard")
        # All ranks draw the same order and have as many batches, so one rank's position (a
        # checkpoint written by rank 0) is every rank's: only the number of ranks must agree.
        if saved_shard is not None and self.shard is not None:
            if saved_shard[1] != self.shard[1]:
                raise ValueError(
                    f"DataLoader.load_state_dict: saved with world_size={saved_shard[1]} "
                    f"(shard={tuple(saved_shard)}) but this loader has shard={self.shard}; each "
                    f"rank's part of the order would differ"
                )
        position = int(state.get("position", 0))
        if not 0 <= position <= len(self):
            raise ValueError(
                f"DataLoader.load_state_dict: position {position} is outside 0..{len(self)}"
            )
        if self._rng is not None and state.get("rng_state") is not None:
            _set_rng_state(self._rng, state["rng_state"])
        self._epoch = int(state.get("epoch", 0))
        self._resume_at = position
        self._position = 0
        self._running = False

    # -- display --

    def __repr__(self) -> str:
        opts = [f"batchsize={self.batchsize}"]
        if self.shuffle:
            opts.append("shuffle=True")
        if not self.partial:
            opts.append("partial=False")
        if self.collate is not None:
            name = getattr(self.collate, "__name__", repr(self.collate))
            opts.append(f"collate={name if self.collate is not False else False}")
        if self.prefetch:
            opts.append(f"prefetch={self.prefetch}")
        if self.shard is not None:
            opts.append(f"shard={self.shard}")
        return f"DataLoader({_describe(self.data)}, {', '.join(opts)})  # {len(self)} batches"


def _shorten(indices: list[int], most: int = 8) -> str:
    """``[3, 1, 4]``, or the first few and a count for long lists."""
    if len(indices) <= most:
        return str(indices)
    return f"[{', '.join(map(str, indices[:most]))}, ... ({len(indices)} in all)]"


def _warn_no_batches(loader: DataLoader) -> None:
    """Warn, at construction, that a loader will yield nothing (train_ would silently do nothing)."""
    if loader.nobs == 0:
        why = "the data has no observations"
    elif loader.shard is not None and loader._nobs_here() == 0:
        why = (
            f"its {loader.nobs} observations are fewer than the {loader.shard[1]} ranks "
            "with partial=False"
        )
    else:
        why = (
            f"its {loader._nobs_here()} observations are fewer than batchsize="
            f"{loader.batchsize} with partial=False"
        )
    warnings.warn(
        f"DataLoader over {_describe(loader.data)} yields no batches: {why}; iterating it (or "
        "train_ / fit_ over it) does nothing",
        UserWarning,
        stacklevel=3,
    )


def _take(x: Any, idx: torch.Tensor) -> Any:
    if isinstance(x, torch.Tensor):
        return x.index_select(0, idx.to(x.device))
    return [x[i] for i in idx.tolist()]


def _take_range(x: Any, lo: int, hi: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x[lo:hi]
    return [x[i] for i in range(lo, hi)]


def _common_nobs(paths: list[tuple[str, Any]]) -> int:
    sizes = []
    for path, leaf in paths:
        if isinstance(leaf, torch.Tensor) and leaf.dim() == 0:
            raise ValueError(f"DataLoader: {path} is a 0-d tensor; it has no observations to batch")
        try:
            sizes.append(leaf.shape[0] if isinstance(leaf, torch.Tensor) else len(leaf))
        except TypeError:
            raise TypeError(
                f"DataLoader: {path} is a {type(leaf).__name__}, which has no observations; "
                "each item must be a tensor, an array or a sequence"
            ) from None
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{p} has {n}" for (p, _), n in zip(paths, sizes))
        raise ValueError(
            "DataLoader: all data items need the same number of observations along "
            f"dimension 0 (batch first), but {listed} (a tuple holds data sources such as "
            "(X, Y); a collection of samples goes in a list)"
        )
    return sizes[0]


def _shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return None
    if shard == "auto":
        from .distributed import rank, world_size

        return (rank(), world_size()) if world_size() > 1 else None
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise TypeError(
            f"DataLoader: shard must be (rank, world_size) or 'auto', got {shard!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"DataLoader: shard=({rank}, {world}) needs 0 <= rank < world_size")
    return (rank, world)


def _prefetched(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``batches`` in a background thread, at most ``depth`` ahead of the consumer.
    Errors are raised in the consumer; leaving the loop early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(("error", e))

    thread = threading.Thread(target=work, name="fluxtrain-DataLoader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
