"""fluxtrain against torch.optim's fused mode of the same rule, paired step by step.

``bench/optimisers.py`` compares every rule with fused Adam in rounds of a few steps each; on a
shared machine two copies of the same implementation differ there by several percent.  This
script answers one narrower question with many more pairs: for each rule that torch.optim also
has in a fused mode (Adam, AdamW, AdaGrad, Momentum as SGD with momentum, Nesterov), is
``ft.update_`` on the ``.grad`` path at least as fast?

Each round times one step of each side (after one untimed step), the order alternating from
round to round; each side runs on the first-made of two copies of the model for half the
rounds (where tensors lie in memory moves a step's time by a few percent here).  Printed per layout and rule: the median of the per-round ratios
(torch time / fluxtrain time, above 1 when fluxtrain is faster), its interquartile range, and the
share of rounds fluxtrain won.  The first row of each layout pairs torch's fused Adam with a
second copy of itself: the noise floor of the machine.  The "tiny" layouts (1% of the
parameters, same tensor count) measure the fixed costs of a step (Python, kernel calls).

    python bench/same_rule.py                 # all layouts, 41 rounds
    python bench/same_rule.py --rounds 11     # quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fluxtrain.optimisers import compiled

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine
from optimisers import TORCH_PEERS, fresh, layouts, ours

RULES = ("Adam", "AdamW", "AdaGrad", "Momentum", "Nesterov")


def paired(a, b, rounds: int) -> list[float]:
    """Per-round ratios time(b) / time(a), one step each, in alternating order."""
    ratios = []
    for r in range(rounds):
        times = {}
        for name, f in (("a", a), ("b", b)) if r % 2 else (("b", b), ("a", a)):
            f()
            t0 = time.perf_counter()
            f()
            times[name] = time.perf_counter() - t0
        ratios.append(times["b"] / times["a"])
    return ratios


def summary(ratios: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ratios, n=4)
    return {
        "median": round(statistics.median(ratios), 3),
        "q1": round(q[0], 3),
        "q3": round(q[2], 3),
        "won": round(sum(r >= 1 for r in ratios) / len(ratios), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "same_rule.json"))
    args = parser.parse_args()
    rows = []
    cases = [(name, make, 1.0) for name, make in layouts(1.0).items()]
    cases += [(f"{name}, tiny", make, 0.01) for name, make in layouts(0.01).items()]
    for case, make, scale in cases:
        # The tiny layouts are compiled too (below the default threshold): their step is all
        # fixed costs, which is what they are here to show.
        compiled.configure(min_numel=1 if scale < 1 else None)
        print(f"\n{case}: {sum(p.numel() for p in make().parameters()) / 1e6:.2f}M parameters")
        yard = [TORCH_PEERS["Adam"](list(fresh(make).parameters()), fused=True).step for _ in "ab"]
        noise = summary(paired(yard[0], yard[1], args.rounds))
        rows.append({"layout": case, "rule": "torch fused Adam vs itself", **noise})
        print(f"  {'noise floor':9} {noise}")
        for rule in RULES:
            # Where a model's tensors lie in memory changes its speed by a few percent (see the
            # noise floor): each side gets the first-made copy for half the rounds.
            ratios = []
            for ft_first in (True, False):
                first, second = fresh(make), fresh(make)
                ft_model, torch_model = (first, second) if ft_first else (second, first)
                ft_step = ours(rule, ft_model)
                torch_step = TORCH_PEERS[rule](list(torch_model.parameters()), fused=True).step
                ratios += paired(ft_step, torch_step, (args.rounds + ft_first) // 2)
                del ft_step, torch_step, first, second, ft_model, torch_model
            s = summary(ratios)
            rows.append({"layout": case, "rule": rule, **s})
            print(f"  {rule:9} {s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": machine(), "rounds": args.rounds, "rows": rows}, indent=2)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
