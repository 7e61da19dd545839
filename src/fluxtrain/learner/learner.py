"""The [`Learner`][fluxtrain.learner.Learner]: model, loss, optimiser state, data and callbacks; and [`fit_`][fluxtrain.learner.fit_].

FluxTraining.jl ``src/learner.jl`` and ``src/training.jl``, with fluxtrain's changes:

- the optimiser is an Optimisers.jl-style rule; its state ``learner.opt_state`` is
  ``ft.setup(optimizer, model)`` and steps use ``ft.gradient`` and ``ft.update_`` (explicit style);
- a cancelled fit (``CancelFittingException``, e.g. from ``EarlyStopping``) ends [`fit_`][fluxtrain.learner.fit_]
  normally, with the reason in ``learner.stop_reason`` (FluxTraining.jl issue #159);
- [`Learner.state_dict`][fluxtrain.learner.Learner.state_dict]/[`Learner.load_state_dict`][fluxtrain.learner.Learner.load_state_dict] and ``fit_(..., resume=path)``
  resume a run from a checkpoint at the epoch where it stopped.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..optimisers import Adam, Rule, leaves, setup
from .access import GuardedView, Permissions
from .callback import Callback
from .control import misplaced_cancel
from .events import EpochEnd, Event, FitBegin, FitEnd
from .exceptions import CallbackOrderError, CancelFittingException, FitException
from .ordering import declared_paths, order_callbacks
from .phases import TrainingPhase, ValidationPhase, epoch_
from .state import CallbackState, StepState, cbstate_to_plain, from_plain

__all__ = ["FitProgress", "Learner", "LearnerData", "fit_"]

_FORMAT = "fluxtrain.Learner/1"


class LearnerData(NamedTuple):
    """``learner.data``: the training and validation data iterators (either may be ``None``).

    Example:
        >>> import fluxtrain as ft
        >>> ft.LearnerData([1, 2], None).training
        [1, 2]
    """

    training: Any = None
    validation: Any = None


@dataclasses.dataclass
class FitProgress:
    """Where [`fit_`][fluxtrain.learner.fit_] is: ``learner.progress`` (``None`` outside ``fit_``).

    ``epoch`` is the 0-based epoch index within this ``fit_`` call of ``nepochs``;
    ``phase_index`` the phase running (0 training, 1 validation); ``phases_done`` how many of
    this epoch's ``nphases`` phases have finished their work.  A checkpoint written at the end
    of a phase records it, so that a resumed fit starts with the next phase.

    Example:
        >>> import fluxtrain as ft
        >>> ft.FitProgress(nepochs=10, epoch=3, nphases=2, phase_index=1, phases_done=1)
        FitProgress(nepochs=10, epoch=3, nphases=2, phase_index=1, phases_done=1)
    """

    nepochs: int
    epoch: int = 0
    nphases: int = 1
    phase_index: int = 0
    phases_done: int = 0


def _describe_data(d: Any) -> str:
    if d is None:
        return "None"
    try:
        return f"{len(d)} batches"
    except TypeError:
        return type(d).__name__


def _check_iterable(d: Any, where: str) -> Any:
    if d is None:
        return None
    if isinstance(d, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{where} is a {type(d).__name__}, not an iterable of batches: wrap arrays in "
            f"ft.DataLoader((X, Y), batchsize=...) or pass a list of (xs, ys) pairs"
        )
    # Never call iter() here: a DataLoader draws its shuffled order when iteration starts.
    if isinstance(d, Iterator):
        raise TypeError(
            f"{where} is an iterator (e.g. a generator), which would be used up after one epoch; "
            f"pass something iterable many times: a list of batches or a DataLoader"
        )
    if not (hasattr(d, "__iter__") or hasattr(d, "__getitem__")):
        raise TypeError(f"{where} must be an iterable of batches, got {type(d).__name__}")
    return d


def _is_batch(x: Any) -> bool:
    """Whether ``x`` looks like one batch (a tuple of arrays) rather than a data iterator."""
    return isinstance(x, (tuple, list)) and any(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in x
    )


def _data(data: Any) -> LearnerData:
    if data is None:
        return LearnerData()
    if isinstance(data, LearnerData):
        parts = tuple(data)
    elif isinstance(data, dict):
        unknown = set(data) - {"training", "validation"}
        if unknown:
            raise ValueError(
                f"data keys must be 'training' and 'validation', got {sorted(unknown)}"
            )
        parts = (data.get("training"), data.get("validation"))
    elif isinstance(data, (tuple, list)) and data and _is_batch(data[0]):
        parts = (data,)  # a list of batches: training data alone
    elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 2:
        parts = tuple(data)
    elif isinstance(data, (tuple, list)):
        raise ValueError(
            f"data must be (train,) or (train, valid) data iterators, or one list of (xs, ys) "
            f"batches; got a sequence of length {len(data)} whose first item is a "
            f"{type(data[0]).__name__}"
        )
    else:
        parts = (data,)
    names = ("data[0] (training)", "data[1] (validation)")
    return LearnerData(*(_check_iterable(d, n) for d, n in zip(parts, names)))


def default_callbacks() -> list[Callback]:
    """Fresh instances of the callbacks every learner gets unless told otherwise:
    ``ProgressBar``, ``MetricsPrinter``, ``StopOnNaNLoss``, ``Recorder``, ``Metrics``
    (FluxTraining.jl ``defaultcallbacks``).

    ``Learner(..., callbacks=[...])`` adds each of these whose class is not among the given
    callbacks; ``usedefaultcallbacks=False`` adds none.

    Example:
        >>> import fluxtrain as ft
        >>> ft.callbacks.default_callbacks()
        [ProgressBar(), MetricsPrinter(), StopOnNaNLoss(), Recorder(), Metrics(Loss)]
    """
    from .callbacks import Metrics, MetricsPrinter, ProgressBar, Recorder, StopOnNaNLoss

    return [ProgressBar(), MetricsPrinter(), StopOnNaNLoss(), Recorder(), Metrics()]


def _with_defaults(given: list[Any]) -> tuple[list[Any], list[Callback]]:
    """``given`` plus each default callback whose class no given callback is (or wraps)."""
    added = [
        d
        for d in default_callbacks()
        if not any(isinstance(cb, Callback) and cb.is_a(type(d)) for cb in given)
    ]
    return given + added, added


def _orderable(callbacks: list[Any]) -> bool:
    """Whether ``callbacks`` alone can be ordered (to tell whether a default is in the way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            order_callbacks(callbacks)
        except CallbackOrderError:
            return False
    return True


class _Runner:
    """The callbacks in execution order, each with its guarded view, and per-event tables."""

    def __init__(self, ordered: list[Callback], views: dict[int, GuardedView]) -> None:
        self.ordered = ordered
        self.views = views
        self.table: dict[type, list[tuple[Callback, Callable[..., None], GuardedView]]] = {}

    def entries(self, evtype: type) -> list[tuple[Callback, Callable[..., None], GuardedView]]:
        out = []
        for cb in self.ordered:
            if type(cb).on is Callback.on:
                continue
            handles = cb.handles
            if handles is None or issubclass(evtype, tuple(handles)):
                out.append((cb, cb.on, self.views[id(cb)]))
        self.table[evtype] = out
        return out

    def dispatch(
        self,
        event: Event,
        phase: Any,
        finish: Callable[[CancelFittingException], None] | None = None,
    ) -> None:
        """Call each callback's ``on``.  With ``finish`` (at ``EpochEnd``), a
        ``CancelFittingException`` does not stop the dispatch: ``finish(e)`` is called, the
        remaining callbacks still see the event, then the first such exception is raised."""
        entries = self.table.get(type(event))
        if entries is None:
            entries = self.entries(type(event))
        stop = None
        for cb, on, view in entries:
            try:
                on(event, phase, view)
            except FitException as e:
                if e.callback is None:
                    e.callback = cb
                during = "" if phase is None else f" during {phase!r}"
                bad = misplaced_cancel(e, f"by {cb!r} at {type(event).__name__}{during}", event)
                if bad is not None:
                    raise bad from e
                if finish is not None and isinstance(e, CancelFittingException):
                    if stop is None:
                        stop = e
                        finish(e)
                    continue
                raise
            except Exception as e:
                e.add_note(f"(raised by callback {cb!r} on {event!r} during {phase!r})")
                raise
        if stop is not None:
            raise stop


class Learner:
    """Holds and coordinates everything of a training run (FluxTraining.jl ``Learner``).

    Args:
        model: a ``torch.nn.Module`` or any model tree; for several models (GANs) a dict or
            named tuple such as ``{"generator": g, "critic": c}``.
        lossfn: ``lossfn(ys_pred, ys) -> scalar`` (Flux's argument order, ``ŷ`` first); or
            ``None`` to take the loss from the model's output (``out.loss``, as Hugging Face
            models return it when the batch has ``"labels"``).
        optimizer: an optimisation rule (default ``ft.Adam()``), set up as
            ``learner.opt_state = ft.setup(optimizer, model)``; or an already set-up state.
        callbacks: callback instances.  The learner adds the default callbacks
            (``ProgressBar``, ``MetricsPrinter``, ``StopOnNaNLoss``, ``Recorder``,
            ``Metrics``: ``ft.callbacks.default_callbacks()``) except those whose
            class is among the given ones, so ``callbacks=[EarlyStopping(3)]`` still has the
            ``Metrics`` it watches, and ``callbacks=[Metrics(Accuracy())]`` replaces the
            default ``Metrics`` (FluxTraining.jl ``usedefaultcallbacks=true``).
        data: ``(train, valid)`` or ``train`` alone: iterables of ``(xs, ys)`` batches (a
            DataLoader, or a list of batches, which alone is training data).  A batch may also
            be a dict: the model is called as ``model(**batch)`` and ``ys`` is
            ``batch["labels"]``.  When the model returns a dict or a transformers
            ``ModelOutput``, ``ys_pred`` (what ``lossfn`` and metrics read) is its ``logits``.
        autocast: a dtype such as ``torch.bfloat16`` to run forward and loss under
            ``torch.autocast``; ``None`` (default) for full precision.
        usedefaultcallbacks: ``False`` to add no default callback: the learner then has
            exactly ``callbacks``.

    Attributes: ``model``, ``lossfn``, ``optimizer``, ``opt_state``, ``data`` (``.training``,
    ``.validation``), ``callbacks`` (in execution order), ``step`` (the last step's
    [`StepState`][fluxtrain.learner.StepState]), ``cbstate`` (shared callback state), ``epoch`` (completed
    [`fit_`][fluxtrain.learner.fit_] epochs), ``progress`` (a [`FitProgress`][fluxtrain.learner.FitProgress] during ``fit_``),
    ``stop_reason`` (the [`CancelFittingException`][fluxtrain.learner.CancelFittingException] that ended the last fit).

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
        >>> learner = ft.Learner(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss,
        ...                      ft.Descent(0.01), callbacks=[ft.callbacks.Recorder()],
        ...                      data=(data, data), usedefaultcallbacks=False)
        >>> _ = ft.fit_(learner, 2)
        >>> learner.epoch, learner.cbstate.history[ft.TrainingPhase()].steps
        (2, 8)
        >>> learner = ft.Learner(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss,
        ...                      callbacks=[ft.callbacks.EarlyStopping(2)])
        >>> sorted(type(cb).__name__ for cb in learner.callbacks)   # the defaults are added
        ['EarlyStopping', 'Metrics', 'MetricsPrinter', 'ProgressBar', 'Recorder', 'StopOnNaNLoss']
    """

    def __init__(
        self,
        model: Any,
        lossfn: Callable[[Any, Any], Any] | None = None,
        optimizer: Any = None,
        callbacks: Iterable[Callback] | None = None,
        data: Any = None,
        autocast: torch.dtype | None = None,
        *,
        usedefaultcallbacks: bool = True,
    ) -> None:
        if autocast is not None and not isinstance(autocast, torch.dtype):
            raise TypeError(
                f"autocast must be a torch dtype such as torch.bfloat16, got {autocast!r}"
            )
        if lossfn is not None and not callable(lossfn):
            raise TypeError(f"lossfn must be callable as lossfn(ys_pred, ys), got {lossfn!r}")
        self.model = model
        self.lossfn = lossfn
        self.optimizer, self.opt_state = self._optimiser(optimizer, model)
        self.data = _data(data)
        self.autocast = autocast
        self.step = StepState()
        self.cbstate = CallbackState()
        self.epoch = 0
        self.progress: FitProgress | None = None
        self.epoch_length: int | None = None
        self.stop_reason: CancelFittingException | None = None
        self._resume_progress: dict[str, int] | None = None
        self.callbacks: tuple[Callback, ...] = ()
        self._runner = _Runner([], {})
        if not isinstance(usedefaultcallbacks, bool):
            raise TypeError(
                f"usedefaultcallbacks must be True or False, got {usedefaultcallbacks!r}"
            )
        given = [] if callbacks is None else list(callbacks)
        added: list[Callback] = []
        if usedefaultcallbacks:
            given, added = _with_defaults(given)
        try:
            self._set_callbacks(given)
        except CallbackOrderError as e:
            if added and _orderable([cb for cb in given if cb not in added]):
                e.add_note(
                    f"the learner added the default callbacks {added}; give your own instance "
                    f"of the one in the way, or pass usedefaultcallbacks=False to add none"
                )
            raise

    @staticmethod
    def _optimiser(optimizer: Any, model: Any) -> tuple[Any, Any]:
        if optimizer is None:
            optimizer = Adam()
        if isinstance(optimizer, type):
            raise TypeError(
                f"optimizer must be a rule instance such as {optimizer.__name__}(), not the class"
            )
        if isinstance(optimizer, Rule):
            return optimizer, (None if model is None else setup(optimizer, model))
        found = list(leaves(optimizer))
        if not found:
            raise TypeError(
                f"optimizer must be a rule such as ft.Adam() or a state from ft.setup, got "
                f"{type(optimizer).__name__}"
            )
        return found[0].rule, optimizer

    # -----------------------------------------------------------------------------------------
    # Callbacks

    def _set_callbacks(self, cbs: list[Callback]) -> None:
        for i, cb in enumerate(cbs):
            if isinstance(cb, type):
                raise TypeError(f"callbacks[{i}] is the class {cb.__name__}; pass an instance")
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks[{i}] is a {type(cb).__name__}, not an ft.Callback: subclass "
                    f"ft.Callback, or wrap a function in ft.callbacks.CustomCallback"
                )
        views = {}
        for cb in cbs:
            reads, writes = declared_paths(cb)
            for p in reads + writes:
                if p[0] != "*" and not hasattr(self, p[0]):
                    raise ValueError(
                        f"{cb!r} declares access to learner.{'.'.join(p)}, but a Learner has no "
                        f"{p[0]!r}"
                    )
            views[id(cb)] = GuardedView(self, Permissions.from_paths(reads, writes), "learner", cb)
        ordered = order_callbacks(cbs)
        new = [cb for cb in ordered if all(cb is not old for old in self.callbacks)]
        self.callbacks = tuple(ordered)
        self._runner = _Runner(ordered, views)
        for cb in new:
            cb.init(views[id(cb)])

    def add_callback(self, callback: Callback) -> None:
        """Add ``callback`` and recompute the order (FluxTraining.jl ``addcallback!``).

        If the new set of callbacks cannot be ordered, the error is raised and the learner
        keeps its callbacks as they were.

        Example:
            >>> import torch, fluxtrain as ft
            >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss,
            ...                      callbacks=[ft.callbacks.MetricsPrinter(), ft.callbacks.Metrics()],
            ...                      usedefaultcallbacks=False)
            >>> learner.add_callback(ft.callbacks.Recorder())
            >>> learner.callbacks      # Metrics writes what MetricsPrinter reads: it runs first
            (Metrics(Loss), MetricsPrinter(), Recorder())
            >>> learner.replace_callback(ft.callbacks.Metrics(ft.callbacks.Accuracy()))
            Metrics(Loss)
            >>> learner.remove_callback(ft.callbacks.Recorder), learner.get_callback(ft.callbacks.Metrics)
            (Recorder(), Metrics(Loss, Accuracy))
        """
        self._set_callbacks([*self.callbacks, callback])

    def get_callback(self, cls: type) -> Callback | None:
        """The first callback that is (or wraps) a ``cls``, or ``None``."""
        return next((cb for cb in self.callbacks if cb.is_a(cls)), None)

    def remove_callback(self, which: type | Callback) -> Callback | None:
        """Remove the given callback, or the first of class ``which``; return it (or ``None``)."""
        if isinstance(which, type):
            cb = self.get_callback(which)
        else:
            cb = next((c for c in self.callbacks if c is which), None)
        if cb is not None:
            self._set_callbacks([c for c in self.callbacks if c is not cb])
        return cb

    def replace_callback(self, callback: Callback) -> Callback | None:
        """Put ``callback`` in place of the first callback of its class and return that one;
        add it and return ``None`` if there is none (FluxTraining.jl ``replacecallback!``)."""
        old = self.get_callback(type(callback))
        if old is None:
            self.add_callback(callback)
            return None
        self._set_callbacks([callback if c is old else c for c in self.callbacks])
        return old

    def _dispatch(self, event: Event, phase: Any) -> None:
        if type(event) is EpochEnd:
            self._runner.dispatch(event, phase, self._finish_epoch)
        else:
            self._runner.dispatch(event, phase)

    def _finish_epoch(self, e: CancelFittingException) -> None:
        """Fitting was cancelled at an ``EpochEnd``: this epoch's work is done and the rest of
        its phases will not run, so it counts as a finished epoch (for the callbacks still to
        see this ``EpochEnd``, such as ``Checkpointer``, and for ``fit_``)."""
        if self.progress is not None:
            self.progress.phases_done = self.progress.nphases

    # -----------------------------------------------------------------------------------------
    # Saving and resuming

    def _callback_keys(self) -> list[tuple[str, Callback]]:
        seen: dict[str, int] = {}
        out = []
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything besides ``model`` and ``opt_state`` that resuming needs, as plain data:
        epoch counters and fit progress, ``cbstate`` (history, metrics), each callback's
        [`state_dict`][fluxtrain.learner.Callback.state_dict], the data iterators' ``state_dict()`` when they
        have one, and the random number generators' states (torch, CUDA, Python, NumPy).

        Example:
            >>> import torch, fluxtrain as ft
            >>> learner = ft.Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss,
            ...                      callbacks=[])
            >>> sorted(learner.state_dict())
            ['callbacks', 'cbstate', 'data', 'epoch', 'format', 'progress', 'rng']
        """
        data = {}
        for name, d in zip(LearnerData._fields, self.data):
            if d is not None and callable(getattr(d, "state_dict", None)):
                data[name] = d.state_dict()
        return {
            "format": _FORMAT,
            "epoch": self.epoch,
            "progress": None if self.progress is None else dataclasses.asdict(self.progress),
            "cbstate": cbstate_to_plain(self.cbstate),
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_keys()},
            "data": data,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`state_dict`][fluxtrain.learner.Learner.state_dict] returned (model and optimiser state are restored by
        ``ft.checkpoint.load``).  The next ``fit_(..., resume=...)`` continues after the saved
        epoch.  All or nothing: if any part is refused (a callback's or a data iterator's
        ``load_state_dict``, the RNG states), the learner is left as it was."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(
                f"not a saved learner state (expected format {_FORMAT!r}, got "
                f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
            )
        missing = {"epoch", "progress", "cbstate", "callbacks", "data", "rng"} - set(state)
        if missing:
            raise ValueError(f"the saved learner state lacks {sorted(missing)}")
        # Decode everything before changing anything, so that a bad state changes nothing.
        cbstate = {k: from_plain(v) for k, v in state["cbstate"].items()}
        _check_rng_state(state["rng"])
        by_key = dict(self._callback_keys())
        for key in state["callbacks"]:
            if key not in by_key:
                warnings.warn(
                    f"the saved learner state has callback {key!r}, which this learner does not "
                    f"have; its state is ignored",
                    stacklevel=2,
                )
        epoch = int(state["epoch"])
        # Callbacks and data iterators check their own state as they load it: if one refuses,
        # what was loaded before it is put back from this snapshot.
        before = (self.epoch, self._resume_progress, {k: self.cbstate[k] for k in self.cbstate})
        undo: list[tuple[Any, Any]] = []
        try:
            for key, cb in by_key.items():
                if key in state["callbacks"]:
                    undo.append((cb, copy.deepcopy(cb.state_dict())))
                    cb.load_state_dict(state["callbacks"][key])
            for name, d in zip(LearnerData._fields, self.data):
                if name in state["data"] and callable(getattr(d, "load_state_dict", None)):
                    old = d.state_dict() if callable(getattr(d, "state_dict", None)) else None
                    undo.append((d, copy.deepcopy(old)))
                    d.load_state_dict(state["data"][name])
            self.epoch = epoch
            self._resume_progress = state["progress"]
            for k, v in cbstate.items():
                self.cbstate[k] = v
            _set_rng_state(state["rng"])
        except BaseException:
            for obj, old in reversed(undo):
                if old is not None:
                    obj.load_state_dict(old)
            self.epoch, self._resume_progress = before[0], before[1]
            for k, v in before[2].items():
                self.cbstate[k] = v
            raise

    def __repr__(self) -> str:
        model = type(self.model).__name__
        lossfn = getattr(self.lossfn, "__name__", type(self.lossfn).__name__)
        cbs = ", ".join(repr(cb) for cb in self.callbacks)
        data = ", ".join(_describe_data(d) for d in self.data)
        return (
            f"Learner(model={model}, lossfn={lossfn}, optimizer={self.optimizer!r}, "
            f"callbacks=[{cbs}], data=({data}))"
        )


# ---------------------------------------------------------------------------------------------
# Random number generators


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": _b64(torch.get_rng_state()),
        "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _check_rng_state(state: Any) -> None:
    """Refuse saved RNG states the generators would not take, trying each on a scratch
    generator (the global ones are not touched)."""
    try:
        torch.Generator().set_state(_unb64(state["torch"]))
        for s in state.get("cuda") or []:
            if not isinstance(s, str):
                raise TypeError("a CUDA state must be a base64 string")
            _unb64(s)
        py = state["python"]
        random.Random().setstate((py[0], tuple(py[1]), py[2]))
        npst = state["numpy"]
        np.random.RandomState().set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as e:
        raise ValueError(f"the saved learner state has malformed RNG states: {e}") from None


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))


# ---------------------------------------------------------------------------------------------
# fit_


def _resume(path: Any, learner: Learner) -> None:
    """Load model, optimiser state and learner state from the checkpoint at ``path``, all or
    nothing: ``ft.load`` checks the file, the model and the state, then loads the learner state
    first, so if that is refused nothing has changed."""
    from .. import checkpoint

    checkpoint.load(path, model=learner.model, opt_state=learner.opt_state, learner=learner)


def fit_(
    learner: Learner,
    nepochs: int,
    data: Sequence[Any] | None = None,
    *,
    resume: Any = None,
    load_fn: Callable[..., dict[str, Any]] | None = None,
) -> Learner:
    """Train for ``nepochs`` epochs, each a training then (with validation data) a validation
    epoch (FluxTraining.jl ``fit!``).  Returns the learner.

    ``data`` overrides ``learner.data`` as ``(train, valid)``.  With ``resume`` (a checkpoint
    path written by ``Checkpointer``), the model, optimiser state and learner state are loaded
    first with ``fluxtrain.checkpoint.load`` (or ``load_fn``, same signature), and the run
    continues after the last saved epoch of the interrupted ``fit_`` call: re-running the same
    ``fit_(learner, nepochs, resume=path)`` completes the planned ``nepochs``.  Resuming is all
    or nothing: with the default loader the file, the model, the optimiser state and the
    learner state are all checked before any of them changes.

    A [`CancelFittingException`][fluxtrain.learner.CancelFittingException] (``EarlyStopping``, ``StopOnNaNLoss``, or your
    own) ends fitting cleanly: ``FitEnd`` fires, ``learner.stop_reason`` holds the exception,
    and ``fit_`` returns.  Raised at an ``EpochEnd``, it ends fitting after that epoch: the
    callbacks after the one that raised it still see the ``EpochEnd`` (so ``Checkpointer``
    saves the epoch), the epoch's remaining phases are skipped, and the epoch counts in
    ``learner.epoch``; a run resumed from its checkpoint goes on with the next epoch.
    A ``CancelStepException`` raised outside a step, or a ``CancelEpochException`` raised
    outside an epoch (at ``FitBegin``/``FitEnd``), is a ``RuntimeError`` saying where it may be
    raised.  Other exceptions propagate.

    Example:
        >>> import torch, fluxtrain as ft
        >>> data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
        >>> learner = ft.Learner(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss,
        ...                      data=data, usedefaultcallbacks=False)
        >>> ft.fit_(learner, 3).epoch, learner.stop_reason
        (3, None)
    """
    if isinstance(nepochs, bool) or not isinstance(nepochs, int) or nepochs < 0:
        raise ValueError(f"nepochs must be a non-negative int, got {nepochs!r}")
    train, valid = learner.data if data is None else _data(data)
    if train is None:
        raise ValueError(
            "fit_: the learner has no training data; pass Learner(..., data=(train, valid)) "
            "or fit_(learner, n, (train, valid))"
        )
    phases: list[tuple[Any, Any]] = [(TrainingPhase(), train)]
    if valid is not None:
        phases.append((ValidationPhase(), valid))

    start, skip = 0, 0
    if resume is not None:
        if load_fn is None:
            _resume(resume, learner)
        else:
            extras = load_fn(resume, model=learner.model, opt_state=learner.opt_state)
            if "learner" not in extras:
                raise ValueError(
                    f"fit_(..., resume={resume!r}): the checkpoint has no learner state (extras: "
                    f"{sorted(extras)}); write checkpoints with ft.callbacks.Checkpointer, or "
                    f"pass learner=learner.state_dict() to ft.save"
                )
            learner.load_state_dict(extras["learner"])
        saved = learner._resume_progress
        if saved is not None:
            start, skip = int(saved["epoch"]), int(saved["phases_done"])
            if skip >= len(phases):
                start, skip = start + 1, 0
                learner.epoch += 1
    learner._resume_progress = None

    learner.stop_reason = None
    progress = FitProgress(nepochs=nepochs, epoch=start, nphases=len(phases))
    learner.progress = progress
    try:
        try:
            learner._dispatch(FitBegin(), None)
            for i in range(start, nepochs):
                progress.epoch = i
                first = skip if i == start else 0
                progress.phases_done = first
                for k in range(first, len(phases)):
                    phase, it = phases[k]
                    progress.phase_index = k
                    epoch_(learner, phase, it)
                    progress.phases_done = k + 1
                learner.epoch += 1
        except CancelFittingException as e:
            learner.stop_reason = e
            if progress.phases_done >= progress.nphases:  # cancelled at the epoch's EpochEnd
                learner.epoch += 1
        try:
            learner._dispatch(FitEnd(), None)
        except CancelFittingException as e:
            learner.stop_reason = learner.stop_reason or e
    finally:
        learner.progress = None
    return learner
