"""Sharded checkpoints: every rank writes its own shards, in parallel, in safetensors files.

A model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) has ``DTensor`` parameters,
and its optimiser state (``ft.setup``) is sharded like them: each rank holds 1/world of both.
[`save_sharded`][fluxtrain.sharded_checkpoint.save_sharded] writes such a checkpoint without gathering anything onto one rank, and
[`load_sharded`][fluxtrain.sharded_checkpoint.load_sharded] reads it back on any number of ranks (resharding as needed).  ``ft.save``
and ``ft.load`` call them by themselves for a sharded model or a sharded checkpoint.

A sharded checkpoint is a directory::

    ckpt/
      fluxtrain.json                                 structure (rank 0): rules, counters, ...
      shard-00001-model-00001-of-00001.safetensors   rank 0's tensors
      shard-00002-model-00001-of-00001.safetensors   rank 1's tensors ...

The tensors go through ``torch.distributed.checkpoint`` (DCP) with its safetensors storage
(``HuggingFaceStorageWriter(save_distributed=True)`` / ``HuggingFaceStorageReader``): each
file's header says where its shard of each tensor lies in the whole tensor, so DCP's own
metadata, which its default ``FileSystemWriter`` pickles, is never written.  Tensors are keyed
by the same tree paths as [`save`][fluxtrain.checkpoint.save]'s (``model/layers.enc.weight``,
``opt/layers.enc.weight.0``); everything else is the same JSON as there.  Each rank's RNG states
and extras (a sharded ``DataLoader``'s position is per rank) are its own: JSON in the tensor
``rank<r>.json`` and tensors under ``rank<r>/``.  Nothing is ever unpickled when loading: the JSON is parsed
with ``json``, the tensors are read with ``safetensors``, and each rank reads only the slices of
the files that it needs (DCP without collectives, so no plan objects are exchanged either).

``fluxtrain.json`` records each shard file's size and CRC-32 (each rank checksums the file
it wrote); [`load_sharded`][fluxtrain.sharded_checkpoint.load_sharded] refuses a checkpoint whose files are missing, extra, truncated
or damaged before it reads a tensor.

Writes are atomic: the ranks write into a temporary directory next to the target, and rank 0
renames it over the target once every rank has finished; a previous checkpoint at the target is
replaced only then.  The directory must be on a file system every rank can reach (for a single
machine, any local directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as C
from .distributed import barrier, is_distributed, rank, world_size
from .optimisers.engine import atoms, fill
from .optimisers.rules import Rule

__all__ = ["is_sharded", "load_sharded", "save_sharded"]

_FORMAT = "fluxtrain-sharded-checkpoint"
_VERSION = 1
_STRUCTURE = "fluxtrain.json"
_MAX_STRUCTURE = 256 * 1024 * 1024
# What safetensors (through DCP's storage) holds: the dtypes of ft.save's files.
_DTYPES = set(C._DTYPE_CODES)


def _is_dtensor(t: Any) -> bool:
    if isinstance(t, torch.nn.Parameter):
        t = t.data
    return isinstance(t, torch.Tensor) and hasattr(t, "device_mesh") and hasattr(t, "to_local")


def is_sharded(model: Any = None, opt_state: Any = None) -> bool:
    """True when ``model`` or ``opt_state`` holds a sharded tensor (FSDP2's ``DTensor``): such a
    model is checkpointed with [`save_sharded`][fluxtrain.sharded_checkpoint.save_sharded] (``ft.save`` does it by itself).

    Example:
        >>> import torch
        >>> is_sharded(torch.nn.Linear(2, 2))
        False
    """
    if model is not None and any(_is_dtensor(t) for _, t in C._model_tensors(model)):
        return True
    if opt_state is not None:
        for _, leaf in C._state_leaves(opt_state):
            if any(_is_dtensor(a) for a in atoms(leaf.state)):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# save


def save_sharded(
    path: str | os.PathLike,
    *,
    model: Any = None,
    opt_state: Any = None,
    **extra: Any,
) -> Path:
    """Write a sharded checkpoint of ``model``, ``opt_state`` and ``extra`` to the directory
    ``path``: every rank writes its own shards, in parallel.  Every rank must call it.

    What is stored is what [`save`][fluxtrain.checkpoint.save] stores (parameters and buffers by tree path,
    each optimiser Leaf's rule, frozen flag and state, the RNG states, the extras), except that
    a sharded tensor is written as its ranks' shards and every rank's RNG states are kept.
    Plain (unsharded) tensors are taken from rank 0; every rank's extras and RNG states are
    kept, each rank's own.  The checkpoint replaces
    ``path`` atomically once all ranks are done; an existing ``path`` that is not a sharded
    checkpoint is refused, never overwritten.

    Example:
        >>> import torch, tempfile, os, fluxtrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> st = ft.setup(ft.Adam(0.01), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
        >>> _ = ft.save_sharded(path, model=model, opt_state=st, epoch=3)
        >>> sorted(os.listdir(path))
        ['fluxtrain.json', 'shard-00001-model-00001-of-00001.safetensors']
        >>> ft.load_sharded(path, model=model, opt_state=st)
        {'epoch': 3}
    """
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint import save as dcp_save

    path = Path(path)
    me, world = rank(), world_size()
    if "rng" in extra:
        raise C.CheckpointError("the extra name 'rng' is reserved by fluxtrain")
    if path.exists() and not (path.is_dir() and (path / _STRUCTURE).is_file()):
        raise C.CheckpointError(
            f"{path} exists and is not a sharded fluxtrain checkpoint; save_sharded replaces "
            f"only its own checkpoints (remove it or choose another path)"
        )
    w = C._Writer()
    structure = _structure(model, opt_state, w)
    structure["world_size"] = world
    # Each rank's own RNG states and extras (a sharded DataLoader's state differs by rank).
    own = C._Writer()
    per_rank = {
        "rng": C._encode(C._rng_state(), f"rank{me}/rng", own),
        "extra": {k: C._encode(v, f"rank{me}/extra/{k}", own) for k, v in extra.items()},
    }
    tensors: dict[str, torch.Tensor] = {}
    for name, t in w.tensors.items():
        _check_dtype(name, t)
        if _is_dtensor(t) or me == 0:  # a plain tensor is the same on every rank: rank 0's
            tensors[name] = t.detach()
    for name, t in own.tensors.items():
        _check_dtype(name, t)
        tensors[name] = t.detach()
    text = json.dumps(per_rank, allow_nan=True).encode()
    tensors[f"rank{me}.json"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)

    tmp = path.with_name(f".{path.name}.partial")
    if me == 0:
        if tmp.exists():  # left by a save that crashed: never a finished checkpoint
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    try:
        writer = HuggingFaceStorageWriter(str(tmp), save_distributed=True)
        with _quiet():
            dcp_save(tensors, storage_writer=writer, no_dist=not is_distributed())
        checks = _file_checks(tmp, me, world)  # each rank checksums its own file, in parallel
        if me == 0:
            _remove_pickles(tmp)
            present = sorted(p.name for p in tmp.iterdir() if p.name.endswith(".safetensors"))
            if sorted(checks) != present:
                raise C.CheckpointError(
                    f"{path}: the ranks wrote {present}, expected {sorted(checks)}"
                )
            structure["files"] = checks
            _write_json(tmp / _STRUCTURE, structure)
            _replace_dir(tmp, path)
    except BaseException:
        if me == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()  # nobody goes on (or reads it) before the checkpoint is in place
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that it works in a single process, which is what we ask of it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _structure(model: Any, opt_state: Any, w: C._Writer) -> dict:
    """The JSON of the model and optimiser state, their tensors collected in ``w`` (as in
    ``ft.save``)."""
    structure: dict[str, Any] = {"format": _FORMAT, "version": _VERSION}
    if model is not None:
        structure["model"] = {p: w.add(f"model/{p}", t) for p, t in C._model_tensors(model)}
    if opt_state is not None:
        structure["opt_state"] = C._opt_state_entries(opt_state, w)
    return structure


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _DTYPES:
        raise C.CheckpointError(
            f"cannot store the tensor at {name} of dtype {t.dtype} in a sharded checkpoint "
            f"(safetensors holds {sorted(str(d).removeprefix('torch.') for d in _DTYPES)})"
        )


def _shard_file(r: int) -> str:
    """The file rank ``r`` writes: DCP's safetensors writer numbers the ranks' plans from 1
    (``torch.distributed.checkpoint._hf_utils._gen_file_name``, one file per rank)."""
    return f"shard-{r + 1:05d}-model-00001-of-00001.safetensors"


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_checks(directory: Path, me: int, world: int) -> dict[str, list[int]]:
    """``{file: [size, crc32]}`` of every rank's file, each rank reading only its own (a rank
    with nothing to write has no file)."""
    mine = directory / _shard_file(me)
    own = [mine.stat().st_size, _crc32(mine)] if mine.exists() else [-1, -1]
    if world == 1:
        return {mine.name: own} if own[0] >= 0 else {}
    gathered = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor(own, dtype=torch.int64))
    return {
        _shard_file(r): [int(t[0]), int(t[1])] for r, t in enumerate(gathered) if int(t[0]) >= 0
    }


def _remove_pickles(directory: Path) -> None:
    """DCP's writer leaves nothing but safetensors files; anything else (a future version's
    pickled ``.metadata``) is removed, so that no file of the checkpoint is a pickle."""
    for p in directory.iterdir():
        if not p.name.endswith(".safetensors"):
            p.unlink()


def _write_json(file: Path, structure: dict) -> None:
    with open(file, "w") as f:
        json.dump(structure, f, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory ``tmp`` at ``path``; an old checkpoint there is moved aside
    first and deleted only once the new one is in place."""
    for p in tmp.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    C._fsync_dir(str(path.parent))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# load


class _Recording(Mapping):
    """Tensors by name, as placeholders on the meta device, remembering which were asked for
    (in order), so that a decoded state can be matched with its names afterwards."""

    def __init__(self, sizes: Mapping[str, tuple[torch.Size, torch.dtype]]) -> None:
        self.sizes = sizes
        self.asked: list[str] = []

    def __getitem__(self, name: str) -> torch.Tensor:
        size, dtype = self.sizes[name]
        self.asked.append(name)
        return torch.empty(size, dtype=dtype, device="meta")

    def __contains__(self, name: object) -> bool:
        return name in self.sizes

    def __iter__(self) -> Iterator[str]:
        return iter(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)


def _read_structure(path: Path, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's structure JSON, after checking its files' sizes (and, with ``verify``,
    their CRC-32 checksums)."""
    if not path.exists():
        raise C.CheckpointNotFoundError(f"no checkpoint at {path}")
    file = path / _STRUCTURE
    if not path.is_dir() or not file.is_file():
        raise C.CheckpointError(
            f"{path} is not a sharded fluxtrain checkpoint (a directory with {_STRUCTURE})"
        )
    size = file.stat().st_size
    if size > _MAX_STRUCTURE:
        raise C.CheckpointError(f"{file} is implausibly large ({size} bytes)")
    structure = C._json(file.read_bytes(), str(file), "the structure")
    if (
        not isinstance(structure, dict)
        or structure.get("format") != _FORMAT
        or structure.get("version") != _VERSION
    ):
        raise C.CheckpointError(f"{file}: not a sharded fluxtrain checkpoint of version {_VERSION}")
    files = structure.get("files")
    present = sorted(p.name for p in path.iterdir() if p.name.endswith(".safetensors"))
    if not isinstance(files, dict) or sorted(files) != present:
        raise C.CheckpointError(
            f"{path}: the shard files {present} are not the ones the checkpoint was written "
            f"with ({sorted(files) if isinstance(files, dict) else files}); was a file removed "
            f"or added?"
        )
    for name, check in files.items():
        if not (isinstance(check, list) and len(check) == 2):
            raise C.CheckpointError(f"{file}: malformed entry for {name}")
        size = (path / name).stat().st_size
        if size != check[0]:
            raise C.CheckpointError(
                f"{path / name} is damaged or truncated: {size} bytes, written with {check[0]}"
            )
        if verify and _crc32(path / name) != check[1]:
            raise C.CheckpointError(
                f"{path / name} is damaged: its bytes do not match the checksum written with it"
            )
    return structure


def load_sharded(
    path: str | os.PathLike,
    *,
    model: Any = None,
    opt_state: Any = None,
    strict: bool = True,
    restore_rng: bool = True,
    **targets: Any,
) -> C.LoadResult:
    """Load a checkpoint written by [`save_sharded`][fluxtrain.sharded_checkpoint.save_sharded] into ``model`` and ``opt_state`` in
    place, on any number of ranks: each rank reads the parts of the shards it holds (a
    checkpoint written by 2 ranks loads on 1 rank, and the other way round).

    Arguments and result are those of [`load`][fluxtrain.checkpoint.load]: the extras are returned, objects
    given as ``name=obj`` get ``load_state_dict``, ``strict=False`` loads what fits.  Each rank
    gets its own extras and RNG states back (rank 0's where the checkpoint has none for this rank).  Every
    path, shape, dtype, rule and state layout is checked, and everything is read into new
    tensors first, so a failed load leaves the model, the state and the RNGs as they were.
    Nothing is unpickled.

    Example:
        >>> import torch, tempfile, os, fluxtrain as ft
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
        >>> _ = ft.save_sharded(path, model={"w": torch.tensor([1.0, 2.0])})
        >>> m = {"w": torch.zeros(2)}
        >>> _ = ft.load_sharded(path, model=m); m["w"]
        tensor([1., 2.])
    """
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    path = Path(path)
    C._check_targets(targets)
    structure = _read_structure(path)
    reader = HuggingFaceStorageReader(str(path))
    try:
        metadata = reader.read_metadata()
    except Exception as e:
        raise C.CheckpointError(f"{path}: cannot read the shard files ({e})") from e
    sizes = {
        k: (torch.Size(m.size), m.properties.dtype) for k, m in metadata.state_dict_metadata.items()
    }
    where = str(path)
    skipped: list[str] = []
    dests: dict[str, torch.Tensor] = {}  # what DCP reads into: new tensors, ours until the end
    finish: list[Callable[[], None]] = []

    def problem(msg: str) -> None:
        if strict:
            raise C.CheckpointError(f"{where}: {msg}")
        skipped.append(msg)

    def meta(name: Any, what: str) -> tuple[torch.Size, torch.dtype]:
        if not isinstance(name, str) or name not in sizes:
            raise C.CheckpointError(f"{where}: {what} refers to a missing tensor {name!r}")
        return sizes[name]

    # This rank's RNG states and extras (rank 0's if the checkpoint has none for this rank).
    prefix = f"rank{rank()}" if f"rank{rank()}.json" in sizes else "rank0"
    if f"{prefix}.json" not in sizes:
        raise C.CheckpointError(f"{where}: the checkpoint has no rank0.json entry")
    box = {f"{prefix}.json": torch.empty(sizes[f"{prefix}.json"][0], dtype=torch.uint8)}
    _read(box, path)
    per_rank = C._json(box[f"{prefix}.json"].numpy().tobytes(), where, f"{prefix}.json")
    if not isinstance(per_rank, dict) or not isinstance(per_rank.get("extra"), dict):
        raise C.CheckpointError(f"{where}: malformed {prefix}.json")
    try:
        if model is not None:
            _plan_model(model, structure, dests, finish, problem, meta)
        if opt_state is not None:
            _plan_opt_state(opt_state, model, structure, sizes, dests, finish, problem, where)
        extras_raw = per_rank["extra"]
        wanted = list(_tensor_names(extras_raw))
        if restore_rng:
            wanted += list(_tensor_names(per_rank.get("rng")))
        for n in wanted:
            size, dtype = meta(n, f"{prefix}.json")
            dests.setdefault(n, torch.empty(size, dtype=dtype))
        stateful_names = []
        for name, obj in targets.items():
            if name not in extras_raw:
                problem(f"the checkpoint has no extra {name!r} to load into {type(obj).__name__}")
                continue
            stateful_names.append((name, obj))
    except C.CheckpointError:
        raise
    except C.DAMAGE_ERRORS as e:
        raise C.CheckpointError(
            f"{where}: damaged or unsupported content ({type(e).__name__}: {e})"
        ) from e

    _read(dests, path)

    # Extras and RNG states from the tensors just read (still nothing changed).
    loaded = C._Reader(dests, where)
    extras = {k: C._decode(v, f"extra.{k}", loaded) for k, v in extras_raw.items()}
    stateful = [(name, obj, extras[name]) for name, obj in stateful_names]
    rng = None
    if restore_rng:
        rng = C._decode(per_rank.get("rng"), "rng", loaded)
        C._check_rng_state(rng, loaded)

    C.finish_load(
        stateful, loaded, finish, rng, skipped, f"load_sharded({path.name}, strict=False)"
    )
    return C.LoadResult(extras, skipped=skipped)


def _read(dests: dict[str, torch.Tensor], path: Path) -> None:
    """Read the tensors named in ``dests`` into them: each rank reads its own slices of the
    files, with no collectives and nothing exchanged between ranks."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint import load as dcp_load

    if not dests:
        return
    try:
        with _quiet():
            dcp_load(dests, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=True)
    except Exception as e:
        raise C.CheckpointError(f"{path}: cannot read the tensors ({type(e).__name__}: {e})") from e


def _tensor_names(v: Any) -> Iterator[Any]:
    """The tensor names an encoded value (JSON from ``_encode``) refers to."""
    if isinstance(v, list):
        for x in v:
            yield from _tensor_names(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            if k in ("__tensor__", "__ndarray__"):
                yield x
            else:
                yield from _tensor_names(x)


def _empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A new tensor like ``t`` (a DTensor keeps its mesh and placements: only its shard)."""
    if isinstance(t, torch.nn.Parameter):
        t = t.data
    return torch.empty_like(t.detach(), dtype=dtype)


def _plan_model(model, structure, dests, finish, problem, meta) -> None:
    saved = structure.get("model")
    if not isinstance(saved, dict):
        problem("the checkpoint has no model")
        return
    present = dict(C._model_tensors(model))
    for p, t in present.items():
        if p not in saved:
            problem(f"the model has {p} but the checkpoint does not")
            continue
        name = saved[p]
        size, dtype = meta(name, f"model entry {p}")
        if tuple(size) != tuple(t.shape):
            problem(f"shape mismatch at {p}: checkpoint {list(size)}, model {list(t.shape)}")
            continue
        if dtype != t.dtype:
            problem(f"dtype mismatch at {p}: checkpoint {dtype}, model {t.dtype}")
            continue
        if name not in dests:
            dests[name] = _empty_like(t)
        src = dests[name]
        finish.append(lambda t=t, src=src: t.copy_(src))
    for p in saved:
        if p not in present:
            problem(f"the checkpoint has {p} but the model does not")


def _plan_opt_state(opt_state, model, structure, sizes, dests, finish, problem, where) -> None:
    saved = structure.get("opt_state")
    if not isinstance(saved, dict):
        problem("the checkpoint has no optimiser state")
        return
    present = list(C._state_leaves(opt_state))
    present_paths = {p for p, _ in present}
    params = dict(C._model_tensors(model)) if model is not None else {}
    done: set[int] = set()
    for p, leaf in present:
        if p not in saved:
            problem(f"the optimiser state has a Leaf at {p} but the checkpoint does not")
            continue
        entry = saved[p]
        if isinstance(entry, dict) and "same_as" in entry:
            entry = saved.get(entry["same_as"])
        if not isinstance(entry, dict) or "rule" not in entry:
            raise C.CheckpointError(f"{where}: malformed optimiser entry at {p}")
        if id(leaf) in done:
            continue
        rec = _Recording(sizes)
        r = C._Reader(rec, where)
        rule = C._decode(entry.get("rule"), f"opt_state.{p}.rule", r)
        if not isinstance(rule, Rule):
            raise C.CheckpointError(f"{where}: the optimiser entry at {p} has no rule")
        rec.asked.clear()
        state = C._decode(entry.get("state"), f"opt_state.{p}.state", r)
        names = list(rec.asked)
        x = params.get(p)
        like, wrong = C._like_mismatch(p, leaf, entry, x)
        if wrong is not None:
            problem(wrong)
            continue
        if like is not None:
            expected = C._expected_signature(rule, tuple(like[0]), like[1], p, r)
            if expected is not None and expected != C._signature(state):
                problem(
                    f"the optimiser state at {p} does not fit {type(rule).__name__} for this "
                    f"parameter: expected {C._describe(expected)}, "
                    f"found {C._describe(C._signature(state))}"
                )
                continue
        done.add(id(leaf))
        # Where each saved tensor is read into: like the tensor the state has there now (a
        # DTensor shard), else like the parameter, else a whole plain tensor.
        now = atoms(leaf.state) if C._signature(leaf.state) == C._signature(state) else None
        parts = atoms(state)
        k = 0
        for i, a in enumerate(parts):
            if not isinstance(a, torch.Tensor):
                continue
            name = names[k]
            k += 1
            if name not in dests:
                if now is not None and isinstance(now[i], torch.Tensor):
                    dests[name] = _empty_like(now[i], a.dtype)
                elif x is not None and tuple(x.shape) == tuple(a.shape):
                    dests[name] = _empty_like(x, a.dtype)
                else:
                    dests[name] = torch.empty(a.shape, dtype=a.dtype)
            parts[i] = dests[name]
        new_state = fill(state, parts)
        in_place = now is not None
        frozen = bool(entry.get("frozen", False))

        def apply(leaf=leaf, rule=rule, frozen=frozen, new=new_state, in_place=in_place) -> None:
            leaf.rule = rule
            leaf.frozen = frozen
            leaf.state = C._assign(leaf.state, new) if in_place else new

        finish.append(apply)
    for p in saved:
        if p not in present_paths:
            problem(f"the checkpoint has optimiser state at {p} but the given state does not")
