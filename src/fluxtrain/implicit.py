"""The implicit (Flux <= 0.13, Zygote ``Params``) style, for users porting older Flux code.

In this style the loss closes over the model and takes only data; gradients are taken with
respect to a set of parameter tensors rather than the model::

    ps = ft.params(model)
    gs = ft.gradient(lambda: loss(x, y), ps)      # Grads, indexed by tensor: gs[model.weight]
    ft.update_(rule, ps, gs)                      # the rule keeps the optimiser state itself
    ft.train_(loss, ps, data, rule, cb=ft.throttle(report, 10))

The optimiser state lives with the rule object (as it did in Flux's old ``Adam()``), keyed by
parameter identity; updates run through the same engine as the explicit style, so both give the
same numbers.  New code should prefer the explicit style (``ft.setup``/``ft.train_(loss, model,
...)``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .gradient import _backward_through_ddp, _split_output, _value
from .mode import differentiating
from .optimisers import engine
from .optimisers.rules import Rule
from .optimisers.state import Leaf
from .train import NonFiniteLossError, _arguments, _autocast, _loss_value, _Progress
from .tree import KeyPath, is_trainable_tensor, trainables

__all__ = ["Grads", "Params", "epochs", "params", "skip", "stop", "throttle"]

_log = logging.getLogger("fluxtrain")


def _short(t: torch.Tensor) -> str:
    if t.numel() > 6:
        return f"<tensor {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}>"
    return repr(t.detach())


# ---------------------------------------------------------------------------------------------
# Params and Grads


class Params:
    """An ordered set of parameter tensors, compared by identity (Zygote's ``Params``).

    Holds references to the tensors themselves, not copies: training through ``Params`` changes
    the model.  Usually made with [`params`][fluxtrain.implicit.params]; ``Params(iterable_of_tensors)`` also works.

    Example:
        >>> import torch
        >>> w = torch.ones(2)
        >>> ps = Params([w, w, torch.zeros(1)])  # the same tensor twice is one parameter
        >>> len(ps), w in ps, torch.ones(2) in ps
        (2, True, False)
    """

    def __init__(self, xs: Iterable[torch.Tensor] = ()) -> None:
        if isinstance(xs, torch.Tensor):
            raise TypeError(
                "Params takes an iterable of tensors; for a single tensor use ft.params(t) or "
                "Params([t])"
            )
        self._order: list[torch.Tensor] = []
        self._ids: set[int] = set()
        for x in xs:
            self.add(x)

    def add(self, x: torch.Tensor) -> None:
        """Add ``x`` unless this very tensor is already present (Zygote's ``push!``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Params holds tensors, got {type(x).__name__}")
        if id(x) not in self._ids:
            self._ids.add(id(x))
            self._order.append(x)

    def discard(self, x: torch.Tensor) -> None:
        """Remove ``x`` if present (Zygote's ``delete!``)."""
        if x in self:
            self._ids.discard(id(x))
            self._order = [p for p in self._order if p is not x]

    def __contains__(self, x: object) -> bool:
        return isinstance(x, torch.Tensor) and id(x) in self._ids

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._order[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return len(self) == len(other) and all(a is b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Params([" + ", ".join(_short(p) for p in self._order) + "])"

    # -- the implicit gradient (ft.gradient / withgradient / pullback dispatch here) -----------

    def _forward(self, f: Callable[[], Any]) -> tuple[Any, Any, list[torch.Tensor]]:
        # Zygote tracks every array in ``ps`` wherever ``f`` uses it.  A plain tensor (not an
        # nn.Parameter) is made to require grad while ``f`` runs, then set back.  Integer
        # tensors cannot have gradients: theirs is None, as Zygote gives ``nothing``.
        off = [
            p for p in self._order if p.is_leaf and not p.requires_grad and is_trainable_tensor(p)
        ]
        _set_requires_grad(off, True)
        try:
            with torch.enable_grad(), differentiating():
                out = f()
            loss, out = _split_output(out)
        finally:
            _set_requires_grad(off, False)
        return loss, out, off

    def _grads(
        self, loss: Any, off: list[torch.Tensor], seed: Any = None, retain: bool = False
    ) -> Grads:
        raw: list[torch.Tensor | None] = [None] * len(self._order)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            _set_requires_grad(off, True)
            try:
                where = [i for i, p in enumerate(self._order) if p.requires_grad]
                seed_t = None if seed is None else torch.as_tensor(seed, dtype=loss.dtype)
                tensors = [self._order[i] for i in where]
                if any(_is_sharded(p) for p in tensors):
                    # FSDP2's parameters are not in the graph (its forward uses gathered copies);
                    # its backward hooks write their sharded .grad: go through backward.
                    found = _backward_through_ddp(loss, tensors, seed_t, retain, restrict=False)
                else:
                    found = torch.autograd.grad(
                        loss, tensors, grad_outputs=seed_t, allow_unused=True, retain_graph=retain
                    )
            finally:
                _set_requires_grad(off, False)
            for i, g in zip(where, found):
                raw[i] = g
        return Grads(self, raw)

    def _implicit_gradient(self, f: Callable[[], Any]) -> Grads:
        loss, _, off = self._forward(f)
        return self._grads(loss, off)

    def _implicit_withgradient(self, f: Callable[[], Any]) -> tuple[Any, Grads]:
        loss, out, off = self._forward(f)
        return _value(loss, out), self._grads(loss, off)

    def _implicit_pullback(self, f: Callable[[], Any]) -> tuple[Any, Callable[[Any], Grads]]:
        loss, out, off = self._forward(f)

        def back(dy: Any = 1.0) -> Grads:
            if isinstance(dy, (int, float)) and not math.isfinite(dy):
                raise ValueError(f"pullback seed must be finite, got {dy}")
            return self._grads(loss, off, seed=dy, retain=True)

        return _value(loss, out), back

    # -- ft.update_(rule, ps, gs) and ft.train_(loss, ps, data, rule) dispatch here ------------

    def _implicit_update(self, rule: Any, grads: Any) -> tuple[Any, Params]:
        _update(rule, self, grads)
        return rule, self

    def _implicit_train(
        self,
        loss: Callable[..., Any],
        data: Iterable[Any],
        rule: Any,
        *,
        cb: Any = None,
        progress: bool | None = None,
        autocast: torch.dtype | None = None,
    ) -> list[float]:
        return _train(loss, self, data, rule, cb, progress, autocast)


def _set_requires_grad(ts: list[torch.Tensor], flag: bool) -> None:
    for t in ts:
        t.requires_grad_(flag)


class Grads:
    """Gradients from ``ft.gradient(f, ps)``, looked up by parameter: ``gs[p]`` (Zygote's ``Grads``).

    ``gs[p]`` is ``None`` when the loss did not depend on ``p``.  Iterating gives the parameters,
    as for a dict; ``items()`` gives ``(parameter, gradient)`` pairs.  ``gs1 + gs2`` and
    ``0.5 * gs`` combine gradients of the same Params (to accumulate over several batches).

    Example:
        >>> import torch, fluxtrain as ft
        >>> w = torch.tensor([1.0, 2.0])
        >>> gs = ft.gradient(lambda: (w ** 2).sum(), ft.params(w))
        >>> gs[w]
        tensor([2., 4.])
    """

    def __init__(self, params: Params, grads: list[torch.Tensor | None]) -> None:
        self.params = params
        self._by_id = {id(p): g for p, g in zip(params, grads)}

    def __getitem__(self, p: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(p, torch.Tensor) or id(p) not in self._by_id:
            what = f"a tensor of shape {tuple(p.shape)}" if isinstance(p, torch.Tensor) else p
            raise KeyError(
                f"{what!s} is not one of the {len(self.params)} parameters these gradients were "
                f"taken with respect to (look up the very tensor that is in ft.params(...))"
            )
        return self._by_id[id(p)]

    def get(self, p: torch.Tensor, default: Any = None) -> Any:
        """``gs[p]``, or ``default`` if ``p`` is not one of the parameters."""
        return self._by_id.get(id(p), default) if isinstance(p, torch.Tensor) else default

    def __contains__(self, p: object) -> bool:
        return isinstance(p, torch.Tensor) and id(p) in self._by_id

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def keys(self) -> Params:
        """The parameters."""
        return self.params

    def values(self) -> list[torch.Tensor | None]:
        """The gradients, in parameter order."""
        return [self._by_id[id(p)] for p in self.params]

    def items(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(parameter, gradient)`` pairs, in parameter order."""
        return [(p, self._by_id[id(p)]) for p in self.params]

    def __repr__(self) -> str:
        inner = ", ".join("None" if g is None else _short(g) for g in self.values())
        return f"Grads([{inner}])"

    def __add__(self, other: Grads) -> Grads:
        """Sum of two gradients of the same Params (Zygote's ``gs1 .+ gs2``), for accumulation;
        ``None`` counts as zero."""
        if not isinstance(other, Grads):
            return NotImplemented
        if other.params != self.params:
            raise ValueError("can only add Grads taken with respect to the same Params")
        out = []
        for a, b in zip(self.values(), other.values()):
            out.append(b if a is None else a if b is None else a + b)
        return Grads(self.params, out)

    def __mul__(self, k: float) -> Grads:
        """Every gradient times the number ``k`` (Zygote's ``gs .* k``)."""
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            return NotImplemented
        return Grads(self.params, [None if g is None else g * k for g in self.values()])

    __rmul__ = __mul__


def _is_sharded(p: torch.Tensor) -> bool:
    """A parameter sharded by FSDP2 (a ``DTensor``, or a Parameter holding one)."""
    data = p.data if isinstance(p, torch.nn.Parameter) else p
    return hasattr(data, "device_mesh") and hasattr(data, "to_local")


def params(*xs: Any) -> Params:
    """The trainable tensors of models, layers or arrays, as [`Params`][fluxtrain.implicit.Params] (Flux's ``params``).

    Unpacks Modules (their parameters that require grad; BatchNorm's running statistics are
    buffers, not parameters), lists, tuples, dicts, named tuples and dataclasses; keeps
    floating-point tensors; ignores numbers, functions and anything else.  The same tensor
    reached twice appears once.

    Example:
        >>> import torch
        >>> params(1, torch.tensor([2.0, 2.0]), {"alpha": torch.ones(3), "gamma": abs})
        Params([tensor([2., 2.]), tensor([1., 1., 1.])])
        >>> params(torch.nn.BatchNorm1d(2))  # only the trainable parameters
        Params([tensor([1., 1.]), tensor([0., 0.])])
    """
    ps = Params()
    for x in xs:
        for t in x if isinstance(x, Params) else trainables(x):
            ps.add(t)
    return ps


# ---------------------------------------------------------------------------------------------
# update_(rule, ps, gs): the state lives with the rule


class _ImplicitState(dict):
    """``{id(param): (param, Leaf)}`` kept on a rule object by the implicit ``update_``.

    Copies and pickles of the rule start empty: the entries are keyed by the identity of this
    session's tensors, and a saved rule (e.g. inside a checkpointed optimiser state) must not
    drag the model's parameters along.
    """

    def __reduce__(self):
        return (_ImplicitState, ())


def _rule_store(rule: Rule) -> _ImplicitState:
    # Rules are frozen dataclasses compared by value, so two equal Adam(0.1) objects must not
    # share state: the store is an attribute of this very object, keyed by parameter identity
    # (the parameter is kept in the entry, so its id cannot be reused while the entry lives).
    store = rule.__dict__.get("_implicit_state")
    if store is None:
        store = _ImplicitState()
        object.__setattr__(rule, "_implicit_state", store)
    return store


def _update(rule: Any, ps: Params, grads: Any) -> None:
    if not isinstance(rule, Rule):
        raise TypeError(
            f"the implicit update_(rule, ps, gs) needs a rule such as ft.Adam(0.1) first (it "
            f"keeps its own state), got {type(rule).__name__}; for a state from ft.setup use "
            f"ft.update_(opt_state, model, grads[0])"
        )
    if not isinstance(grads, Grads):
        raise TypeError(
            f"update_(rule, ps, gs) needs the Grads from ft.gradient(lambda: ..., ps), got "
            f"{type(grads).__name__}; an explicit gradient goes with the model: "
            f"ft.update_(ft.setup(rule, model), model, grads[0])"
        )
    todo = []
    for i, p in enumerate(ps):
        g = grads.get(p)
        if g is None:
            continue
        if not isinstance(g, torch.Tensor) or g.shape != p.shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(
                f"gradient of parameter {i} (shape {tuple(p.shape)}) has shape {got}; "
                f"nothing was updated"
            )
        todo.append((i, p, g))
    store = _rule_store(rule)
    work = []
    for i, p, g in todo:
        entry = store.get(id(p))
        if entry is None:
            with torch.no_grad():
                leaf = Leaf(rule, rule.init(p.detach()), like=(p.shape, p.dtype, p.device))
            store[id(p)] = (p, leaf)
        else:
            leaf = entry[1]
        work.append(engine.Work(leaf, p, [g], KeyPath((f"params[{i}]",))))
    engine.run(work)


# ---------------------------------------------------------------------------------------------
# train_(loss, ps, data, rule, cb=...) and its callback helpers


class _StopTraining(Exception):
    """Raised by [`stop`][fluxtrain.implicit.stop]; ends the implicit ``train_`` loop."""


class _SkipItem(Exception):
    """Raised by [`skip`][fluxtrain.implicit.skip]; abandons the current data item of the implicit ``train_``."""


def stop() -> None:
    """End the implicit-style ``train_`` from a callback (or the loss), cleanly (``Flux.stop()``).

    ``train_`` returns the losses so far; updates already made are kept.  Outside ``train_`` the
    exception it raises is not caught.

    Example:
        >>> import torch, fluxtrain as ft
        >>> w = torch.zeros(1)
        >>> data = [(torch.ones(1),)] * 10
        >>> losses = ft.train_(lambda x: (w * x - 1).pow(2).sum(), ft.params(w), data,
        ...                    ft.Descent(0.1), cb=lambda: ft.stop())
        >>> len(losses)
        1
    """
    raise _StopTraining("ft.stop() was called outside the implicit-style ft.train_ loop")


def skip() -> None:
    """Abandon the current item of the implicit-style ``train_`` (``Flux.skip()``).

    Called inside the loss, the item's gradient is dropped and nothing is updated from it (its
    loss is not recorded).  Called in a callback (which runs after the update), the remaining
    callbacks for that item are skipped.

    Example:
        >>> import torch, fluxtrain as ft
        >>> w = torch.zeros(1)
        >>> def loss(x):
        ...     if x.item() > 5:
        ...         ft.skip()  # an outlier: do not train on it
        ...     return (w - x).pow(2).sum()
        >>> data = [torch.tensor([1.0]), torch.tensor([99.0])]
        >>> ft.train_(loss, ft.params(w), data, ft.Descent(0.5)), w
        ([1.0], tensor([1.]))
    """
    raise _SkipItem("ft.skip() was called outside the implicit-style ft.train_ loop")


def _callbacks(cb: Any) -> list[Callable[[], Any]]:
    if cb is None:
        return []
    cbs = list(cb) if isinstance(cb, (list, tuple)) else [cb]
    for i, c in enumerate(cbs):
        if not callable(c):
            raise TypeError(f"callback {i} is not callable: {c!r}")
    return cbs


def _train(
    loss: Callable[..., Any],
    ps: Params,
    data: Iterable[Any],
    rule: Any,
    cb: Any,
    progress: bool | None,
    autocast: torch.dtype | None,
) -> list[float]:
    """Flux 0.13's implicit ``train!``: gradient of ``loss(*d)``, ``update_``, then callbacks."""
    if not isinstance(rule, Rule):
        raise TypeError(
            f"the implicit train_(loss, ps, data, rule) needs a rule such as ft.Adam() as its "
            f"4th argument (it keeps its own state), got {type(rule).__name__}"
        )
    cbs = _callbacks(cb)
    amp = _autocast(autocast, ps)
    bar = _Progress(data, progress, "train_")
    losses: list[float] = []
    try:
        for i, d in enumerate(data):
            args = _arguments(d)
            try:
                with amp:
                    val, gs = ps._implicit_withgradient(lambda: loss(*args))  # noqa: B023
                val = _loss_value(val)
                if not math.isfinite(val):
                    raise NonFiniteLossError(val, i)
                _update(rule, ps, gs)
                losses.append(val)
                bar.step(val)
                for c in cbs:
                    c()
            except _SkipItem:
                continue
            except _StopTraining:
                break
    finally:
        bar.close()
    return losses


class Throttled:
    """A throttled callable made by [`throttle`][fluxtrain.implicit.throttle]; [`flush`][fluxtrain.implicit.Throttled.flush] runs a pending call."""

    def __init__(
        self,
        f: Callable[..., Any],
        seconds: float,
        leading: bool = True,
        trailing: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(f):
            raise TypeError(f"throttle needs a callable, got {f!r}")
        if not seconds >= 0:
            raise ValueError(f"throttle: seconds must be >= 0, got {seconds}")
        self.f, self.seconds, self.leading, self.trailing = f, seconds, leading, trailing
        self.clock = clock
        self._cooling = False
        self._until = 0.0  # end of the current wait
        self._pending: tuple[tuple, dict] | None = None
        self._result: Any = None

    def _run(self, args: tuple, kwargs: dict) -> None:
        self._result = self.f(*args, **kwargs)

    def _catch_up(self, now: float) -> None:
        # Replays what Flux's timer task would have done by ``now``: at the end of each wait,
        # a pending call runs and starts another wait; a wait with nothing pending ends the
        # cooldown.
        while self._cooling and now >= self._until:
            if self._pending is None:
                self._cooling = False
            else:
                args, kwargs = self._pending
                self._pending = None
                self._until += self.seconds
                self._run(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        now = self.clock()
        self._catch_up(now)
        if not self._cooling:
            self._cooling = True
            self._until = now + self.seconds
            if self.leading:
                self._run(args, kwargs)
            else:
                self._pending = (args, kwargs)
        elif self.trailing:
            self._pending = (args, kwargs)
        return self._result

    def flush(self) -> Any:
        """Run a pending trailing call now, if there is one; return the latest result."""
        if self._pending is not None:
            args, kwargs = self._pending
            self._pending = None
            self._run(args, kwargs)
        return self._result

    def __repr__(self) -> str:
        return (
            f"throttle({getattr(self.f, '__name__', self.f)!s}, {self.seconds}, "
            f"leading={self.leading}, trailing={self.trailing})"
        )


def throttle(
    f: Callable[..., Any],
    seconds: float,
    leading: bool = True,
    trailing: bool = False,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Throttled:
    """Wrap ``f`` so that it runs at most once every ``seconds`` (Flux's ``throttle``).

    With ``leading=True`` the first call in a quiet period runs ``f`` at once; with
    ``trailing=True`` the last call made during the wait runs when the wait is over.  Calls that
    do not run return the result of the last call of ``f`` that did.

    There is no background timer (callbacks stay on the training thread, so ``ft.stop()`` in
    them works): a trailing call that is due runs at the next call after its time, or at
    [`Throttled.flush`][fluxtrain.implicit.Throttled.flush].  ``clock`` (seconds, default ``time.monotonic``) can be replaced in tests.

    Example:
        >>> now = [0.0]
        >>> log = throttle(print, 5, clock=lambda: now[0])
        >>> for t in range(12):
        ...     now[0] = t
        ...     _ = log("t =", t)
        t = 0
        t = 5
        t = 10
    """
    return Throttled(f, seconds, leading, trailing, clock=clock)


def epochs(n: int) -> Iterator[int]:
    """``for epoch in ft.epochs(n):`` counts 1..n, logging "Epoch i" (Flux's ``@epochs n``).

    Logs at INFO level on the ``"fluxtrain"`` logger (shown once logging is configured, e.g.
    ``logging.basicConfig(level=logging.INFO)``).

    Example:
        >>> list(epochs(3))
        [1, 2, 3]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"epochs needs a number of epochs n >= 0, got {n!r}")
    return _count_epochs(n)


def _count_epochs(n: int) -> Iterator[int]:
    for i in range(1, n + 1):
        _log.info("Epoch %d", i)
        yield i
