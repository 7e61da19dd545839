"""The callback base class: react to events, declare the learner state you read and write.

A callback subclasses [`Callback`][fluxtrain.learner.Callback] and implements ``on(event, phase, learner)``
(FluxTraining.jl's ``on(event, phase, callback, learner)``, ``src/callbacks/callback.jl``).  It
declares, as dotted paths into the learner, what it reads and writes:

.. code-block:: python

    class PrintLoss(ft.Callback):
        reads = ("step.loss",)
        handles = (ft.StepEnd,)          # optional: the events it wants (faster dispatch)

        def on(self, event, phase, learner):
            print(float(learner.step.loss))

The learner derives the order in which callbacks run from these declarations (writers of a path
run before its readers; ``runafter``/``runbefore`` add explicit constraints), refuses two writers
of the same state that have no order between them, and hands each callback a guarded view of
itself in which an undeclared access raises [`ProtectedAccessError`][fluxtrain.learner.ProtectedAccessError]
(FluxTraining.jl's ``stateaccess`` and ``Protected``, ``src/callbacks/protect.jl``).

Paths: ``"model"``, ``"opt_state"``, ``"optimizer"``, ``"lossfn"``, ``"data"``, ``"step"``,
``"step.loss"`` (``step.xs``, ``step.ys``, ``step.ys_pred``, ``step.grads``, ...),
``"cbstate.history"`` (any entry of ``learner.cbstate``), ``"callbacks"``, ``"epoch"``,
``"progress"``, ``"epoch_length"``, and ``"*"`` for everything.  Writing implies reading.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .events import Event

__all__ = ["Callback"]


class Callback:
    """Base class of callbacks.

    Class (or instance) attributes:

    - ``reads``, ``writes``: dotted paths of learner state accessed (see the module docs).
    - ``runafter``, ``runbefore``: callback classes this one must run after / before.
    - ``handles``: the event classes [`on`][fluxtrain.learner.Callback.on] wants, or ``None`` for every event.

    Methods to override: [`on`][fluxtrain.learner.Callback.on]; optionally [`init`][fluxtrain.learner.Callback.init] (called once when the callback is
    added to a learner) and [`state_dict`][fluxtrain.learner.Callback.state_dict]/[`load_state_dict`][fluxtrain.learner.Callback.load_state_dict] (what a checkpoint must
    keep to resume).

    Example:
        >>> import fluxtrain as ft
        >>> class CountSteps(ft.Callback):
        ...     handles = (ft.StepEnd,)
        ...     def __init__(self):
        ...         self.n = 0
        ...     def on(self, event, phase, learner):
        ...         self.n += 1
        >>> CountSteps()
        CountSteps()
    """

    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    runafter: ClassVar[tuple[type, ...]] = ()
    runbefore: ClassVar[tuple[type, ...]] = ()
    handles: ClassVar[tuple[type[Event], ...] | None] = None

    def on(self, event: Event, phase: Any, learner: Any) -> None:
        """React to ``event`` during ``phase`` (``None`` for ``FitBegin``/``FitEnd``).

        ``learner`` is a guarded view of the learner: only declared state is reachable.
        Raise [`CancelStepException`][fluxtrain.learner.CancelStepException] & co. to change the control flow.
        """

    def init(self, learner: Any) -> None:
        """Called once when the callback joins a learner (guarded view), e.g. to create the
        ``cbstate`` entries it writes."""

    def state_dict(self) -> dict[str, Any]:
        """The callback's own state that a resumed run needs (plain data); ``{}`` by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`state_dict`][fluxtrain.learner.Callback.state_dict] returned."""

    def is_a(self, cls: type) -> bool:
        """Whether this callback is (or wraps) an instance of ``cls``; used for ``runafter``."""
        return isinstance(self, cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
