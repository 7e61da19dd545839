"""fluxtrain: Flux.jl's training system (Optimisers.jl, ``train!``, FluxTraining.jl) on PyTorch.

Everything is importable from the top level::

    import fluxtrain as ft
    opt_state = ft.setup(ft.Adam(), model)
"""

from . import tree
from .gradient import gradient, pullback, withgradient
from .optimisers import *  # noqa: F403
from .optimisers import __all__ as _optimisers_all
from .tree import KeyPath, Node, fmap, layer, trainables

__version__ = "0.1.0"

__all__ = [
    "KeyPath",
    "Node",
    "fmap",
    "gradient",
    "layer",
    "pullback",
    "trainables",
    "tree",
    "withgradient",
    *_optimisers_all,
]
