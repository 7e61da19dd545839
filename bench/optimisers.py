"""Optimiser-step throughput: fluxtrain's update_ against torch.optim (and optax, if installed).

One run measures, on the same tensors:

* the machine's streaming limit (a large copy and a triad, bytes read + written);
* ``ft.update_`` and torch.optim (for-loop, foreach, fused where it exists) for Adam, AdamW,
  Momentum, RMSProp and Lion, on 10M float32 parameters laid out as
  (a) 10 tensors of 1M, (b) 2000 tensors of 5k, (c) a real layer mix (an MLP with LayerNorms);
* optax under ``jax.jit`` for the same rules, if jax/optax are importable.

GB/s counts the minimal traffic of a step (Adam: read p, g, m, v and write p, m, v = 28 bytes
per float32 parameter; one-state rules: 20 bytes).  The table gives GB/s, the fraction of the
streaming limit, and our ratio to the best peer; the same figures go to
bench/results/optimisers.json.

    python bench/optimisers.py            # full run (about two minutes)
    python bench/optimisers.py --quick    # 1M parameters, few repeats
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import fluxtrain as ft

sys.path.insert(0, str(Path(__file__).parent))
from _timing import best_time

BYTES = {"Adam": 28, "AdamW": 28, "Momentum": 20, "RMSProp": 20, "Lion": 20}


def streaming_limit(n: int, reps: int) -> dict[str, float]:
    a, b, c = torch.randn(n), torch.randn(n), torch.randn(n)
    copy = 8 * n / best_time(lambda: b.copy_(a), reps)
    triad = 12 * n / best_time(lambda: torch.add(a, c, alpha=2.0, out=b), reps)
    return {"copy": copy / 1e9, "triad": triad / 1e9, "limit": max(copy, triad) / 1e9}


def layouts(total: int) -> dict[str, Callable[[], nn.Module]]:
    def many(k: int) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            m = nn.Module()
            m.ps = nn.ParameterList([nn.Parameter(torch.randn(total // k)) for _ in range(k)])
            return m

        return make

    def mlp() -> nn.Module:
        # A stack of transformer-MLP-like blocks: big matrices, biases and LayerNorms.
        width = 256 if total >= 5_000_000 else 96
        per_block = 2 * 4 * width * width + 4 * width + 3 * width
        blocks = max(1, total // per_block)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [
                nn.LayerNorm(width),
                nn.Linear(width, 4 * width),
                nn.Linear(4 * width, width),
            ]
        return nn.Sequential(*layers)

    return {"a: 10 x 1M": many(10), "b: 2000 x 5k": many(2000), "c: MLP layer mix": mlp}


def ours(rule_name: str, model: nn.Module) -> Callable[[], object]:
    rule = {
        "Adam": ft.Adam(1e-3),
        "AdamW": ft.AdamW(1e-3, lambd=0.01),
        "Momentum": ft.Momentum(1e-3, 0.9),
        "RMSProp": ft.RMSProp(1e-3),
        "Lion": ft.Lion(1e-4),
    }[rule_name]
    state = ft.setup(rule, model)
    ft.update_(state, model)  # packs the buffers and attaches the .grad views
    return lambda: ft.update_(state, model)


def ours_tree(rule_name: str, model: nn.Module) -> Callable[[], object]:
    """update_ with an explicit gradient tree (as from ft.gradient): gathers into the buffer."""
    state = ft.setup(ft.Adam(1e-3) if rule_name == "Adam" else ft.Momentum(1e-3), model)
    grads = ft.tree.fmap(lambda p: torch.randn_like(p), model)
    ft.update_(state, model, grads)
    return lambda: ft.update_(state, model, grads)


def torch_peers(rule_name: str, model: nn.Module) -> dict[str, Callable[[], object]]:
    params = list(model.parameters())
    make = {
        "Adam": lambda **kw: torch.optim.Adam(params, lr=1e-3, **kw),
        "AdamW": lambda **kw: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **kw),
        "Momentum": lambda **kw: torch.optim.SGD(params, lr=1e-3, momentum=0.9, **kw),
        "RMSProp": lambda **kw: torch.optim.RMSprop(params, lr=1e-3, **kw),
    }.get(rule_name)
    if make is None:
        return {}  # torch.optim has no Lion
    out = {
        "torch for-loop": make(foreach=False),
        "torch foreach": make(foreach=True),
    }
    if rule_name in ("Adam", "AdamW", "Momentum"):
        out["torch fused"] = make(fused=True)
    return {k: opt.step for k, opt in out.items()}


def optax_peer(rule_name: str, model: nn.Module) -> Callable[[], object] | None:
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    tx = {
        "Adam": optax.adam(1e-3),
        "AdamW": optax.adamw(1e-3, weight_decay=0.01),
        "Momentum": optax.sgd(1e-3, momentum=0.9),
        "RMSProp": optax.rmsprop(1e-3),
        "Lion": optax.lion(1e-4),
    }[rule_name]
    params = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
    grads = [jnp.asarray(p.grad.numpy()) for p in model.parameters()]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    box = [params, opt_state]

    def run() -> None:
        box[0], box[1] = step(box[0], box[1], grads)
        jax.block_until_ready(box[0])

    return run


def fresh(make_model: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = make_model()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M parameters, few repeats")
    parser.add_argument("--rules", default="Adam,AdamW,Momentum,RMSProp,Lion")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "optimisers.json"))
    args = parser.parse_args()
    total = 1_000_000 if args.quick else 10_000_000
    reps = 3 if args.quick else 15
    torch.set_num_threads(torch.get_num_threads())

    limit = streaming_limit(total, reps)
    print(
        f"streaming limit: copy {limit['copy']:.1f} GB/s, triad {limit['triad']:.1f} GB/s "
        f"-> limit {limit['limit']:.1f} GB/s  ({torch.get_num_threads()} threads)"
    )
    rows = []
    for case, make_model in layouts(total).items():
        n = sum(p.numel() for p in make_model().parameters())
        ntensors = len(list(make_model().parameters()))
        for rule_name in args.rules.split(","):
            nbytes = BYTES[rule_name] * n
            impls: dict[str, Callable[[], object]] = {}
            impls["fluxtrain update_"] = ours(rule_name, fresh(make_model))
            if rule_name in ("Adam", "Momentum"):
                impls["fluxtrain update_ (grad tree)"] = ours_tree(rule_name, fresh(make_model))
            impls.update(torch_peers(rule_name, fresh(make_model)))
            peer = optax_peer(rule_name, fresh(make_model))
            if peer is not None:
                impls["optax jit"] = peer
            speeds = {k: nbytes / best_time(f, reps, warmup=2) / 1e9 for k, f in impls.items()}
            peers = {k: v for k, v in speeds.items() if not k.startswith("fluxtrain")}
            best_peer = max(peers.items(), key=lambda kv: kv[1]) if peers else (None, None)
            torch_modes = {k: v for k, v in peers.items() if k.startswith("torch")}
            best_torch = max(torch_modes.values()) if torch_modes else None
            for impl, gbs in speeds.items():
                rows.append(
                    {
                        "case": case,
                        "tensors": ntensors,
                        "parameters": n,
                        "rule": rule_name,
                        "impl": impl,
                        "GB/s": round(gbs, 2),
                        "fraction_of_limit": round(gbs / limit["limit"], 3),
                        "vs_best_peer": round(gbs / best_peer[1], 2) if best_peer[1] else None,
                        "vs_best_torch": round(gbs / best_torch, 2) if best_torch else None,
                        "best_peer": best_peer[0],
                    }
                )
    print()
    header = f"{'case':18} {'rule':9} {'implementation':30} {'GB/s':>7} {'of limit':>8} {'vs best peer':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['vs_best_peer']:.2f}x" if r["vs_best_peer"] else "-"
        print(
            f"{r['case']:18} {r['rule']:9} {r['impl']:30} {r['GB/s']:7.1f} "
            f"{r['fraction_of_limit']:8.2f} {ratio:>12}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"limit": limit, "total": total, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
