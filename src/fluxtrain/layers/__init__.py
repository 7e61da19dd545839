"""Flux's layers as ``torch.nn.Module``s, its activation functions, train/test modes and reprs.

Tensors are in PyTorch's layout, batch first: ``(N, features)`` for ``Dense``,
``(N, C, H, W)`` for ``Conv``, ``(N, T, features)`` for recurrent layers.  Each submodule owns one
concept; everything listed here is importable as ``ft.<name>``.
"""

from .activations import *  # noqa: F403
from .activations import __all__ as _activations
from .basic import *  # noqa: F403
from .basic import __all__ as _basic
from .conv import *  # noqa: F403
from .conv import __all__ as _conv
from .dropout import *  # noqa: F403
from .dropout import __all__ as _dropout
from .init import *  # noqa: F403
from .init import __all__ as _init
from .modes import *  # noqa: F403
from .modes import __all__ as _modes
from .normalise import *  # noqa: F403
from .normalise import __all__ as _normalise
from .recurrent import *  # noqa: F403
from .recurrent import __all__ as _recurrent
from .show import *  # noqa: F403
from .show import __all__ as _show
from .upsample import *  # noqa: F403
from .upsample import __all__ as _upsample

__all__ = [
    *_activations,
    *_basic,
    *_conv,
    *_dropout,
    *_init,
    *_modes,
    *_normalise,
    *_recurrent,
    *_show,
    *_upsample,
]
