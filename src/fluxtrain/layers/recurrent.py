"""Recurrent cells and sequence layers (Flux 0.16, Flux.jl ``src/layers/recurrent.jl``).

A *cell* does one time step: ``RNNCell`` and ``GRUCell`` map ``(x, h)`` to the new ``h``,
``LSTMCell`` maps ``(x, (h, c))`` to ``(h, c)``; the state defaults to zeros.  The sequence
layers ``RNN``, ``LSTM``, ``GRU`` run their cell over a sequence and return every hidden state,
with torch's fused kernels (as fast as ``nn.LSTM``; cuDNN on GPU); ``Recurrence(cell)`` runs any
cell step by step.

Layout, batch first as in ``torch.nn.RNN(batch_first=True)``: a step takes ``x`` of shape
``(N, in)`` (or ``(in,)``), the sequence layers take ``(N, T, in)`` (or ``(T, in)``) and return
``(N, T, out)``.  Parameters are Flux's: ``Wi`` ``(k out, in)``, ``Wh`` ``(k out, out)`` and one
``bias`` ``(k out,)``, with gates stacked in PyTorch's order (LSTM: input, forget, cell, output;
GRU: reset, update, new).  Flux's GRU (v1 of Cho et al.) has no recurrent bias inside the reset
gate: ``h̃ = tanh(Wi_n x + r ⊙ (Wh_n h) + b_n)``; PyTorch's GRU equals it with ``bias_hh = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import show
from .activations import relu, tanh
from .basic import _init_tensor
from .core import Layer, act_or_identity, act_suffix, check_size, in_out, match_input
from .init import glorot_uniform

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell", "Recurrence"]

Tensor = torch.Tensor


class _Cell(Layer):
    _gates = 1
    _extra_args = 0  # positional arguments a cell takes after (in, out), e.g. RNNCell's act

    def __init__(
        self,
        *args: Any,
        init_kernel: Callable[..., Tensor] = glorot_uniform,
        init_recurrent_kernel: Callable[..., Tensor] = glorot_uniform,
        bias: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        n_in, n_out, rest = in_out(name, args, f"{name}(in, out) or {name}((in, out))")
        if len(rest) > self._extra_args:
            raise TypeError(f"{name}: unexpected arguments {rest[self._extra_args :]!r}")
        self._rest = rest  # the subclass reads its activation from what is left
        g = self._gates
        self.Wi = nn.Parameter(_init_tensor(init_kernel, (g * n_out, n_in), name))
        self.Wh = nn.Parameter(_init_tensor(init_recurrent_kernel, (g * n_out, n_out), name))
        if bias:
            self.bias = nn.Parameter(torch.zeros(g * n_out, dtype=self.Wi.dtype))
        else:
            self.register_parameter("bias", None)

    @property
    def out_features(self) -> int:
        """The size of the hidden state."""
        return self.Wh.shape[1]

    def input_projection(self, x: Any) -> Tensor:
        """``x Wiᵀ + bias`` for any leading dimensions (all time steps at once)."""
        x = match_input(x, self.Wi, self)
        check_size(self, x, -1, self.Wi.shape[1], "features")
        return F.linear(x, self.Wi, self.bias)

    def zero_state(self, gx: Tensor) -> Tensor:
        """A zero hidden state matching the leading (batch) dimensions of ``gx``."""
        return gx.new_zeros((*gx.shape[:-1], self.out_features))

    def _flux_line(self) -> str:
        return f"{type(self).__name__}({self.Wi.shape[1]} => {self.out_features})"


class RNNCell(_Cell):
    """One step of a vanilla RNN: ``h' = act(Wi x + Wh h + b)``, ``act=tanh`` by default
    (Flux's ``RNNCell(in => out, σ)``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> cell = ft.RNNCell(3, 5)
        >>> cell(torch.rand(4, 3)).shape
        torch.Size([4, 5])
    """

    _extra_args = 1

    def __init__(
        self,
        *args: Any,
        init_kernel: Callable[..., Tensor] = glorot_uniform,
        init_recurrent_kernel: Callable[..., Tensor] = glorot_uniform,
        bias: bool = True,
    ):
        super().__init__(
            *args, init_kernel=init_kernel, init_recurrent_kernel=init_recurrent_kernel, bias=bias
        )
        self.act = act_or_identity(self._rest[0]) if self._rest else tanh

    def step(self, gx: Tensor, h: Tensor) -> Tensor:
        """The new state from the input projection ``gx = Wi x + b`` and the state ``h``."""
        return self.act(gx + F.linear(h, self.Wh))

    def forward(self, x: Any, h: Tensor | None = None) -> Tensor:
        gx = self.input_projection(x)
        return self.step(gx, self.zero_state(gx) if h is None else h)

    def _flux_line(self) -> str:
        return super()._flux_line()[:-1] + act_suffix(self.act, tanh) + ")"


class LSTMCell(_Cell):
    """One step of an LSTM (Hochreiter & Schmidhuber 1997), Flux's ``LSTMCell(in => out)``::

        i, f, g, o = chunks of (Wi x + Wh h + b)
        c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
        h' = σ(o) ⊙ tanh(c')

    Called as ``cell(x, (h, c))`` (zeros when omitted); returns ``(h', c')``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> h, c = ft.LSTMCell(3, 5)(torch.rand(4, 3))
        >>> h.shape, c.shape
        (torch.Size([4, 5]), torch.Size([4, 5]))
    """

    _gates = 4

    def step(self, gx: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(h', c')`` from the input projection ``gx = Wi x + b`` and the state ``(h, c)``."""
        h, c = state
        i, f, g, o = (gx + F.linear(h, self.Wh)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: Any, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        gx = self.input_projection(x)
        if state is None:
            z = self.zero_state(gx)
            state = (z, z)
        return self.step(gx, state)


class GRUCell(_Cell):
    """One step of a GRU (Cho et al. 2014, v1), Flux's ``GRUCell(in => out)``::

        r = σ(Wi_r x + Wh_r h + b_r)
        z = σ(Wi_z x + Wh_z h + b_z)
        h̃ = tanh(Wi_n x + r ⊙ (Wh_n h) + b_n)
        h' = (1 - z) ⊙ h̃ + z ⊙ h

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.GRUCell(3, 5)(torch.rand(4, 3)).shape
        torch.Size([4, 5])
    """

    _gates = 3

    def step(self, gx: Tensor, h: Tensor) -> Tensor:
        """The new state from the input projection ``gx = Wi x + b`` and the state ``h``."""
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = F.linear(h, self.Wh).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h

    def forward(self, x: Any, h: Tensor | None = None) -> Tensor:
        gx = self.input_projection(x)
        return self.step(gx, self.zero_state(gx) if h is None else h)


class Recurrence(Layer):
    """Run a cell over a sequence (Flux's ``Recurrence``): ``Recurrence(cell)(x, state)``
    applies ``cell`` at each time step of ``x`` (shape ``(N, T, in)``, or ``(T, in)``) and
    returns every output, ``(N, T, out)``.  With ``return_state=True`` it returns
    ``(outputs, final_state)``.

    The cell is one of fluxtrain's (its input projection is then done for all steps in one
    matrix product) or any module called as ``cell(x_t, state) -> state`` (``cell(x_t)`` on the
    first step when no state is given), whose output is the state or its first element.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ys, (h, c) = ft.Recurrence(ft.LSTMCell(2, 3), return_state=True)(torch.rand(5, 4, 2))
        >>> ys.shape, h.shape
        (torch.Size([5, 4, 3]), torch.Size([5, 3]))
    """

    def __init__(self, cell: nn.Module, return_state: bool = False):
        super().__init__()
        if not isinstance(cell, nn.Module):
            raise TypeError(f"Recurrence needs a cell module such as RNNCell, got {cell!r}")
        self.cell = cell
        self.return_state = bool(return_state)

    def forward(self, x: Any, state: Any = None) -> Any:
        """All outputs for the sequence ``x`` (and the final state if ``return_state``)."""
        if isinstance(self.cell, _Cell):
            gx = self.cell.input_projection(x)  # one matmul for every time step
            steps, step = gx, self.cell.step
            if state is None and gx.dim() in (2, 3):
                z = self.cell.zero_state(gx.select(gx.dim() - 2, 0))
                state = (z, z) if isinstance(self.cell, LSTMCell) else z
        else:
            steps = x if isinstance(x, Tensor) else torch.as_tensor(x)

            def step(x_t: Tensor, st: Any) -> Any:
                return self.cell(x_t) if st is None else self.cell(x_t, st)

        if steps.dim() not in (2, 3):
            raise ValueError(
                f"{self._flux_line()} expects a sequence of shape (N, T, in) or (T, in), got "
                f"input of shape {tuple(x.shape) if isinstance(x, Tensor) else '?'}"
            )
        tdim = steps.dim() - 2
        outs = []
        for s_t in steps.unbind(tdim):
            state = step(s_t, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        ys = torch.stack(outs, dim=tdim)
        return (ys, state) if self.return_state else ys

    def _flux_line(self) -> str:
        extra = ", return_state=True" if self.return_state else ""
        return f"Recurrence({show.layer_line(self.cell)}{extra})"


def _fused_kernel(cell: _Cell) -> Callable[..., Any] | None:
    """torch's fused multi-step kernel computing exactly ``cell``'s recurrence, if there is one.

    With torch's recurrent bias set to zero, its RNN (tanh or relu), LSTM and GRU compute Flux's
    cells (for the GRU: Flux's v1 variant, the reset gate multiplying ``Wh_n h`` only).  The
    kernels live in ``torch._VF`` (what ``nn.LSTM`` calls; cuDNN on GPU); without them, or for
    another activation, the sequence is run step by step.
    """
    vf = getattr(torch, "_VF", None)
    if vf is None:
        return None
    if isinstance(cell, LSTMCell):
        return getattr(vf, "lstm", None)
    if isinstance(cell, GRUCell):
        return getattr(vf, "gru", None)
    if isinstance(cell, RNNCell):
        if cell.act is tanh or cell.act is torch.tanh:
            return getattr(vf, "rnn_tanh", None)
        if cell.act is relu or cell.act is torch.relu:
            return getattr(vf, "rnn_relu", None)
    return None


class _Sequence(Recurrence):
    _cell_type: type[_Cell] = RNNCell

    def __init__(self, *args: Any, return_state: bool = False, **cell_kwargs: Any):
        super().__init__(self._cell_type(*args, **cell_kwargs), return_state)

    def forward(self, x: Any, state: Any = None) -> Any:
        """All hidden states for the sequence ``x`` (and the final state if ``return_state``)."""
        cell = self.cell
        kernel = _fused_kernel(cell)
        if kernel is None:
            return super().forward(x, state)
        x = match_input(x, cell.Wi, cell)
        check_size(cell, x, -1, cell.Wi.shape[1], "features")
        if x.dim() not in (2, 3):
            raise ValueError(
                f"{self._flux_line()} expects a sequence of shape (N, T, in) or (T, in), got "
                f"input of shape {tuple(x.shape)}"
            )
        batched = x.dim() == 3
        xb = x if batched else x.unsqueeze(0)
        lstm = isinstance(cell, LSTMCell)
        if state is None:
            z = xb.new_zeros((1, xb.shape[0], cell.out_features))
            hx: Any = (z, z) if lstm else z
        elif lstm:
            hx = tuple(_layer_first(t, batched) for t in state)
        else:
            hx = _layer_first(state, batched)
        weights = [cell.Wi, cell.Wh]
        if cell.bias is not None:
            weights += [cell.bias, torch.zeros_like(cell.bias)]  # no recurrent bias in Flux
        out = kernel(xb, hx, weights, cell.bias is not None, 1, 0.0, False, False, True)
        ys = out[0] if batched else out[0][0]
        if not self.return_state:
            return ys
        final = tuple(_unlayer(t, batched) for t in out[1:])
        return ys, (final if lstm else final[0])

    def _flux_line(self) -> str:
        line = type(self).__name__ + self.cell._flux_line()[len(type(self.cell).__name__) :]
        return line[:-1] + ", return_state=True)" if self.return_state else line


def _layer_first(h: Tensor, batched: bool) -> Tensor:
    # torch's kernels take states as (layers, N, out); ours are (N, out), or (out,) unbatched.
    return h.unsqueeze(0) if batched else h.reshape(1, 1, -1)


def _unlayer(h: Tensor, batched: bool) -> Tensor:
    return h[0] if batched else h[0, 0]


class RNN(_Sequence):
    """A vanilla RNN over a sequence: ``RNN(in, out, act=tanh)`` runs [`RNNCell`][fluxtrain.layers.RNNCell] over
    ``x`` of shape ``(N, T, in)`` and returns every hidden state, ``(N, T, out)``.  ``m(x, h0)``
    starts from ``h0`` (default zeros); ``return_state=True`` also returns the last state.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.RNN(2, 3)(torch.rand(5, 4, 2)).shape
        torch.Size([5, 4, 3])
    """

    _cell_type = RNNCell


class LSTM(_Sequence):
    """An LSTM over a sequence: runs [`LSTMCell`][fluxtrain.layers.LSTMCell] over ``(N, T, in)`` and returns every
    hidden state ``h``, ``(N, T, out)``; ``m(x, (h0, c0))`` sets the initial state.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.LSTM(2, 3)(torch.rand(5, 4, 2)).shape
        torch.Size([5, 4, 3])
    """

    _cell_type = LSTMCell


class GRU(_Sequence):
    """A GRU over a sequence: runs [`GRUCell`][fluxtrain.layers.GRUCell] over ``(N, T, in)`` and returns every
    hidden state, ``(N, T, out)``; ``m(x, h0)`` sets the initial state.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.GRU(2, 3)(torch.rand(5, 4, 2)).shape
        torch.Size([5, 4, 3])
    """

    _cell_type = GRUCell
