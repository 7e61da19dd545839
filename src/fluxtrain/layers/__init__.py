"""Flux's layers as ``torch.nn.Module``s, its activation functions, train/test modes and reprs.

Constructors, defaults (``glorot_uniform`` init, BatchNorm's momentum 0.1 and eps 1e-5,
``leakyrelu``'s slope 0.01...), printing and the automatic train/test mode are Flux's; tensors,
weights and parameter names are PyTorch's, so weights copy to and from ``torch.nn`` layers.
Everything listed here is importable as ``ft.<name>``; each submodule owns one concept.

Where a Python user of Flux must translate:

* **Batch first.**  ``(N, features)`` for ``Dense``, ``(N, C, H, W)`` for ``Conv`` (Flux:
  ``(W, H, C, N)``), ``(N, T, features)`` for ``RNN``/``LSTM``/``GRU``.  Channels are dimension
  1, and so is the default ``dims`` of ``softmax``/``logsoftmax``.
* **Sizes.**  Flux's ``in => out`` is written ``(in, out)`` or as two integers:
  ``Dense(784, 32, σ)``, ``Conv((3, 3), (1, 16), relu)``.
* **Weights** have PyTorch's shapes and names: ``Dense.weight`` is ``(out, in)`` as in Flux;
  ``Conv.weight`` is ``(out, in, kh, kw)`` and is applied as a cross-correlation (Flux flips
  the kernel); ``Embedding.weight`` is ``(vocab, dim)`` (Flux's transpose) and indices start at
  0; BatchNorm's γ, β, μ, σ² are ``weight``, ``bias``, ``running_mean``, ``running_var``.
* **Modes.**  Dropout and BatchNorm are active inside ``ft.gradient`` and inactive outside,
  with no ``.train()``/``.eval()`` calls; ``trainmode_``/``testmode_`` force a mode.
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
