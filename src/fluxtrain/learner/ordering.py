"""The order in which callbacks run, derived from what they read and write.

Rules (FluxTraining.jl ``src/callbacks/graph.jl``, made stricter):

1. ``runafter``/``runbefore`` give explicit constraints between callback classes.
2. A callback that writes a path runs before every callback that reads it (paths conflict when
   one is a prefix of the other), unless an explicit constraint says otherwise.
3. Two callbacks writing the same state must be ordered explicitly (rule 1); otherwise it is a
   [`CallbackOrderError`][fluxtrain.learner.CallbackOrderError], raised when the learner is built.
4. A cycle is a [`CallbackOrderError`][fluxtrain.learner.CallbackOrderError] naming the callbacks and reasons.

Callbacks not constrained keep the order in which they were given.
"""

from __future__ import annotations

import heapq
import itertools
import warnings
from collections.abc import Sequence
from typing import Any

from .access import parse_path, paths_conflict
from .exceptions import CallbackOrderError

__all__ = ["declared_paths", "order_callbacks"]


def declared_paths(cb: Any) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """``(reads, writes)`` of ``cb`` as parsed paths; a bare string is one path."""
    out = []
    for attr in ("reads", "writes"):
        val = getattr(cb, attr, ())
        if isinstance(val, str):
            val = (val,)
        out.append([parse_path(p, cb) for p in val])
    return out[0], out[1]


def _fmt(path: tuple[str, ...]) -> str:
    return "learner" if path == ("*",) else "learner." + ".".join(path)


def order_callbacks(callbacks: Sequence[Any]) -> list[Any]:
    """``callbacks`` sorted so that every constraint holds; raises ``CallbackOrderError``."""
    n = len(callbacks)
    decl = [declared_paths(cb) for cb in callbacks]
    reasons: dict[tuple[int, int], str] = {}

    # 1. explicit constraints
    for j, cb in enumerate(callbacks):
        for cls in getattr(cb, "runafter", ()):
            for i, other in enumerate(callbacks):
                if i != j and other.is_a(cls):
                    reasons.setdefault((i, j), f"{cb!r} declares runafter {cls.__name__}")
        for cls in getattr(cb, "runbefore", ()):
            for i, other in enumerate(callbacks):
                if i != j and other.is_a(cls):
                    reasons.setdefault((j, i), f"{cb!r} declares runbefore {cls.__name__}")
    reach = [[False] * n for _ in range(n)]
    for i, j in reasons:
        reach[i][j] = True
    for k in range(n):
        for i in range(n):
            if reach[i][k]:
                row_k = reach[k]
                row_i = reach[i]
                for j in range(n):
                    if row_k[j]:
                        row_i[j] = True

    # 3. write/write conflicts need an explicit order
    for i in range(n):
        for j in range(i + 1, n):
            for a in decl[i][1]:
                hit = next((b for b in decl[j][1] if paths_conflict(a, b)), None)
                if hit is not None and not (reach[i][j] or reach[j][i]):
                    path = a if len(a) >= len(hit) and a != ("*",) else hit
                    raise CallbackOrderError(
                        f"{callbacks[i]!r} and {callbacks[j]!r} both write {_fmt(path)}; "
                        f"say which runs first with runafter=(...) or runbefore=(...) on one "
                        f"of them, or use only one"
                    )

    # 2. writers before readers
    for i in range(n):
        for j in range(n):
            if i == j or reach[j][i]:
                continue
            for w in decl[i][1]:
                hit = next((r for r in decl[j][0] if paths_conflict(w, r)), None)
                if hit is not None:
                    reasons.setdefault(
                        (i, j), f"{callbacks[i]!r} writes {_fmt(w)}, which {callbacks[j]!r} reads"
                    )
                    break

    _warn_unwritten(callbacks, decl)
    return _toposort(callbacks, reasons)


def _warn_unwritten(callbacks: Sequence[Any], decl: list) -> None:
    writes = [w for _, ws in decl for w in ws]
    for cb, (reads, _) in zip(callbacks, decl):
        for r in reads:
            if len(r) >= 2 and r[0] == "cbstate" and not any(paths_conflict(r, w) for w in writes):
                warnings.warn(
                    f"{cb!r} reads {_fmt(r)} but no callback writes it; add the callback that "
                    f"does (e.g. Metrics() for cbstate.metrics_*, Recorder() for "
                    f"cbstate.history)",
                    stacklevel=5,
                )


def _toposort(callbacks: Sequence[Any], reasons: dict[tuple[int, int], str]) -> list[Any]:
    n = len(callbacks)
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for i, j in reasons:
        succ[i].append(j)
        indeg[j] += 1
    ready = [i for i in range(n) if indeg[i] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(out) < n:
        raise CallbackOrderError(
            "the callbacks' declarations form a cycle: "
            + "; ".join(_find_cycle(set(range(n)) - set(out), succ, reasons))
        )
    return [callbacks[i] for i in out]


def _find_cycle(left: set[int], succ: list[list[int]], reasons: dict) -> list[str]:
    # Every callback left over has a predecessor that is left over too: walk those backwards
    # until one repeats.
    pred: dict[int, int] = {}
    for i in left:
        for j in succ[i]:
            if j in left:
                pred.setdefault(j, i)
    node, seen = min(left), []
    while node not in seen:
        seen.append(node)
        node = pred[node]
    cyc = seen[seen.index(node) :][::-1]
    cyc.append(cyc[0])
    return [reasons[(a, b)] for a, b in itertools.pairwise(cyc)]
