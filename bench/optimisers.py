"""Optimiser-step throughput and memory: fluxtrain's update_ against torch.optim, same run.

For each layout of float32 parameters (10 tensors of 1M; a stack of transformer-MLP blocks,
114 tensors; the 76 tensors of a 6-layer GPT-2) and each rule, one run times, interleaved
round by round on the same machine state:

* ``ft.update_`` on the ``.grad`` path (as after ``loss.backward()``);
* ``ft.update_`` with an explicit gradient tree (as from ``ft.gradient``), for Adam and Momentum;
* every mode of the torch.optim optimiser with the same maths (for-loop, foreach, fused);
* ``torch.optim.Adam(fused=True)`` on the same tensors, the yardstick of every row.

GB/s counts the bytes a step must move (Adam: read p, g, m, v and write p, m, v = 28 bytes per
float32 parameter; one-state rules 20).  Each row gives the ratio of its GB/s to fused Adam's in
the same round, as the median and the spread (min-max) over rounds.  Then the optimiser's memory
growth (peak RSS of a fresh process over setup + 3 steps, minus the model and its gradients) is
compared with fused Adam's.  Compiling happens before timing and its time is reported: one kernel
per rule structure, whatever the number of tensors.

    python bench/optimisers.py            # full run (several minutes)
    python bench/optimisers.py --quick    # small layouts, few rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import fluxtrain as ft
from fluxtrain.optimisers import compiled

sys.path.insert(0, str(Path(__file__).parent))
from _timing import best_time, machine

RULES: dict[str, Callable[[], ft.Rule]] = {
    "Adam": lambda: ft.Adam(1e-3),
    "AdamW": lambda: ft.AdamW(1e-3, lambd=0.01),
    "NAdam": lambda: ft.NAdam(1e-3),
    "AdaBelief": lambda: ft.AdaBelief(1e-3),
    "Momentum": lambda: ft.Momentum(1e-3, 0.9),
    "Nesterov": lambda: ft.Nesterov(1e-3, 0.9),
    "RMSProp": lambda: ft.RMSProp(1e-3),
    "Lion": lambda: ft.Lion(1e-4),
    "AdaGrad": lambda: ft.AdaGrad(1e-2),
}
BYTES = {"Momentum": 20, "Nesterov": 20, "RMSProp": 20, "Lion": 20, "AdaGrad": 20}

# torch.optim optimisers with the same maths (Nesterov: torch's formulation of the same method).
TORCH_PEERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw),
    "AdamW": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, **kw),
    "Momentum": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **kw),
    "Nesterov": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, **kw),
    "RMSProp": lambda ps, **kw: torch.optim.RMSprop(ps, lr=1e-3, **kw),
    "AdaGrad": lambda ps, **kw: torch.optim.Adagrad(ps, lr=1e-2, **kw),
}
FUSED = {"Adam", "AdamW", "Momentum", "Nesterov", "AdaGrad"}


def layouts(scale: float) -> dict[str, Callable[[], nn.Module]]:
    def many() -> nn.Module:
        m = nn.Module()
        n = int(1_000_000 * scale)
        m.ps = nn.ParameterList([nn.Parameter(torch.randn(n)) for _ in range(10)])
        return m

    def mlp_blocks() -> nn.Module:
        # 38 blocks of LayerNorm + Linear(w, 4w) + Linear(4w, w): 114 tensors.
        width = max(16, int(256 * scale**0.5))
        layers: list[nn.Module] = []
        for _ in range(19):
            layers += [
                nn.LayerNorm(width),
                nn.Linear(width, 4 * width),
                nn.Linear(4 * width, width),
            ]
        return nn.Sequential(*layers)

    def gpt2() -> nn.Module:
        # The parameter shapes of a 6-layer GPT-2 (76 tensors), built directly.
        d, vocab = max(32, int(512 * scale**0.5)), max(1000, int(50257 * scale))
        m = nn.Module()
        m.wte, m.wpe = nn.Embedding(vocab, d), nn.Embedding(1024, d)
        blocks = []
        for _ in range(6):
            b = nn.Module()
            b.ln_1, b.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            b.c_attn, b.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            b.c_fc, b.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            blocks.append(b)
        m.h = nn.ModuleList(blocks)
        m.ln_f = nn.LayerNorm(d)
        return m

    return {"10 x 1M": many, "MLP blocks": mlp_blocks, "GPT-2 layout": gpt2}


def fresh(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def ours(rule: str, model: nn.Module) -> Callable[[], object]:
    state = ft.setup(RULES[rule](), model)
    return lambda: ft.update_(state, model)


def ours_tree(rule: str, model: nn.Module) -> Callable[[], object]:
    state = ft.setup(RULES[rule](), model)
    # The gradient tree that ft.gradient returns (its Nodes mirror the model), holding .grad's
    # values: the gradient of sum(p * p.grad) is p.grad.
    consts = {p: p.grad.clone() for p in model.parameters()}
    grads = ft.gradient(lambda m: sum((p * consts[p]).sum() for p in m.parameters()), model)[0]
    return lambda: ft.update_(state, model, grads)


def torch_modes(rule: str, model: nn.Module) -> dict[str, Callable[[], object]]:
    make = TORCH_PEERS.get(rule)
    if make is None:
        return {}
    out = {"torch for-loop": make(list(model.parameters()), foreach=False)}
    out["torch foreach"] = make(list(model.parameters()), foreach=True)
    if rule in FUSED:
        out["torch fused"] = make(list(model.parameters()), fused=True)
    return {k: opt.step for k, opt in out.items()}


def memory_child(layout: str, impl: str, rule: str, scale: float) -> None:
    """Run in a fresh process: print the peak RSS growth of setup + 3 steps (bytes)."""

    def peak() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    if impl != "torch fused Adam":
        # Compile this rule's kernel first on a small model (host memory for generated code,
        # once per process, reported separately): the growth below is the optimiser's tensors.
        Path("/proc/self/clear_refs").write_text("5")
        before = peak()
        warm = fresh(layouts(0.01)["10 x 1M"])
        settings = compiled.configure()
        compiled.configure(min_numel=1)  # the warm-up model is small: compile it anyway
        ours(rule, warm)()
        compiled.configure(min_numel=settings["min_numel"])
        print(f"compile {peak() - before}")
    model = fresh(layouts(scale)[layout])
    # Peak RSS after the model and its gradients exist: only the optimiser's growth is counted.
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    base = peak()
    if impl == "torch fused Adam":
        step = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True).step
    else:
        step = ours(rule, model)
    for _ in range(3):
        step()
    print(peak() - base)


def memory_growth(layout: str, impl: str, rule: str, scale: float) -> tuple[int, int]:
    """(growth of setup + 3 steps, one-time growth of compiling the rule's kernel) in bytes."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", layout, impl, rule, str(scale)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    compile_bytes = next((int(x.split()[1]) for x in lines if x.startswith("compile ")), 0)
    return int(lines[-1]), compile_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small layouts, few rounds")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--layouts", default=None, help="comma-separated layout names")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "optimisers.json"))
    parser.add_argument("--memory-child", nargs=4, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-only", action="store_true", help="measure memory again into the existing --out"
    )
    args = parser.parse_args()
    if args.memory_child:
        layout, impl, rule, scale = args.memory_child
        memory_child(layout, impl, rule, float(scale))
        return
    scale = 0.1 if args.quick else 1.0
    rounds = args.rounds or (3 if args.quick else 9)
    reps = 3
    torch.set_num_threads(torch.get_num_threads())
    compiled.configure(min_numel=1 if args.quick else None)
    chosen = layouts(scale)
    if args.layouts:
        chosen = {k: v for k, v in chosen.items() if k in args.layouts.split(",")}
    rows = []
    compile_seconds = {}
    if args.memory_only:
        previous = json.loads(Path(args.out).read_text())
        rows = previous["rows"]
        compile_seconds = {tuple(k.split(" / ")): v for k, v in previous["compile_seconds"].items()}
        rounds = previous["rounds"]
        chosen = {k: v for k, v in chosen.items() if k in {r["layout"] for r in rows}}
    for case, make in chosen.items() if not args.memory_only else ():
        probe = make()
        n = sum(p.numel() for p in probe.parameters())
        ntensors = len(list(probe.parameters()))
        del probe
        print(f"\n{case}: {ntensors} tensors, {n / 1e6:.1f}M parameters")
        for rule in args.rules.split(","):
            nbytes = BYTES.get(rule, 28) * n
            impls: dict[str, Callable[[], object]] = {
                "torch fused Adam (yardstick)": torch_modes("Adam", fresh(make))["torch fused"]
            }
            t0, c0 = time.perf_counter(), compiled.compile_count()
            impls["fluxtrain .grad"] = ours(rule, fresh(make))
            impls["fluxtrain .grad"]()  # compiles, if this rule is compiled
            compile_seconds[(case, rule)] = (
                round(time.perf_counter() - t0, 1),
                compiled.compile_count() - c0,
            )
            if rule in ("Adam", "Momentum"):
                impls["fluxtrain grad tree"] = ours_tree(rule, fresh(make))
            impls.update(torch_modes(rule, fresh(make)))
            ratios: dict[str, list[float]] = {k: [] for k in impls}
            speeds: dict[str, list[float]] = {k: [] for k in impls}
            names = list(impls)
            for r in range(rounds):  # interleaved: every implementation once per round
                # in an order rotated each round: what runs right after another
                # implementation's step starts with cold caches
                turn = names[r % len(names) :] + names[: r % len(names)]
                times = {k: best_time(impls[k], reps, warmup=1) for k in turn}
                yard = 28 * n / times["torch fused Adam (yardstick)"]
                for k, t in times.items():
                    gbs = (28 * n if k.startswith("torch fused Adam") else nbytes) / t
                    speeds[k].append(gbs / 1e9)
                    ratios[k].append(gbs / yard)
            for k in impls:
                if k.startswith("torch fused Adam"):
                    continue
                r = ratios[k]
                rows.append(
                    {
                        "layout": case,
                        "tensors": ntensors,
                        "parameters": n,
                        "rule": rule,
                        "impl": k,
                        "GB/s": round(statistics.median(speeds[k]), 2),
                        "vs fused Adam": round(statistics.median(r), 3),
                        "spread": [round(min(r), 3), round(max(r), 3)],
                    }
                )
                print(
                    f"  {rule:9} {k:22} {statistics.median(speeds[k]):6.1f} GB/s  "
                    f"{statistics.median(r):5.2f}x fused Adam  ({min(r):.2f}-{max(r):.2f})"
                )
            print(f"  {rule:9} compile: {compile_seconds[(case, rule)]}")
            del impls
    memory = []
    mem_layout = "GPT-2 layout" if "GPT-2 layout" in chosen else next(iter(chosen))
    base, _ = memory_growth(mem_layout, "torch fused Adam", "Adam", scale)
    for rule in ("Adam", "Momentum", "NAdam", "Lion"):
        if rule in args.rules.split(","):
            grow, comp = memory_growth(mem_layout, "fluxtrain", rule, scale)
            memory.append({"rule": rule, "growth MiB": round(grow / 2**20, 1),
                           "vs torch fused Adam": round(grow / base, 3),
                           "compile MiB (once)": round(comp / 2**20, 1)})  # fmt: skip
    print(f"\nmemory growth of setup + 3 steps on {mem_layout} "
          f"(torch fused Adam: {base / 2**20:.1f} MiB)")  # fmt: skip
    for m in memory:
        print(f"  {m['rule']:9} {m['growth MiB']:8.1f} MiB  {m['vs torch fused Adam']:.2f}x  "
              f"(compiling, once: {m['compile MiB (once)']} MiB)")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "rounds": rounds,
                "scale": scale,
                "rows": rows,
                "compile_seconds": {f"{k[0]} / {k[1]}": v for k, v in compile_seconds.items()},
                "memory_layout": mem_layout,
                "memory_base_MiB": round(base / 2**20, 1),
                "memory": memory,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
