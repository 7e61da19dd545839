"""Schedules: ParameterSchedulers.jl v0.4 for Python, plus plateau and warm-up helpers.

A schedule is an immutable, hashable callable ``s(t)`` over iterations ``t = 1, 2, ...`` that
also iterates as ``s(1), s(2), ...``.  Use one by hand with ``ft.adjust_`` (seed 000)::

    opt_state = ft.setup(ft.Momentum(), model)
    schedule = ft.Cos(l0=1e-4, l1=1e-2, period=10)
    for eta, epoch in zip(schedule, range(1, 101)):
        ft.adjust_(opt_state, eta)
        ...

through a [`Stateful`][fluxtrain.schedules.Stateful] and [`next_`][fluxtrain.schedules.next_], or inside the optimiser state with the
``ft.Scheduler`` rule.  ``reverse`` and ``symmetric`` are reached as ``ft.schedules.reverse``.
"""

from ._base import Schedule
from .compose import (
    ComposedSchedule,
    Constant,
    Interpolator,
    Loop,
    OneCycle,
    Sequence,
    Shifted,
    Shortened,
)
from .compose import Reversed as Reversed  # reachable as ft.schedules.<name>, not exported
from .compose import Symmetric as Symmetric
from .compose import reverse as reverse
from .compose import symmetric as symmetric
from .cyclic import Cos, CosAnneal, Sin, SinDecay2, SinExp, Triangle, TriangleDecay2, TriangleExp
from .decay import Exp, Inv, Poly, Step
from .plateau import ReduceLROnPlateau
from .plot import plot_schedule
from .stateful import Stateful, next_
from .warmup import Warmup, warmup

__all__ = [
    "ComposedSchedule",
    "Constant",
    "Cos",
    "CosAnneal",
    "Exp",
    "Interpolator",
    "Inv",
    "Loop",
    "OneCycle",
    "Poly",
    "ReduceLROnPlateau",
    "Schedule",
    "Sequence",
    "Shifted",
    "Shortened",
    "Sin",
    "SinDecay2",
    "SinExp",
    "Stateful",
    "Step",
    "Triangle",
    "TriangleDecay2",
    "TriangleExp",
    "Warmup",
    "next_",
    "plot_schedule",
    "warmup",
]
