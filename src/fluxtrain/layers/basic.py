"""Flux's basic layers: ``Chain``, ``Dense``, ``SkipConnection``, ``Parallel``, ``Embedding``,
``flatten`` (Flux.jl ``src/layers/basic.jl``), as torch Modules with the batch dimension first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .core import (
    Layer,
    act_or_identity,
    act_suffix,
    as_module,
    check_size,
    in_out,
    match_input,
    unwrap,
)
from .init import glorot_uniform, ones32, randn32
from .modes import auto_mode
from .show import function_name, layer_line

__all__ = [
    "Bilinear",
    "Chain",
    "Dense",
    "Embedding",
    "Maxout",
    "Parallel",
    "Scale",
    "SkipConnection",
    "flatten",
]


def flatten(x: torch.Tensor) -> torch.Tensor:
    """Reshape to ``(batch, features)``, keeping the first (batch) dimension (Flux's ``flatten``
    with the batch moved first).

    Example:
        >>> import torch
        >>> flatten(torch.zeros(32, 16, 4, 4)).shape
        torch.Size([32, 256])
    """
    if x.dim() < 1:
        raise ValueError("flatten needs at least a batch dimension, got a 0-d tensor")
    return x.reshape(x.shape[0], -1)


def _call(layer: nn.Module, *args: Any) -> Any:
    auto_mode(layer)
    return layer(*args)


class _NamedLayers(Layer):
    """Named sub-layers (``Chain(enc=..., dec=...)``) readable as attributes: ``c.enc``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layers = self._modules.get("layers")
            if isinstance(layers, nn.ModuleDict) and name in layers:
                return unwrap(layers[name])
            raise


class Chain(_NamedLayers):
    """Layers applied in sequence: ``Chain(f, g, h)(x) == h(g(f(x)))`` (Flux's ``Chain``).

    Layers are given positionally, ``Chain(Dense(784, 32, σ), Dense(32, 10), softmax)``, or by
    name, ``Chain(enc=..., dec=...)``, and are kept in ``.layers`` (an ``nn.ModuleList`` or
    ``nn.ModuleDict``), so the optimiser state and gradients mirror them:
    ``ft.setup(rule, m).layers[0]``, ``.layers.enc``.  Plain functions (``softmax``, ``flatten``,
    a lambda) are allowed; a list of layers becomes a nested Chain.

    ``c[0]`` is the first layer (the function itself for a function), ``c[0:2]`` a Chain of the
    first two (sharing them), ``c.enc`` or ``c["enc"]`` a named layer; ``len(c)`` and iteration
    work as for a list.

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = ft.Chain(ft.Dense(784, 32, ft.σ), ft.Dense(32, 10), ft.softmax)
        >>> m(torch.rand(5, 784)).shape
        torch.Size([5, 10])
        >>> m[2] is ft.softmax, len(m[0:2])
        (True, 2)
        >>> m
        Chain(
          Dense(784 => 32, σ),                  # 25_120 parameters
          Dense(32 => 10),                      # 330 parameters
          softmax,
        )                   # Total: 4 arrays, 25_450 parameters, 99.414 KiB.
    """

    layers: nn.ModuleList | nn.ModuleDict

    def __init__(self, *layers: Any, **named: Any):
        super().__init__()
        if layers and named:
            raise TypeError("Chain takes either positional layers or named layers, not both")
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])  # Flux's Chain([l1, l2])
        if named:
            for k in named:
                if k == "layers" or hasattr(type(self), k):
                    raise ValueError(f"Chain: the name {k!r} is reserved, choose another")
            self.layers = nn.ModuleDict({k: as_module(v) for k, v in named.items()})
        else:
            self.layers = nn.ModuleList([as_module(v) for v in layers])

    @property
    def named(self) -> bool:
        """True when the layers have names (``Chain(enc=..., dec=...)``)."""
        return isinstance(self.layers, nn.ModuleDict)

    def _modules_list(self) -> list[nn.Module]:
        return list(self.layers.values()) if self.named else list(self.layers)

    def forward(self, x: Any) -> Any:
        # ModuleList and ModuleDict both keep their layers, in order, in _modules.
        for layer in self._modules["layers"]._modules.values():
            auto_mode(layer)
            x = layer(x)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        return (unwrap(m) for m in self._modules_list())

    def __getitem__(self, i: int | slice | str) -> Any:
        if isinstance(i, str):
            if not self.named or i not in self.layers:
                raise KeyError(f"this Chain has no layer named {i!r}; it has {self._names()}")
            return unwrap(self.layers[i])
        if isinstance(i, slice):
            if self.named:
                keys = list(self.layers.keys())[i]
                return Chain(**{k: self.layers[k] for k in keys})
            return Chain(*self._modules_list()[i])
        mods = self._modules_list()
        try:
            return unwrap(mods[i])
        except IndexError:
            raise IndexError(f"Chain index {i} out of range for a Chain of {len(mods)}") from None

    def _names(self) -> list[str]:
        return list(self.layers.keys()) if self.named else []

    def _flux_children(self) -> list[tuple[Any, Any]]:
        if self.named:
            return list(self.layers.items())
        return [(None, m) for m in self.layers]

    def _flux_line(self) -> str:
        if self.named:
            inner = ", ".join(f"{k} = {layer_line(m)}" for k, m in self.layers.items())
        else:
            inner = ", ".join(layer_line(m) for m in self.layers)
        return f"Chain({inner})"


class Dense(Layer):
    """``Dense(in, out, act=identity, bias=True, init=glorot_uniform)``: the fully connected
    layer ``y = act(x Wᵀ + b)`` on the last dimension (Flux's ``Dense``).

    Sizes as Flux's ``Dense(in => out, act)``: ``Dense(784, 32, σ)`` or ``Dense((784, 32), σ)``.
    ``weight`` has shape ``(out, in)`` (as Flux and ``nn.Linear``), ``bias`` ``(out,)``.  The
    input has the batch first: ``(N, in)``, or any ``(..., in)``, or a single ``(in,)`` vector.
    ``init`` is called as ``init(out, in)`` (default [`glorot_uniform`][fluxtrain.layers.glorot_uniform], Flux's default);
    ``bias=False`` removes the bias, a tensor sets it.  ``Dense(weight, bias=True, act)`` builds
    the layer around a given weight matrix.

    Example:
        >>> import torch, fluxtrain as ft
        >>> d = ft.Dense(784, 32, ft.σ)
        >>> d
        Dense(784 => 32, σ)  # 25_120 parameters
        >>> d.weight.shape, d(torch.rand(16, 784)).shape
        (torch.Size([32, 784]), torch.Size([16, 32]))
    """

    def __init__(
        self,
        *args: Any,
        act: Callable[..., Any] | None = None,
        bias: bool | torch.Tensor = True,
        init: Callable[..., torch.Tensor] = glorot_uniform,
    ):
        super().__init__()
        if args and isinstance(args[0], torch.Tensor):
            weight = args[0].detach().clone()
            if weight.dim() != 2:
                raise ValueError(f"Dense: the weight must be a matrix, got {tuple(weight.shape)}")
            rest = args[1:]
            if rest and isinstance(rest[0], (bool, torch.Tensor)):
                bias, rest = rest[0], rest[1:]
            out_dim, in_dim = weight.shape
        else:
            in_dim, out_dim, rest = in_out("Dense", args, "Dense(in, out, act) or Dense((in, out))")
            weight = _init_tensor(init, (out_dim, in_dim), "Dense")
        if len(rest) > 2 or (len(rest) == 2 and isinstance(args[0], torch.Tensor)):
            raise TypeError(f"Dense: too many positional arguments {args!r}")
        if rest:
            if act is not None:
                raise TypeError("Dense: activation given both positionally and as act=")
            act = rest[0]
        if len(rest) == 2:  # Dense(in, out, act, bias), the order of the signature
            bias = rest[1]
        self.act = act_or_identity(act)
        self.weight = nn.Parameter(weight)
        self.bias = _make_bias(bias, out_dim, weight, "Dense")

    def forward(self, x: Any) -> torch.Tensor:
        w = self.weight
        x = match_input(x, w, self)
        if x.dim() == 0 or x.shape[-1] != w.shape[1]:
            check_size(self, x, -1, w.shape[1], "features")
        return self.act(F.linear(x, w, self.bias))

    def _flux_line(self) -> str:
        out_dim, in_dim = self.weight.shape
        nobias = "; bias=False" if self.bias is None else ""
        return f"Dense({in_dim} => {out_dim}{act_suffix(self.act)}{nobias})"


def _init_tensor(init: Callable[..., torch.Tensor], shape: tuple[int, ...], name: str):
    w = init(*shape)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: init must return a tensor, got {type(w).__name__}")
    if tuple(w.shape) != tuple(shape):
        raise ValueError(
            f"{name}: init(*{shape}) returned shape {tuple(w.shape)}; it must return the shape "
            f"it is given"
        )
    return w.detach()


def _make_bias(
    bias: bool | torch.Tensor, n: int, like: torch.Tensor, name: str
) -> nn.Parameter | None:
    if bias is False or bias is None:
        return None
    if bias is True:
        return nn.Parameter(torch.zeros(n, dtype=like.dtype, device=like.device))
    if isinstance(bias, torch.Tensor):
        if tuple(bias.shape) != (n,):
            raise ValueError(f"{name}: bias must have shape ({n},), got {tuple(bias.shape)}")
        return nn.Parameter(bias.detach().clone().to(like.dtype))
    raise TypeError(f"{name}: bias must be True, False or a tensor, got {bias!r}")


class SkipConnection(Layer):
    """``connection(layer(x), x)``: a residual block when ``connection`` is ``+`` (Flux's
    ``SkipConnection``).  Use ``operator.add`` (prints as ``+``) or any function of two inputs,
    e.g. ``lambda mx, x: torch.cat((mx, x), dim=1)`` to concatenate channels.

    Example:
        >>> import operator, torch, fluxtrain as ft
        >>> s = ft.SkipConnection(ft.Dense(3, 3), operator.add)
        >>> s(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, layer: Any, connection: Callable[..., Any]):
        super().__init__()
        if not callable(connection):
            raise TypeError(f"SkipConnection: connection must be a function, got {connection!r}")
        self.layers = as_module(layer)
        self.connection = connection

    def forward(self, x: Any) -> Any:
        return self.connection(_call(self.layers, x), x)

    def _flux_children(self) -> list[tuple[Any, Any]]:
        return [(None, self.layers), (None, self.connection)]

    def _flux_line(self) -> str:
        return f"SkipConnection({layer_line(self.layers)}, {function_name(self.connection)})"


class Parallel(_NamedLayers):
    """Apply several layers to the same input, or each to its own input, and combine the
    results with ``connection`` (Flux's ``Parallel``).

    ``Parallel(connection, l1, l2)(x) == connection(l1(x), l2(x))``;
    ``Parallel(connection, l1, l2)(x1, x2) == connection(l1(x1), l2(x2))`` (also for a tuple
    ``(x1, x2)``); with a single layer and several inputs, that layer is applied to each.
    ``connection=None`` returns the tuple of results.  Layers may be named:
    ``Parallel(connection, a=..., b=...)``, reached as ``p.a`` or ``p["a"]``; they live in
    ``.layers``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> cat = lambda *ys: torch.cat(ys, dim=1)
        >>> p = ft.Parallel(cat, ft.Dense(2, 3), ft.Dense(2, 4))
        >>> p(torch.ones(5, 2)).shape
        torch.Size([5, 7])
    """

    def __init__(self, connection: Callable[..., Any] | None, *layers: Any, **named: Any):
        super().__init__()
        if connection is not None and not callable(connection):
            raise TypeError(f"Parallel: connection must be a function or None, got {connection!r}")
        if layers and named:
            raise TypeError("Parallel takes either positional layers or named layers, not both")
        if not layers and not named:
            raise ValueError("Parallel needs at least one layer")
        self.connection = connection
        if named:
            for k in named:
                if k in ("layers", "connection") or hasattr(type(self), k):
                    raise ValueError(f"Parallel: the name {k!r} is reserved, choose another")
            self.layers = nn.ModuleDict({k: as_module(v) for k, v in named.items()})
        else:
            self.layers = nn.ModuleList([as_module(v) for v in layers])

    def _modules_list(self) -> list[nn.Module]:
        if isinstance(self.layers, nn.ModuleDict):
            return list(self.layers.values())
        return list(self.layers)

    def forward(self, *xs: Any) -> Any:
        if len(xs) == 1 and isinstance(xs[0], tuple):
            xs = xs[0]
        mods = self._modules_list()
        if len(xs) == 1:
            ys = tuple(_call(m, xs[0]) for m in mods)
        elif len(mods) == 1:
            ys = tuple(_call(mods[0], x) for x in xs)
        elif len(mods) == len(xs):
            ys = tuple(_call(m, x) for m, x in zip(mods, xs))
        else:
            raise ValueError(
                f"Parallel with {len(mods)} layers got {len(xs)} inputs; give one input, one "
                f"per layer, or use a single layer"
            )
        if self.connection is None:
            return ys
        return self.connection(*ys)

    def __getitem__(self, i: int | str) -> Any:
        return unwrap(self.layers[i])

    def __len__(self) -> int:
        return len(self.layers)

    def _flux_children(self) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = [(None, self.connection)]
        if isinstance(self.layers, nn.ModuleDict):
            out.extend(self.layers.items())
        else:
            out.extend((None, m) for m in self.layers)
        return out

    def _flux_line(self) -> str:
        conn = "None" if self.connection is None else function_name(self.connection)
        if isinstance(self.layers, nn.ModuleDict):
            inner = ", ".join(f"{k} = {layer_line(m)}" for k, m in self.layers.items())
        else:
            inner = ", ".join(layer_line(m) for m in self.layers)
        return f"Parallel({conn}, {inner})"


class Embedding(Layer):
    """A lookup table: ``Embedding(in, out)`` maps integer indices ``0..in-1`` to vectors of
    length ``out`` (Flux's ``Embedding(in => out)``, with Python's 0-based indices).

    ``weight`` has shape ``(in, out)`` as in ``nn.Embedding`` (Flux stores its transpose), so
    ``m(idx)`` has shape ``(*idx.shape, out)``.  A floating input of shape ``(..., in)`` (one-hot
    rows, as from ``ft.onehot``) is multiplied by the table instead.  Default init: standard
    normal (Flux's ``randn32``).

    Example:
        >>> import torch, fluxtrain as ft
        >>> e = ft.Embedding(26, 5)
        >>> e(torch.tensor([[0, 3], [25, 1]])).shape
        torch.Size([2, 2, 5])
    """

    def __init__(self, *args: Any, init: Callable[..., torch.Tensor] = randn32):
        super().__init__()
        n_in, n_out, rest = in_out("Embedding", args, "Embedding(in, out) or Embedding((in, out))")
        if rest:
            raise TypeError(f"Embedding: unexpected arguments {rest!r}")
        self.weight = nn.Parameter(_init_tensor(init, (n_in, n_out), "Embedding"))

    def forward(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.is_floating_point():
            x = match_input(x, self.weight, self)
            check_size(self, x, -1, self.weight.shape[0], "classes (one-hot)")
            return x @ self.weight
        try:
            return F.embedding(x.to(self.weight.device), self.weight)
        except IndexError:
            raise IndexError(
                f"{self._flux_line()} got an index outside 0..{self.weight.shape[0] - 1} "
                f"(min {int(x.min())}, max {int(x.max())})"
            ) from None

    def _flux_line(self) -> str:
        return f"Embedding({self.weight.shape[0]} => {self.weight.shape[1]})"


class Scale(Layer):
    """Elementwise affine map, ``y = act(scale ⊙ x + bias)``, with ``scale`` and ``bias`` of
    shape ``size`` broadcast over the leading (batch) dimensions (Flux's ``Scale``).

    ``Scale(3)``, ``Scale(2, 3, relu)``, ``Scale(3, bias=False, init=ft.ones32)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> s = ft.Scale(2)
        >>> s
        Scale(2)            # 4 parameters
        >>> s(torch.ones(4, 2)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        *size_act: Any,
        bias: bool = True,
        init: Callable[..., torch.Tensor] = ones32,
    ):
        super().__init__()
        args = list(size_act)
        act = args.pop() if args and callable(args[-1]) else None
        if not args or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ValueError(f"Scale needs integer sizes, e.g. Scale(3), got {size_act!r}")
        self.size = tuple(args)
        self.act = act_or_identity(act)
        self.scale = nn.Parameter(_init_tensor(init, self.size, "Scale"))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.size, dtype=self.scale.dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Any) -> torch.Tensor:
        x = match_input(x, self.scale, self)
        n = len(self.size)
        if tuple(x.shape[x.dim() - n :]) != self.size:
            raise ValueError(
                f"{self._flux_line()} expects input whose last dimensions are {self.size}, got "
                f"shape {tuple(x.shape)}"
            )
        y = x * self.scale
        if self.bias is not None:
            y = y + self.bias
        return self.act(y)

    def _flux_line(self) -> str:
        nobias = "; bias=False" if self.bias is None else ""
        return f"Scale({', '.join(map(str, self.size))}{act_suffix(self.act)}{nobias})"


class Maxout(Layer):
    """The elementwise maximum of several layers applied to the same input (Goodfellow et al.
    2013, arXiv:1302.4389; Flux's ``Maxout``).

    ``Maxout(l1, l2, ...)`` or ``Maxout(make_layer, n)`` calling ``make_layer()`` ``n`` times.

    Example:
        >>> import torch, fluxtrain as ft
        >>> m = ft.Maxout(lambda: ft.Dense(3, 2), 4)
        >>> len(m.layers), m(torch.ones(5, 3)).shape
        (4, torch.Size([5, 2]))
    """

    def __init__(self, *layers: Any):
        super().__init__()
        if len(layers) == 2 and callable(layers[0]) and isinstance(layers[1], int):
            make, n = layers
            if not isinstance(make, nn.Module):
                layers = tuple(make() for _ in range(n))
        if not layers:
            raise ValueError("Maxout needs at least one layer")
        self.layers = nn.ModuleList([as_module(v) for v in layers])

    def forward(self, x: Any) -> Any:
        out = None
        for layer in self.layers:
            y = _call(layer, x)
            out = y if out is None else torch.maximum(out, y)
        return out

    def _flux_children(self) -> list[tuple[Any, Any]]:
        return [(None, m) for m in self.layers]

    def _flux_line(self) -> str:
        return f"Maxout({', '.join(layer_line(m) for m in self.layers)})"


class Bilinear(Layer):
    """Bilinear map of two inputs, ``z_k = act(x W_k yᵀ + b_k)`` (Flux's
    ``Bilinear((in1, in2) => out, σ)``), written ``Bilinear((in1, in2), out, act)``.

    ``weight`` has shape ``(out, in1, in2)`` as in ``nn.Bilinear``; drawn with
    ``init(out, in1, in2)``.  Called as ``m(x, y)``, ``m((x, y))``, or ``m(x)`` for ``m(x, x)``;
    ``x`` is ``(N, in1)``, ``y`` ``(N, in2)``.

    Example:
        >>> import torch, fluxtrain as ft
        >>> ft.Bilinear((4, 5), 3)(torch.rand(2, 4), torch.rand(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        ins: tuple[int, int] | int,
        out: int,
        act: Callable[..., Any] | None = None,
        *,
        bias: bool | torch.Tensor = True,
        init: Callable[..., torch.Tensor] = glorot_uniform,
    ):
        super().__init__()
        in1, in2 = (ins, ins) if isinstance(ins, int) else tuple(ins)
        for v in (in1, in2, out):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Bilinear: sizes must be positive integers, got {ins!r}, {out!r}")
        self.act = act_or_identity(act)
        weight = _init_tensor(init, (out, in1, in2), "Bilinear")
        self.weight = nn.Parameter(weight)
        self.bias = _make_bias(bias, out, weight, "Bilinear")

    def forward(self, x: Any, y: Any = None) -> torch.Tensor:
        if y is None:
            x, y = x if isinstance(x, tuple) else (x, x)
        x = match_input(x, self.weight, self)
        y = match_input(y, self.weight, self)
        check_size(self, x, -1, self.weight.shape[1], "features (first input)")
        check_size(self, y, -1, self.weight.shape[2], "features (second input)")
        return self.act(F.bilinear(x, y, self.weight, self.bias))

    def _flux_line(self) -> str:
        out, in1, in2 = self.weight.shape
        nobias = "; bias=False" if self.bias is None else ""
        return f"Bilinear(({in1}, {in2}) => {out}{act_suffix(self.act)}{nobias})"
