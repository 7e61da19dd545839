"""Checkpoints: ``ft.save`` / ``ft.load`` of a model, its optimiser state and anything else.

A checkpoint is ONE file in the `safetensors <https://huggingface.co/docs/safetensors>`_ format:
the tensors (parameters, buffers, optimiser momenta, RNG states, tensor extras) are its tensors,
and everything else (rules with their hyperparameters, frozen flags, counters such as
``beta^t``, schedule positions, JSON-able extras) is JSON in its header metadata.  Any safetensors
reader can open the file; nothing in it is ever unpickled, and classes are restored only from
fluxtrain's own registry (its rules and schedule dataclasses, plus classes registered with
[`register_checkpoint_class`][fluxtrain.checkpoint.register_checkpoint_class]), never imported by name.

Tensors are keyed by tree path (``layers.enc.weight``), not by position, so a model whose modules
were defined in another order loads correctly, and a missing or extra key, or a shape or dtype
mismatch, is an error naming the path.  A model wrapped in ``DistributedDataParallel`` (or
``torch.compile``) is saved and loaded through the inner model: keys carry no ``module.`` prefix.

Writes are atomic: the file is written under a temporary name in the same directory, flushed to
disk, renamed over the target and the directory synced, so a crash during ``save`` leaves the
previous checkpoint intact.  The temporary files that crashed saves on this machine left behind
(their process is gone) are removed by the next ``save`` into the same folder.

What ``load`` checks, before it changes anything:

- the path is a regular file (a directory, FIFO, device such as ``/dev/zero``, or a symlink to
  one is refused without reading), and every size in the file is checked against its length
  before the bytes are read, so ``load`` never reads past the file's end nor allocates room
  for bytes the file does not have;
- the header is byte for byte what ``save`` writes for its content, and its SHA-256 covers all
  of it: the structure JSON, the data checksum and each tensor's name, dtype, shape and byte
  offsets; the tensors must lie where ``save`` puts them (in name order, back to back); the
  tensor bytes must match their CRC-32.  So a file edited anywhere, even by swapping the offsets
  of two tensors of the same shape, is refused;
- the paths, shapes and dtypes against the model and optimiser state, the rules (each must be
  able to set up its parameter), the optimiser state's layout, and the RNG states (each tried
  on a scratch generator).

Only then are objects given as ``name=obj`` loaded (all or none), the tensors copied and the
RNG states set, so a failed load leaves the model, the state and the RNGs as they were.  Every
failure to read a checkpoint is a ``CheckpointError`` (a missing file is its subclass
``CheckpointNotFoundError``, also a ``FileNotFoundError``).  The checksums detect damage
and edits; they are not a signature, so load checkpoints only from sources you trust to give
you the right weights (nothing in a checkpoint can run code either way).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import socket
import stat
import struct
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import is_main_process
from .optimisers.rules import Rule
from .optimisers.state import Leaf, unwrap
from .tree import KeyPath, Node, children

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadResult",
    "load",
    "register_checkpoint_class",
    "save",
]

_FORMAT = "fluxtrain-checkpoint"
_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header

# safetensors dtype codes (https://github.com/huggingface/safetensors, format description)
_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _code in (
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
):
    if hasattr(torch, _name):
        _DTYPE_CODES[getattr(torch, _name)] = _code


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read, or does not fit the model; the message says
    which file and which tree path."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """There is no checkpoint at the path given to ``load``: a ``CheckpointError``
    that is also the ``FileNotFoundError`` Python code expects for a missing file.

    Example:
        >>> import fluxtrain as ft
        >>> try:
        ...     ft.load("no/such/file.safetensors")
        ... except ft.CheckpointError as e:
        ...     print(type(e).__name__, isinstance(e, FileNotFoundError))
        CheckpointNotFoundError True
    """


class LoadResult(dict):
    """The extras stored in a checkpoint (what [`load`][fluxtrain.checkpoint.load] returns), a plain ``dict`` plus
    ``.skipped``: the paths that ``strict=False`` did not load, each with the reason."""

    def __init__(self, *args: Any, skipped: list[str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.skipped: list[str] = list(skipped or [])


# ---------------------------------------------------------------------------------------------
# Class registry: the only classes a checkpoint can name

_REGISTERED: dict[str, type] = {}


def register_checkpoint_class(cls: type) -> type:
    """Allow checkpoints to store and restore instances of ``cls`` (a dataclass or a Rule).

    fluxtrain's own rules and schedules are registered already; register your own rule classes
    (usable as a decorator).  Instances are stored as class name plus dataclass fields and
    rebuilt with ``cls(**fields)``: loading never imports anything.

    Example:
        >>> import dataclasses, fluxtrain as ft
        >>> @ft.register_checkpoint_class
        ... @dataclasses.dataclass(frozen=True)
        ... class Halve(ft.Rule):
        ...     def apply(self, state, x, dx):
        ...         return state, dx / 2
        >>> Halve.__name__ in ft.checkpoint._registry()
        True
    """
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(
            f"register_checkpoint_class needs a dataclass (such as a Rule), got {cls!r}"
        )
    _REGISTERED[_class_name(cls)] = cls
    return cls


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _registry() -> dict[str, type]:
    """Every restorable class by qualified name, and by short name where that is unique."""
    found: dict[str, type] = {}
    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname == "fluxtrain" or modname.startswith("fluxtrain.")):
            continue
        for obj in list(vars(mod).values()):
            if (
                isinstance(obj, type)
                and obj.__module__ == modname
                and (dataclasses.is_dataclass(obj) or issubclass(obj, Rule))
            ):
                found[_class_name(obj)] = obj
    found.update(_REGISTERED)
    short: dict[str, list[type]] = {}
    for cls in set(found.values()):
        short.setdefault(cls.__qualname__, []).append(cls)
    out = dict(found)
    for name, classes in short.items():
        if len(classes) == 1:
            out.setdefault(name, classes[0])
    return out


# ---------------------------------------------------------------------------------------------
# Encoding values as JSON plus tensors


class _Writer:
    """Collects the tensors of a checkpoint under unique names while values are encoded."""

    def __init__(self) -> None:
        self.registry = _registry()  # looked up once per save
        self.tensors: dict[str, torch.Tensor] = {}
        self.index: dict[int, str] = {}  # id(tensor) -> name: a tensor stored twice is one entry

    def add(self, name: str, t: torch.Tensor) -> str:
        key = id(t)
        if key in self.index:
            return self.index[key]
        if t.dtype not in _DTYPE_CODES:
            raise CheckpointError(f"cannot store a tensor of dtype {t.dtype} (at {name})")
        if name in self.tensors:
            raise CheckpointError(
                f"two different entries are both called {name!r}: rename a child whose key "
                f"contains a '.' so that tree paths are unique"
            )
        self.tensors[name] = t
        self.index[key] = name
        return name


def _encode(v: Any, where: str, w: _Writer) -> Any:
    """``v`` as JSON, with tensors stored in ``w``; ``where`` names it in errors."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, torch.Tensor):
        return {"__tensor__": w.add(where, v)}
    if isinstance(v, np.ndarray):
        return {"__ndarray__": w.add(where, torch.from_numpy(np.ascontiguousarray(v)))}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).removeprefix("torch.")}
    if isinstance(v, type):
        if _class_name(v) not in w.registry:
            raise CheckpointError(
                f"cannot save the class {v.__qualname__} at {where}: "
                f"register it with ft.register_checkpoint_class"
            )
        return {"__class__": _class_name(v)}
    if isinstance(v, tuple) and not hasattr(type(v), "_fields"):
        return {"__tuple__": [_encode(x, f"{where}.{i}", w) for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [_encode(x, f"{where}.{i}", w) for i, x in enumerate(v)]
    if isinstance(v, Mapping):
        items = []
        for k, x in v.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise CheckpointError(
                    f"cannot save a dict key {k!r} at {where}: keys must be "
                    f"str, int, float, bool or None"
                )
            items.append([k, _encode(x, f"{where}.{k}", w)])
        return {"__dict__": items}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        cls = type(v)
        if _class_name(cls) not in w.registry:
            raise CheckpointError(
                f"cannot save {cls.__qualname__} at {where}: only fluxtrain's classes and "
                f"classes registered with ft.register_checkpoint_class can be stored"
            )
        fields = {
            f.name: _encode(getattr(v, f.name), f"{where}.{f.name}", w)
            for f in dataclasses.fields(v)
        }
        return {"__object__": _class_name(cls), "fields": fields}
    if hasattr(v, "state_dict") and callable(v.state_dict) and not isinstance(v, torch.nn.Module):
        return {"__state_dict__": _encode(v.state_dict(), where, w)}
    raise CheckpointError(
        f"cannot save {type(v).__name__} at {where}: a checkpoint holds tensors, numbers, "
        f"strings, None, lists/tuples/dicts of these, rules and objects with state_dict()"
    )


class _Reader:
    def __init__(self, tensors: Mapping[str, torch.Tensor], file: str) -> None:
        self.tensors = tensors
        self.file = file
        self.registry = _registry()

    def error(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: {msg}")


def _decode(v: Any, where: str, r: _Reader) -> Any:
    if v is None or isinstance(v, (bool, str, int, float)):
        return v
    if isinstance(v, list):
        return [_decode(x, f"{where}.{i}", r) for i, x in enumerate(v)]
    if not isinstance(v, dict) or len(v) not in (1, 2):
        raise r.error(f"malformed entry at {where}")
    if "__tensor__" in v or "__ndarray__" in v:
        name = v.get("__tensor__", v.get("__ndarray__"))
        if name not in r.tensors:
            raise r.error(f"entry at {where} refers to a missing tensor {name!r}")
        t = r.tensors[name]
        return t.numpy() if "__ndarray__" in v else t
    if "__dtype__" in v:
        dt = getattr(torch, str(v["__dtype__"]), None)
        if not isinstance(dt, torch.dtype):
            raise r.error(f"unknown dtype {v['__dtype__']!r} at {where}")
        return dt
    if "__class__" in v:
        return _lookup_class(v["__class__"], where, r)
    if "__tuple__" in v:
        return tuple(_decode(x, f"{where}.{i}", r) for i, x in enumerate(v["__tuple__"]))
    if "__dict__" in v:
        out = {}
        for item in v["__dict__"]:
            if not (isinstance(item, list) and len(item) == 2):
                raise r.error(f"malformed dict entry at {where}")
            k, x = item
            out[k] = _decode(x, f"{where}.{k}", r)
        return out
    if "__state_dict__" in v:
        return _decode(v["__state_dict__"], where, r)
    if "__object__" in v:
        cls = _lookup_class(v["__object__"], where, r)
        fields = v.get("fields")
        if not isinstance(fields, dict):
            raise r.error(f"malformed object at {where}")
        values = {k: _decode(x, f"{where}.{k}", r) for k, x in fields.items()}
        return _construct(cls, values, where, r)
    raise r.error(f"malformed entry at {where}: {sorted(v)}")


def _lookup_class(name: Any, where: str, r: _Reader) -> type:
    if not isinstance(name, str) or name not in r.registry:
        raise r.error(
            f"the class {name!r} at {where} is not one of fluxtrain's classes nor registered "
            f"with ft.register_checkpoint_class; nothing is imported from a checkpoint"
        )
    return r.registry[name]


def _has_generated_init(cls: type) -> bool:
    """True when ``cls.__init__`` is the one ``@dataclass`` wrote (taking the fields)."""
    code = getattr(cls.__init__, "__code__", None)
    return code is not None and code.co_filename == "<string>"


def _construct(cls: type, values: dict[str, Any], where: str, r: _Reader) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise r.error(f"{cls.__qualname__} at {where} has no field(s) {sorted(unknown)}")
    try:
        if _has_generated_init(cls):
            obj = cls(**{k: x for k, x in values.items() if fields[k].init})
            for k, x in values.items():
                if not fields[k].init:
                    object.__setattr__(obj, k, x)
            return obj
        # A hand-written __init__ (Scheduler, schedules) takes other arguments than its
        # fields: restore the fields as they were saved.
        missing = set(fields) - set(values)
        if missing:
            raise TypeError(f"missing field(s) {sorted(missing)}")
        obj = object.__new__(cls)
        for k, x in values.items():
            object.__setattr__(obj, k, x)
        return obj
    except (TypeError, ValueError) as e:
        raise r.error(f"cannot rebuild {cls.__qualname__} at {where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Walking the model and the optimiser state


def _model_tensors(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the model (parameters and persistent buffers) with its path string.

    Tied tensors appear once per path; the caller stores their data once.
    """

    def walk(node: Any, path: KeyPath) -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(node, torch.Tensor):
            yield str(path), node
            return
        ch = children(node)
        if ch is None:
            return
        skip = getattr(node, "_non_persistent_buffers_set", ())
        for k, v in ch.items():
            if k in skip:
                continue
            yield from walk(v, path + (k,))

    seen_paths: set[str] = set()
    for p, t in walk(unwrap(model), KeyPath()):
        if p in seen_paths:
            raise CheckpointError(
                f"two entries of the model have the same path {p!r}: rename a child whose key "
                f"contains a '.'"
            )
        seen_paths.add(p)
        yield p, t


def _state_leaves(state: Any) -> Iterator[tuple[str, Leaf]]:
    """Every Leaf of an optimiser-state tree with its path string (tied ones at each path)."""

    def walk(node: Any, path: KeyPath) -> Iterator[tuple[str, Leaf]]:
        if isinstance(node, Leaf):
            yield str(path), node
            return
        if isinstance(node, (Node, Mapping, list, tuple)):
            for k, v in children(node).items():
                yield from walk(v, path + (k,))

    return walk(state, KeyPath())


def _signature(x: Any) -> Any:
    """The structure of a Leaf state: tensors as (shape, dtype), numbers as their kind."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype)
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_signature(s) for s in x))
    if x is None:
        return None
    if isinstance(x, (bool, int, float)):
        return "number"
    return type(x).__name__


def _opt_state_entries(opt_state: Any, w: Any) -> dict[str, Any]:
    """The header entry of each Leaf by its path (a tied Leaf refers to its first path), its
    tensors handed to the writer ``w``; shared by the single-file and sharded formats."""
    leaves: dict[str, Any] = {}
    first_path: dict[int, str] = {}
    for p, leaf in _state_leaves(opt_state):
        if id(leaf) in first_path:
            leaves[p] = {"same_as": first_path[id(leaf)]}
            continue
        first_path[id(leaf)] = p
        like = leaf._like
        leaves[p] = {
            "rule": _encode(leaf.rule, f"opt_state.{p}.rule", w),
            "frozen": bool(leaf.frozen),
            "state": _encode(leaf.state, f"opt/{p}", w),
            "like": None if like is None else [list(like[0]), _dtype_name(like[1])],
        }
    return leaves


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _like_mismatch(p: str, leaf: Leaf, entry: dict, param: Any) -> tuple[Any, str | None]:
    """The (shape, dtype, device) the Leaf at ``p`` is for (from setup, else its parameter),
    and what is wrong if the saved state was made for another shape or dtype."""
    like = leaf._like
    if like is None and param is not None:
        like = (param.shape, param.dtype, param.device)
    saved_like = entry.get("like")
    if like is not None and saved_like is not None:
        shape, dtype = list(saved_like[0]), saved_like[1]
        if shape != list(like[0]) or dtype != _dtype_name(like[1]):
            return like, (
                f"the optimiser state at {p} is for a parameter of shape {shape} and dtype "
                f"{dtype}, but the parameter there has shape {list(like[0])} and dtype "
                f"{_dtype_name(like[1])}"
            )
    return like, None


def _expected_signature(rule: Rule, shape: tuple, dtype: torch.dtype, p: str, r: _Reader) -> Any:
    """The layout of ``rule``'s state for a parameter of ``shape`` and ``dtype``.

    Found on a meta tensor (nothing allocated); a rule that cannot work on meta tensors is
    tried on a real one.  A rule that cannot set up the parameter at all (a malformed rule,
    such as a chain holding something that is not a rule) is refused here, before anything
    is changed.
    """
    try:
        return _signature(rule.init(torch.empty(shape, dtype=dtype, device="meta")))
    except Exception:
        pass
    try:
        return _signature(rule.init(torch.zeros(shape, dtype=dtype)))
    except Exception as e:
        raise r.error(
            f"the rule at opt_state.{p}.rule cannot be set up for a parameter of shape "
            f"{list(shape)} and dtype {str(dtype).removeprefix('torch.')}: "
            f"{type(e).__name__}: {e}"
        ) from None


def _describe(sig: Any) -> str:
    if isinstance(sig, tuple) and sig and sig[0] == "tensor":
        return f"tensor{list(sig[1])} {str(sig[2]).removeprefix('torch.')}"
    if isinstance(sig, tuple) and sig and sig[0] in ("tuple", "list"):
        return "(" + ", ".join(_describe(s) for s in sig[1]) + ")"
    return str(sig)


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, copy=True)
    if isinstance(x, tuple):
        return tuple(_to_device(s, device) for s in x)
    if isinstance(x, list):
        return [_to_device(s, device) for s in x]
    return x


def _assign(old: Any, new: Any) -> Any:
    """``new`` written into ``old``'s tensors in place (views into fused buffers stay valid)."""
    if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
        old.copy_(new)
        return old
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(new)(_assign(o, n) for o, n in zip(old, new))
    return new


# ---------------------------------------------------------------------------------------------
# RNG states


def _rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _check_rng_state(st: Any, r: _Reader) -> None:
    """Refuse RNG states that the generators would not accept, trying each on a scratch
    generator so that the global ones are not touched."""
    if not isinstance(st, Mapping):
        raise r.error("malformed entry at rng: not a dict of generator states")
    unknown = set(st) - {"torch", "numpy", "python", "cuda"}
    if unknown:
        raise r.error(f"malformed entry at rng: unknown generator(s) {sorted(unknown)}")
    for key, value in st.items():
        try:
            if key == "torch":
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"expected a tensor, got {type(value).__name__}")
                torch.Generator().set_state(value)
            elif key == "numpy":
                np.random.RandomState().set_state(tuple(value))
            elif key == "python":
                version, internal, gauss = value
                random.Random().setstate((version, tuple(internal), gauss))
            else:
                if not isinstance(value, (list, tuple)) or not all(
                    isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
                    for t in value
                ):
                    raise TypeError("expected a list of uint8 tensors")
        except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, KeyError) as e:
            raise r.error(f"malformed RNG state at rng.{key}: {e}") from None


def _set_rng_state(st: Mapping[str, Any]) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "numpy" in st:
        np.random.set_state(tuple(st["numpy"]))
    if "python" in st:
        version, internal, gauss = st["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in st and torch.cuda.is_available():
        states = list(st["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------------------------------
# The file format: safetensors with our JSON in its metadata


def _header_digest(metadata: Mapping[str, Any], index: Mapping[str, Any]) -> str:
    """SHA-256 of everything in the header but the digest itself: our metadata (structure JSON,
    data checksum, format) and every tensor entry whole (dtype, shape AND data_offsets), so that
    nothing the loader uses to place bytes can change unnoticed."""
    meta = {k: v for k, v in metadata.items() if k != "fluxtrain_header_sha256"}
    payload = json.dumps([meta, index], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _legacy_header_digest(structure: str, index: Mapping[str, Any]) -> str:
    """The digest of files written before offsets were covered (``fluxtrain_sha256``): the
    structure plus each tensor's name, dtype and shape.  Such files are accepted only with the
    canonical layout, which fixes the offsets from those (see ``_tensor_layout``)."""
    entries = sorted((k, v["dtype"], list(v["shape"])) for k, v in index.items())
    payload = json.dumps([structure, entries], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _write_all(f: Any, chunks: Iterator[bytes | memoryview]) -> None:
    """Write the chunks to the open file ``f`` (a seam the crash test interrupts)."""
    for c in chunks:
        f.write(c)


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: Path, pid: int) -> str:
    return f".{path.name}.{socket.gethostname()}.{pid}."


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files that saves killed on this machine left in ``directory``.

    Ours are named ``.<checkpoint name>.<host>.<pid>.<8 random characters>.tmp`` (see
    ``_temp_prefix`` and ``tempfile.mkstemp``); one is removed when its process is gone, so
    a save still running in another process keeps its file.  Anything else is left alone.
    """
    pattern = re.compile(
        r"\..+\." + re.escape(socket.gethostname()) + r"\.(\d+)\.[a-z0-9_]{8}\.tmp\Z"
    )
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)  # still running: its save is in progress
        except ProcessLookupError:
            try:
                os.unlink(directory / name)
            except OSError:
                pass
        except (OSError, OverflowError):
            pass


def _file_mode(path: Path) -> int:
    """The permissions a new checkpoint gets: the old file's, else what ``open`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        pass
    try:  # the umask, read without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def _write_file(path: Path, structure: str, tensors: dict[str, torch.Tensor]) -> None:
    names = sorted(tensors)
    index: dict[str, Any] = {}
    offset = 0
    crc = 0
    data: list[memoryview] = []
    for name in names:
        t = tensors[name]
        b = _tensor_bytes(t)
        crc = zlib.crc32(b, crc)
        data.append(b)
        index[name] = {
            "dtype": _DTYPE_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + b.nbytes],
        }
        offset += b.nbytes
    header = dict(index)
    metadata = {"format": _FORMAT, "fluxtrain": structure, "fluxtrain_data_crc32": str(crc)}
    metadata["fluxtrain_header_sha256"] = _header_digest(metadata, index)
    header["__metadata__"] = metadata
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # safetensors aligns the data on 8 bytes

    directory = str(path.parent)
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, os.getpid()), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode(path))  # mkstemp made it private (0600)
            _write_all(f, iter([struct.pack("<Q", len(hbytes)), hbytes, *data]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _open_regular(path: Path) -> tuple[Any, int]:
    """``path`` opened for reading, and its length; refuses anything but a regular file.

    Opened without blocking (a FIFO would otherwise wait for a writer) and checked with
    ``fstat`` on the open descriptor, so a device, FIFO, socket or directory (or a symlink to
    one, such as ``/dev/zero``) is refused before a byte is read.
    """
    where = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"no checkpoint at {where}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where} is not a regular file (a directory)") from None
    except OSError as e:
        raise CheckpointError(f"cannot open {where}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket or other special file"
            )
            raise CheckpointError(
                f"{where} is not a regular file ({kind}); a checkpoint is a file written by ft.save"
            )
        return os.fdopen(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_into(f: Any, buf: memoryview, where: str) -> None:
    got = 0
    while got < len(buf):
        try:
            k = f.readinto(buf[got:])
        except OSError as e:
            raise CheckpointError(f"cannot read {where}: {e.strerror or e}") from None
        if not k:
            raise CheckpointError(f"{where} became shorter while it was read")
        got += k


def _json(text: bytes | str, where: str, what: str) -> Any:
    """``json.loads`` whose every failure is a ``CheckpointError``."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{where} has a damaged header ({what} is not valid JSON: {e})"
        ) from None
    except (ValueError, RecursionError) as e:  # 100,000-digit numbers, nesting 100,000 deep
        raise CheckpointError(f"{where} has a damaged header ({what}: {e})") from None


_CODE_DTYPES = {code: dt for dt, code in _DTYPE_CODES.items()}


def _tensor_layout(
    index: Mapping[str, Any], where: str
) -> dict[str, tuple[torch.dtype, list, int, int]]:
    """Each tensor's dtype, shape and byte range, checked to be the layout ``_write_file``
    writes: in name order, back to back from offset 0, each exactly its shape's size."""
    layout = {}
    offset = 0
    for name in sorted(index):
        entry = index[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where} has a damaged header (tensor entry {name!r})")
        dtype = _CODE_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, offsets = entry["shape"], entry["data_offsets"]
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise CheckpointError(f"{where} has a damaged header (tensor entry {name!r})")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if offsets != [offset, offset + nbytes]:
            raise CheckpointError(
                f"{where} has a damaged or tampered header: tensor {name!r} is not where "
                f"ft.save puts it (bytes {offsets}, expected {[offset, offset + nbytes]})"
            )
        layout[name] = (dtype, shape, offset, offset + nbytes)
        offset += nbytes
    return layout


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and verify a checkpoint file; return its structure JSON and its tensors.

    Sizes are checked against the file's length before anything is read, the header must be
    byte for byte what ``_write_file`` writes for its content, its SHA-256 must match
    (covering tensor names, dtypes, shapes and byte offsets), and the tensor bytes must match
    their CRC-32.  Every failure is a ``CheckpointError``.
    """
    where = str(path)
    f, size = _open_regular(path)
    with f:
        head = bytearray(min(8, size))
        _read_into(f, memoryview(head), where)
        if (
            head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
            or head[:4] == b"PK\x03\x04"
        ):
            raise CheckpointError(
                f"{where} is a pickle / torch.save file, not a fluxtrain checkpoint; it was not "
                f"opened, because unpickling can run arbitrary code"
            )
        if size < 8:
            raise CheckpointError(f"{where} is truncated or empty ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise CheckpointError(
                f"{where} is not a checkpoint: its header length {n} is implausible"
            )
        if 8 + n > size:
            raise CheckpointError(
                f"{where} is truncated: the header needs {n} bytes but the file has {size - 8}"
            )
        hraw = bytearray(n)
        _read_into(f, memoryview(hraw), where)
        header = _json(bytes(hraw), where, "the header")
        if not isinstance(header, dict):
            raise CheckpointError(f"{where} has a damaged header (not a JSON object)")
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "fluxtrain" not in meta:
            raise CheckpointError(f"{where} is a safetensors file but not a fluxtrain checkpoint")
        exact = json.dumps(header, separators=(",", ":")).encode()
        exact += b" " * (-len(exact) % 8)
        index = {k: v for k, v in header.items() if k != "__metadata__"}
        structure_json = meta["fluxtrain"]
        try:
            if "fluxtrain_header_sha256" in meta:
                digest_ok = _header_digest(meta, index) == meta["fluxtrain_header_sha256"]
            else:  # written before the digest covered offsets: the layout check fixes them
                digest_ok = _legacy_header_digest(structure_json, index) == meta.get(
                    "fluxtrain_sha256"
                ) and set(meta) == {
                    "format",
                    "fluxtrain",
                    "fluxtrain_sha256",
                    "fluxtrain_data_crc32",
                }
        except (KeyError, TypeError, ValueError, RecursionError):
            raise CheckpointError(f"{where} has a damaged header (bad tensor index)") from None
        if not digest_ok or bytes(hraw) != exact or not isinstance(structure_json, str):
            raise CheckpointError(
                f"{where} has a damaged or tampered header: its checksum does not match its content"
            )
        layout = _tensor_layout(index, where)
        expected = max((end for *_, end in layout.values()), default=0)
        if 8 + n + expected > size:
            raise CheckpointError(
                f"{where} is truncated: {expected} bytes of tensor data expected, "
                f"{size - 8 - n} found"
            )
        if 8 + n + expected < size:
            raise CheckpointError(
                f"{where} is damaged: {size - 8 - n - expected} bytes follow the tensor data"
            )
        data = bytearray(expected)
        view = memoryview(data)
        _read_into(f, view, where)
    if str(zlib.crc32(view)) != meta.get("fluxtrain_data_crc32"):
        raise CheckpointError(f"{where} is damaged: the tensor data does not match its checksum")
    tensors = {}
    for name, (dtype, shape, start, end) in layout.items():
        if start == end:
            t = torch.empty(shape, dtype=dtype)
        else:  # bytes first, then the dtype: a copy of its own, aligned for any dtype
            raw = torch.frombuffer(data, dtype=torch.uint8, count=end - start, offset=start)
            t = raw.clone().view(dtype).reshape(shape)
        tensors[name] = t
    structure = _json(structure_json, where, "the structure")
    if not isinstance(structure, dict) or structure.get("version") != _VERSION:
        raise CheckpointError(f"{where}: unsupported checkpoint version")
    return structure, tensors


# ---------------------------------------------------------------------------------------------
# save


def save(
    path: str | os.PathLike,
    *,
    model: Any = None,
    opt_state: Any = None,
    rank0_only: bool = True,
    **extra: Any,
) -> Path | None:
    """Write a checkpoint of ``model``, ``opt_state`` and ``extra`` values to one file, atomically.

    Stored: every tensor of the model (parameters and buffers, by tree path), every optimiser
    Leaf (its rule with hyperparameters, frozen flag, and state: momenta, counters such as
    ``(beta1^t, beta2^t)``, schedule positions), the RNG states of torch, NumPy and ``random``,
    and each extra: tensors, numbers, strings, ``None``, nested lists/tuples/dicts of these,
    rules and schedules, and objects with ``state_dict()`` (a ``DataLoader``: its order).
    The file is written next to ``path`` and renamed over it, so a crash leaves the previous
    checkpoint intact.  In a multi-process run only rank 0 writes (``rank0_only=False``: every
    rank, e.g. to per-rank paths); the others return ``None``.  A sharded model (FSDP2: its
    parameters or optimiser state are DTensors) is written by [`save_sharded`][fluxtrain.sharded_checkpoint.save_sharded] instead, a
    directory to which every rank writes its own shards (every rank must call ``save`` then).

    Example:
        >>> import torch, tempfile, os, fluxtrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> st = ft.setup(ft.Adam(0.01), model)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> _ = ft.save(path, model=model, opt_state=st, epoch=3)
        >>> ft.load(path, model=model, opt_state=st)
        {'epoch': 3}
    """
    from .sharded_checkpoint import is_sharded, save_sharded

    if is_sharded(model, opt_state):  # FSDP2: every rank writes its shards
        return save_sharded(path, model=model, opt_state=opt_state, **extra)
    if rank0_only and not is_main_process():
        return None
    path = Path(path)
    for name in ("rng",):
        if name in extra:
            raise CheckpointError(f"the extra name {name!r} is reserved by fluxtrain")
    w = _Writer()
    structure: dict[str, Any] = {"format": _FORMAT, "version": _VERSION}

    if model is not None:
        entries: dict[str, str] = {}
        for p, t in _model_tensors(model):
            entries[p] = w.add(f"model/{p}", t)
        structure["model"] = entries

    if opt_state is not None:
        structure["opt_state"] = _opt_state_entries(opt_state, w)

    structure["rng"] = _encode(_rng_state(), "rng", w)
    structure["extra"] = {k: _encode(v, f"extra/{k}", w) for k, v in extra.items()}
    _write_file(path, json.dumps(structure, allow_nan=True), w.tensors)
    return path


# ---------------------------------------------------------------------------------------------
# load


def load(
    path: str | os.PathLike,
    *,
    model: Any = None,
    opt_state: Any = None,
    strict: bool = True,
    restore_rng: bool = True,
    **targets: Any,
) -> LoadResult:
    """Load a checkpoint written by [`save`][fluxtrain.checkpoint.save] into ``model`` and ``opt_state`` in place.

    Returns the extras as a dict (tensors on the CPU).  An extra whose name is also passed here
    as an object with ``load_state_dict`` (``data=loader``) is loaded into that object.
    Parameters and buffers are matched by tree path, so module order does not matter; a missing
    or extra path, or a shape or dtype mismatch, raises [`CheckpointError`][fluxtrain.checkpoint.CheckpointError] naming it.
    With ``strict=False`` whatever fits is loaded and the rest is listed in the result's
    ``.skipped`` (and warned about).  The optimiser state gets the checkpoint's rules (with their
    hyperparameters), frozen flags and state, even if it was set up with another rule.  RNG
    states are restored unless ``restore_rng=False``.  Everything is checked before anything
    changes (the file, its checksums, paths, shapes, dtypes, rules, state layouts, RNG states;
    see the module docs), so a failed load leaves model, state, objects and RNGs as they were.
    Every failure to read the checkpoint, or an object given as ``name=obj`` refusing its
    state, is a ``CheckpointError``.  Nothing is unpickled.

    Example:
        >>> import torch, tempfile, os, fluxtrain as ft
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> _ = ft.save(path, model={"w": torch.tensor([1.0, 2.0])})
        >>> m = {"w": torch.zeros(2)}
        >>> _ = ft.load(path, model=m); m["w"]
        tensor([1., 2.])
    """
    path = Path(path)
    _check_targets(targets)  # the caller's mistake, told before the file is read
    # A directory written by save_sharded (FSDP2) is read by load_sharded, on any number of ranks.
    if (Path(path) / "fluxtrain.json").is_file():
        from .sharded_checkpoint import load_sharded

        return load_sharded(
            path, model=model, opt_state=opt_state, strict=strict, restore_rng=restore_rng,
            **targets,
        )  # fmt: skip
    structure, tensors = _read_file(path)
    r = _Reader(tensors, str(path))
    skipped: list[str] = []
    copies: list[Callable[[], None]] = []
    stateful: list[tuple[str, Any, Any]] = []

    def problem(msg: str) -> None:
        if strict:
            raise r.error(msg)
        skipped.append(msg)

    try:  # plan: read and check everything, change nothing
        if model is not None:
            _plan_model(model, structure, r, problem, copies)
        if opt_state is not None:
            _plan_opt_state(opt_state, model, structure, r, problem, copies)
        extras_raw = structure.get("extra", {})
        if not isinstance(extras_raw, dict):
            raise r.error("malformed extras")
        extras = {k: _decode(v, f"extra.{k}", r) for k, v in extras_raw.items()}
        for name, obj in targets.items():
            if name not in extras:
                problem(f"the checkpoint has no extra {name!r} to load into {type(obj).__name__}")
                continue
            stateful.append((name, obj, extras[name]))
        rng = None
        if restore_rng and "rng" in structure:
            rng = _decode(structure["rng"], "rng", r)
            _check_rng_state(rng, r)
    except CheckpointError:
        raise
    except DAMAGE_ERRORS as e:
        raise r.error(f"damaged or unsupported content ({type(e).__name__}: {e})") from e

    # Everything we can check was checked.  Objects such as a DataLoader validate their own
    # state in load_state_dict, so they go first: if one refuses, model and state are untouched
    # and the objects loaded before it get their old state back.
    finish_load(stateful, r, copies, rng, skipped, f"load({path.name}, strict=False)")
    return LoadResult(extras, skipped=skipped)


# Whatever else a hostile or damaged checkpoint structure provokes while it is read.
DAMAGE_ERRORS = (
    TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
    RuntimeError,
)  # fmt: skip


def _check_targets(targets: dict[str, Any]) -> None:
    for name, obj in targets.items():
        if not hasattr(obj, "load_state_dict"):
            raise TypeError(
                f"load: {name}= must be an object with load_state_dict(), got {type(obj).__name__}"
            )


def finish_load(
    stateful: list[tuple[str, Any, Any]],
    r: _Reader,
    copies: list[Callable[[], None]],
    rng: Any,
    skipped: list[str],
    what: str,
) -> None:
    """Change things, once everything was checked: the objects first (they validate their own
    state, and one refusing leaves the model untouched), then the tensors, then the RNGs; warn
    of what ``strict=False`` skipped."""
    _load_stateful(stateful, r)
    with torch.no_grad():
        for c in copies:
            c()
    if rng is not None:
        _set_rng_state(rng)
    if skipped:
        warnings.warn(
            f"{what} skipped {len(skipped)} entries: "
            + "; ".join(skipped[:5])
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=3,
        )


def _load_stateful(stateful: list[tuple[str, Any, Any]], r: _Reader) -> None:
    """``obj.load_state_dict(sd)`` for each ``(name, obj, sd)``, all or none: on a failure the
    objects already loaded are given back their previous ``state_dict()``.  An object refusing
    its state is a ``CheckpointError`` naming the extra (the object's own error chained)."""
    done: list[tuple[Any, Any]] = []
    try:
        for name, obj, sd in stateful:
            old = obj.state_dict() if callable(getattr(obj, "state_dict", None)) else None
            old = copy.deepcopy(old)
            try:
                obj.load_state_dict(sd)
            except Exception as e:
                raise r.error(
                    f"the extra {name!r} does not fit this {type(obj).__name__}: "
                    f"{type(e).__name__}: {e}"
                ) from e
            done.append((obj, old))
    except BaseException:
        for obj, old in reversed(done):
            if old is not None:
                obj.load_state_dict(old)
        raise


def _plan_model(model, structure, r, problem, copies) -> None:
    saved = structure.get("model")
    if not isinstance(saved, dict):
        problem("the checkpoint has no model")
        return
    present = dict(_model_tensors(model))
    for p, t in present.items():
        if p not in saved:
            problem(f"the model has {p} but the checkpoint does not")
            continue
        src = r.tensors.get(saved[p])
        if src is None:
            raise r.error(f"model entry {p} refers to a missing tensor")
        if tuple(src.shape) != tuple(t.shape):
            problem(f"shape mismatch at {p}: checkpoint {list(src.shape)}, model {list(t.shape)}")
            continue
        if src.dtype != t.dtype:
            problem(f"dtype mismatch at {p}: checkpoint {src.dtype}, model {t.dtype}")
            continue
        copies.append(lambda t=t, src=src: t.copy_(src))
    for p in saved:
        if p not in present:
            problem(f"the checkpoint has {p} but the model does not")


def _plan_opt_state(opt_state, model, structure, r, problem, copies) -> None:
    saved = structure.get("opt_state")
    if not isinstance(saved, dict):
        problem("the checkpoint has no optimiser state")
        return
    present = list(_state_leaves(opt_state))
    present_paths = {p for p, _ in present}
    params = dict(_model_tensors(model)) if model is not None else {}
    decoded: dict[str, tuple[Rule, bool, Any]] = {}
    rules: dict[str, Any] = {}
    expected_sigs: dict[tuple, Any] = {}  # (rule, shape, dtype) -> state layout; many repeat
    done: set[int] = set()
    for p, leaf in present:
        if p not in saved:
            problem(f"the optimiser state has a Leaf at {p} but the checkpoint does not")
            continue
        entry = saved[p]
        if not isinstance(entry, dict):
            raise r.error(f"malformed optimiser entry at {p}")
        if "same_as" in entry:
            entry = saved.get(entry["same_as"])
            if not isinstance(entry, dict) or "rule" not in entry:
                raise r.error(f"malformed tied optimiser entry at {p}")
        if id(leaf) in done:
            continue
        if p not in decoded:
            rule_json = json.dumps(entry.get("rule"), sort_keys=True)
            if rule_json not in rules:  # rules are immutable: leaves with equal ones share one
                rules[rule_json] = _decode(entry.get("rule"), f"opt_state.{p}.rule", r)
            rule = rules[rule_json]
            if not isinstance(rule, Rule):
                raise r.error(f"the optimiser entry at {p} has no rule")
            try:
                hash(rule)
            except TypeError as e:  # a rule is frozen; a field of the wrong kind is not
                raise r.error(f"malformed rule at opt_state.{p}.rule: {e}") from None
            state = _decode(entry.get("state"), f"opt_state.{p}.state", r)
            decoded[p] = (rule, bool(entry.get("frozen", False)), state)
        rule, frozen, state = decoded[p]

        like, wrong = _like_mismatch(p, leaf, entry, params.get(p))
        if wrong is not None:
            problem(wrong)
            continue
        if like is not None:
            key = (rule, tuple(like[0]), like[1])
            if key not in expected_sigs:
                expected_sigs[key] = _expected_signature(rule, key[1], like[1], p, r)
            expected = expected_sigs[key]
            if expected is not None and expected != _signature(state):
                problem(
                    f"the optimiser state at {p} does not fit {type(rule).__name__} for this "
                    f"parameter: expected {_describe(expected)}, "
                    f"found {_describe(_signature(state))}"
                )
                continue
        done.add(id(leaf))
        in_place = _signature(leaf.state) == _signature(state)
        device = like[2] if like is not None else torch.device("cpu")

        def apply(
            leaf=leaf, rule=rule, frozen=frozen, state=state, in_place=in_place, device=device
        ):
            leaf.rule = rule
            leaf.frozen = frozen
            if in_place:
                leaf.state = _assign(leaf.state, state)
            else:
                leaf.state = _to_device(state, device)

        copies.append(apply)
    for p in saved:
        if p not in present_paths:
            problem(f"the checkpoint has optimiser state at {p} but the given state does not")
