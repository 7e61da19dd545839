"""Multi-process helpers over ``torch.distributed`` (launch with ``torchrun``).

Everything here also works in a single process without ``torch.distributed`` initialised:
then there is one rank, rank 0, and reductions return their input.

A multi-process run calls [`init_distributed`][fluxtrain.distributed.init_distributed] once (it reads what ``torchrun`` puts in the
environment), wraps the model with [`data_parallel`][fluxtrain.distributed.data_parallel], shards its data with
``ft.DataLoader(..., shard="auto")`` and trains as usual; only rank 0 writes checkpoints
(``ft.save``) and logs.  Launch the same script on one machine or on several:

```bash
# one machine, 4 processes
torchrun --nproc-per-node 4 train.py
# 2 machines, 8 processes each: run this on both
torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29500 train.py
```

A rank that dies must not leave the others waiting forever: [`init_distributed`][fluxtrain.distributed.init_distributed] gives every
collective a timeout and starts a small watchdog thread.  Each rank publishes a heartbeat in the
rendezvous store; a rank that raises an uncaught exception publishes that too.  When another
rank has failed, or has sent no heartbeat for ``heartbeat_timeout`` seconds (killed, out of
memory), the watchdog prints which rank and why, and ends this process with exit code 3.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "RankFailureError",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "data_parallel",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "shutdown_distributed",
    "world_size",
]

WATCHDOG_EXIT_CODE = 3


class RankFailureError(RuntimeError):
    """Another process of a multi-process run failed or stopped responding."""


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun; 0 otherwise).

    Example:
        >>> local_rank()
        0
    """
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the process that writes checkpoints and logs."""
    return rank() == 0


def all_reduce_mean(value: float | torch.Tensor) -> float | torch.Tensor:
    """The mean of ``value`` over all ranks (``value`` itself in a single process).

    Example:
        >>> all_reduce_mean(3.0)
        3.0
    """
    if not is_distributed():
        return value
    is_float = not isinstance(value, torch.Tensor)
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.get_backend() == "nccl":
        t = t.cuda()
    _collective("all_reduce", dist.all_reduce, t, op=dist.ReduceOp.SUM)
    t = (t / dist.get_world_size()).cpu()
    return float(t) if is_float else t


def barrier() -> None:
    """Wait until every rank has reached this point (nothing in a single process).

    Example:
        >>> barrier()
    """
    if is_distributed():
        _collective("barrier", dist.barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as given on rank ``src``, on every rank (``obj`` itself in a single process).

    Uses ``torch.distributed.broadcast_object_list``, which pickles: use it for values your own
    ranks produce, never for data from outside.

    Example:
        >>> broadcast_object({"seed": 7})
        {'seed': 7}
    """
    if not is_distributed():
        return obj
    box = [obj]
    _collective("broadcast_object", dist.broadcast_object_list, box, src=src)
    return box[0]


def _collective(name: str, fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except (RuntimeError, dist.DistError) as e:
        raise RankFailureError(
            f"rank {rank()}: {name} failed, most likely because another rank died or timed "
            f"out ({_failed_ranks_note()}): {e}"
        ) from e


def data_parallel(model: torch.nn.Module, **ddp_options: Any) -> torch.nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when distributed, else ``model``.

    On a GPU the model is moved to this process's device first.  ``ft.setup``, ``ft.update_``,
    ``ft.train_`` and ``ft.save`` see through the wrapper (state and checkpoint keys mirror the
    inner model).  Gradients are averaged over ranks during ``backward``, so give each rank an
    equal share of every batch (``ft.DataLoader(..., shard="auto")``).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> data_parallel(m) is m  # a single process: nothing to wrap
        True
    """
    if not is_distributed():
        return model
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        device = torch.device("cuda", local_rank())
        model = model.to(device)
        ddp_options.setdefault("device_ids", [device.index])
    return torch.nn.parallel.DistributedDataParallel(model, **ddp_options)


# ---------------------------------------------------------------------------------------------
# Start-up, watchdog, shutdown


class _Watchdog:
    """Heartbeats through a key-value store; ends the process when a peer fails or goes quiet."""

    def __init__(self, store: Any, me: int, world: int, timeout: float, interval: float) -> None:
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"fluxtrain/{attempt}"
        self.store = store
        self.me = me
        self.others = set(range(world)) - {me}
        self.timeout = timeout
        self.interval = interval
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.beats = 0
        self.thread = threading.Thread(target=self._run, name="fluxtrain-watchdog", daemon=True)

    def key(self, kind: str, r: int) -> str:
        return f"{self.prefix}/{kind}/{r}"

    def set(self, kind: str, value: str) -> None:
        with self.lock:
            self.store.set(self.key(kind, self.me), value)

    def get_if(self, kind: str, r: int) -> str | None:
        with self.lock:
            k = self.key(kind, r)
            return self.store.get(k).decode(errors="replace") if self.store.check([k]) else None

    def failed(self) -> dict[int, str]:
        out = {}
        for r in sorted(self.others):
            msg = self.get_if("failed", r)
            if msg is not None:
                out[r] = msg
        return out

    def start(self) -> None:
        self.set("hb", "0")
        self.thread.start()

    def _run(self) -> None:
        last: dict[int, str | None] = dict.fromkeys(self.others)
        changed = dict.fromkeys(self.others, time.monotonic())
        while not self.stop.wait(self.interval):
            try:
                self.beats += 1
                self.set("hb", str(self.beats))
                now = time.monotonic()
                for r in sorted(self.others):
                    msg = self.get_if("failed", r)
                    if msg is not None:
                        _abort(f"rank {r} failed: {msg}")
                    if self.get_if("done", r) is not None:
                        self.others.discard(r)
                        continue
                    beat = self.get_if("hb", r)
                    if beat != last[r]:
                        last[r], changed[r] = beat, now
                    elif now - changed[r] > self.timeout:
                        _abort(
                            f"rank {r} has sent no heartbeat for {now - changed[r]:.0f} s: it was "
                            f"probably killed (out of memory, a signal) or its machine is gone"
                        )
            except Exception as e:  # the store itself is gone: its host (rank 0/launcher) died
                if self.stop.is_set():
                    return
                _abort(f"lost contact with the rendezvous store ({e}); rank 0 or the launcher died")


_WATCHDOG: _Watchdog | None = None
_ORIGINAL_EXCEPTHOOK = sys.excepthook


def _failed_ranks_note() -> str:
    wd = _WATCHDOG
    if wd is None:
        return "see the other ranks' output"
    try:
        failed = wd.failed()
    except Exception:
        return "see the other ranks' output"
    if not failed:
        return "see the other ranks' output"
    return "; ".join(f"rank {r} failed: {m}" for r, m in failed.items())


def _abort(reason: str) -> None:
    print(
        f"fluxtrain [rank {rank()}]: {reason}. Stopping this process (exit code "
        f"{WATCHDOG_EXIT_CODE}) so that the job does not hang.",
        file=sys.stderr,
        flush=True,
    )
    os._exit(WATCHDOG_EXIT_CODE)


def _excepthook(tp: type, value: BaseException, tb: Any) -> None:
    wd = _WATCHDOG
    if wd is not None:
        try:
            wd.set("failed", f"{tp.__name__}: {value}"[:500])
        except Exception:
            pass
        if isinstance(value, (RuntimeError, dist.DistError)) and not isinstance(
            value, RankFailureError
        ):
            print(
                f"fluxtrain [rank {wd.me}]: this error may come from another rank "
                f"({_failed_ranks_note()}).",
                file=sys.stderr,
                flush=True,
            )
    _ORIGINAL_EXCEPTHOOK(tp, value, tb)


def _at_exit() -> None:
    wd = _WATCHDOG
    if wd is None:
        return
    wd.stop.set()
    try:
        if wd.get_if("failed", wd.me) is None:
            wd.set("done", "1")
    except Exception:
        pass


def init_distributed(
    backend: str | None = None,
    *,
    timeout: float = 600.0,
    heartbeat_timeout: float | None = 60.0,
    heartbeat_interval: float = 1.0,
) -> tuple[int, int]:
    """Join the multi-process run described by the environment (``torchrun`` sets it); return
    ``(rank, world_size)``.  Without such an environment it does nothing and returns ``(0, 1)``.

    ``backend`` defaults to ``"nccl"`` with GPUs and ``"gloo"`` on CPUs.  Every collective
    fails after ``timeout`` seconds instead of waiting forever.  With ``heartbeat_timeout`` (not
    ``None``) a watchdog ends this process with a message naming the rank when another rank
    raised an uncaught exception or has sent no heartbeat for that many seconds.

    Example:
        >>> init_distributed()  # a plain ``python script.py``: one process
        (0, 1)
    """
    global _WATCHDOG
    if dist.is_initialized():
        return rank(), world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    me = int(os.environ["RANK"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(
        backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout)
    )
    if heartbeat_timeout is not None:
        # A separate client connection, so the watchdog never shares a socket with the
        # process group's own use of the store.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=max(heartbeat_timeout, 5.0)),
        )
        _WATCHDOG = _Watchdog(store, me, world, heartbeat_timeout, heartbeat_interval)
        _WATCHDOG.start()
        sys.excepthook = _excepthook
        atexit.register(_at_exit)
    return me, world


def shutdown_distributed() -> None:
    """Leave the multi-process run: stop the watchdog (saying this rank finished normally) and
    destroy the process group.  Safe to call when not distributed.

    Example:
        >>> shutdown_distributed()
    """
    global _WATCHDOG
    _at_exit()
    _WATCHDOG = None
    if sys.excepthook is _excepthook:
        sys.excepthook = _ORIGINAL_EXCEPTHOOK
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
