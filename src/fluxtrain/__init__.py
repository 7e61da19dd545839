"""fluxtrain: Flux.jl's training system (Optimisers.jl, ``train!``, FluxTraining.jl) on PyTorch.

Everything is importable from the top level::

    import fluxtrain as ft
    opt_state = ft.setup(ft.Adam(), model)

Each module below owns one concept and lists its public names in ``__all__``; this file only
gathers them.
"""

from . import tree as tree
from .gradient import *  # noqa: F403
from .optimisers import *  # noqa: F403
from .tree import KeyPath as KeyPath
from .tree import Node as Node
from .tree import fmap as fmap
from .tree import layer as layer
from .tree import trainables as trainables
from .layers import *  # noqa: F403
from .device import *  # noqa: F403
from .encoding import *  # noqa: F403
from . import losses as losses
from .data import *  # noqa: F403
from .datasets import *  # noqa: F403
from .schedules import *  # noqa: F403
from .optimisers.scheduler import *  # noqa: F403
from .train import *  # noqa: F403
from .implicit import *  # noqa: F403
from .learner import *  # noqa: F403
from . import callbacks as callbacks
from .checkpoint import *  # noqa: F403
from .sharded_checkpoint import *  # noqa: F403
from .distributed import *  # noqa: F403
from .precision import *  # noqa: F403
from .interop import *  # noqa: F403

__version__ = "0.1.0"
