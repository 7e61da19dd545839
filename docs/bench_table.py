"""Fill the README's benchmark section from bench/results/*.json.

    .venv/bin/python docs/bench_table.py          # rewrite the section of README.md in place
    .venv/bin/python docs/bench_table.py --print  # only print it

The section lies between the ``<!-- BENCH:BEGIN -->`` and ``<!-- BENCH:END -->`` markers; the
rest of the README is left alone. Each results file gets a table and the command that made it;
a file whose layout this script does not know is listed by name so it is not silently dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def optimisers_section(d: dict[str, Any]) -> list[str]:
    """Each rule's GB/s as a fraction of torch fused Adam's on the same tensors, same run; then
    fluxtrain against the best torch.optim mode of the same rule, the gradient-tree path, the
    compile times and the memory growth."""
    layouts: list[str] = []
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for r in d["rows"]:
        if r["layout"] not in layouts:
            layouts.append(r["layout"])
        cell[(r["layout"], r["rule"], r["impl"])] = r
    rules = list(dict.fromkeys(r["rule"] for r in d["rows"]))

    def show(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        lo, hi = r["spread"]
        return f"{r['vs fused Adam']:.2f} ({lo:.2f}-{hi:.2f})"

    first = [
        [rule, *[show(cell.get((lay, rule, "fluxtrain .grad"))) for lay in layouts]]
        for rule in rules
    ]
    versus = []
    for lay in layouts:
        for rule in rules:
            ours = cell.get((lay, rule, "fluxtrain .grad"))
            modes = {k[2]: v for k, v in cell.items()
                     if k[0] == lay and k[1] == rule and k[2].startswith("torch")}  # fmt: skip
            if ours is None or not modes:
                continue
            name, best = max(modes.items(), key=lambda kv: kv[1]["vs fused Adam"])
            ratio = ours["vs fused Adam"] / best["vs fused Adam"]
            versus.append([lay, rule, f"{ours['GB/s']:.1f}", f"{best['GB/s']:.1f} ({name})",
                           f"{ratio:.2f}x"])  # fmt: skip
    tree = []
    for lay in layouts:
        for rule in rules:
            a, b = cell.get((lay, rule, "fluxtrain grad tree")), cell.get(
                (lay, rule, "fluxtrain .grad"))  # fmt: skip
            if a and b:
                tree.append([lay, rule, f"{a['vs fused Adam'] / b['vs fused Adam']:.2f}x"])
    out = [
        "Optimiser step, `python bench/optimisers.py`: each rule's GB/s (bytes a step must move) "
        "as a fraction of `torch.optim.Adam(fused=True)` on the same tensors in the same run "
        f"(median of {d['rounds']} interleaved rounds, min-max):",
        "",
        *_table(["rule", *layouts], first),
        "",
        "Against the best torch.optim mode (for-loop, foreach, fused) of the same rule:",
        "",
        *_table(["layout", "rule", "fluxtrain GB/s", "best torch GB/s", "ratio"], versus),
        "",
        "Explicit gradient tree (`update_(state, model, grads)`) against the `.grad` path: "
        + ", ".join(f"{r[0]} {r[1]} {r[2]}" for r in tree)
        + ".",
    ]
    if d.get("memory"):
        out += [
            "",
            f"Memory growth of setup + 3 steps ({d['memory_layout']}; torch fused Adam "
            f"{d['memory_base_MiB']} MiB): "
            + ", ".join(f"{m['rule']} {m['vs torch fused Adam']:.2f}x" for m in d["memory"])
            + ".",
        ]
    return out


def loop_section(d: dict[str, Any]) -> list[str]:
    """Time per training step of each loop against the hand-written torch loop."""
    rows = [[r["impl"], f"{r['us_per_step']:.0f}", f"{r['vs_torch_loop']:.2f}x"] for r in d["rows"]]
    return [
        f"Training loop, `python bench/loop.py` ({d['samples']} samples of {d['features']} "
        f"features, batch size {d['batchsize']}, {d['threads']} thread(s)):",
        "",
        *_table(["loop", "µs per step", "time vs torch loop"], rows),
    ]


def dataloader_section(d: dict[str, Any]) -> list[str]:
    """Seconds per epoch of the loaders over the same in-memory tensors."""
    rows = [
        [
            str(r["batchsize"]),
            f"{r['fluxtrain_s']:.3f}",
            f"{r['torch_dataloader_s']:.3f}",
            f"{r['raw_slicing_s']:.3f}",
            f"{r['speedup_vs_torch']:.1f}x",
        ]
        for r in d["results"]
    ]
    header = ["batch size", "ft.DataLoader s", "torch DataLoader s", "raw slicing s", "speed-up"]
    return [
        f"One shuffled epoch over {d['n']} in-memory images, `python bench/dataloader.py`:",
        "",
        *_table(header, rows),
    ]


def distributed_section(d: dict[str, Any]) -> list[str]:
    """Per-rank parameter and optimiser-state bytes under FSDP2, fluxtrain against torch.optim."""
    base = {r["optimiser"]: r["state_bytes"] for r in d["results"] if r["world"] == 1}
    rows = [
        [
            str(r["world"]),
            str(r["rank"]),
            r["optimiser"],
            f"{r['param_bytes'] / 2**20:.1f}",
            f"{r['state_bytes'] / 2**20:.1f}",
            f"{r['state_bytes'] / base[r['optimiser']]:.2f}",
            f"{r['peak_rss'] / 2**20:.0f}",
            f"{r['step_seconds'] * 1e3:.0f}",
        ]
        for r in d["results"]
    ]
    n = d["results"][0]["parameters"] / 1e6
    header = ["world", "rank", "optimiser", "params MiB/rank", "state MiB/rank",
              "state vs world 1", "peak RSS MiB", "update ms"]  # fmt: skip
    return [
        f"FSDP2 memory per rank, `python bench/distributed.py` (Adam, {n:.1f}M float32 "
        "parameters, gloo on CPU):",
        "",
        *_table(header, rows),
    ]


def same_rule_section(d: dict[str, Any]) -> list[str]:
    """fluxtrain against torch.optim's fused mode of the same rule, paired step by step."""
    layouts = list(dict.fromkeys(r["layout"] for r in d["rows"]))
    rules = list(dict.fromkeys(r["rule"] for r in d["rows"]))
    cell = {(r["layout"], r["rule"]): r for r in d["rows"]}

    def show(r: dict[str, Any] | None) -> str:
        return "-" if r is None else f"{r['median']:.2f} ({r['q1']:.2f}-{r['q3']:.2f})"

    rows = [[rule, *[show(cell.get((lay, rule))) for lay in layouts]] for rule in rules]
    return [
        "Same rule, paired step by step, `python bench/same_rule.py`: torch.optim's fused step "
        "time over fluxtrain's (above 1: fluxtrain faster), median and interquartile range of "
        f"{d['rounds']} rounds; the first row is torch's fused Adam against a copy of itself, "
        "the machine's noise floor; *tiny* layouts have 1% of the parameters, same tensor count:",
        "",
        *_table(["rule", *layouts], rows),
    ]


SECTIONS = {
    "same_rule.json": same_rule_section,
    "distributed.json": distributed_section,
    "optimisers.json": optimisers_section,
    "loop.json": loop_section,
    "dataloader.json": dataloader_section,
}


def render(results: Path = RESULTS) -> str:
    """The Markdown between the markers (without them)."""
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    if not files:
        return "No benchmark results yet: run the scripts under `bench/` (see each one's `--help`)."
    out: list[str] = []
    unknown = []
    for f in files:
        make = SECTIONS.get(f.name)
        if make is None:
            unknown.append(f.name)
            continue
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            lines = make(d)
            if d.get("quick"):
                lines[0] += " *(a `--quick` run)*"
            out += [*lines, ""]
        except (KeyError, TypeError, ValueError) as err:
            unknown.append(f"{f.name} (unreadable: {err!r})")
    if unknown:
        out.append("Other results in `bench/results/`: " + ", ".join(unknown) + ".")
    return "\n".join(out).rstrip()


def rewrite_readme(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``."""
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"README.md must contain {BEGIN} ... {END}") from None
    return f"{head}{BEGIN}\n{section}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print instead of rewriting")
    args = parser.parse_args(argv)
    section = render()
    if args.print:
        print(section)
        return
    README.write_text(rewrite_readme(README.read_text(encoding="utf-8"), section), "utf-8")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
