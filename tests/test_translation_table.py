"""The translation table (docs/translation.md) covers every Julia name the seeds mention.

tests/seed_names.txt was extracted from the five seed documents once and is kept in the
repository; this test does not re-read the seeds, so the list is a fixed contract.
"""

from __future__ import annotations

import re
from pathlib import Path

import fluxtrain as ft

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "translation.md"
SEED_NAMES = ROOT / "tests" / "seed_names.txt"

_CODE_SPAN = re.compile(r"`([^`]+)`")
_FT_NAME = re.compile(r"\bft\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


def seed_names() -> list[str]:
    lines = SEED_NAMES.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row, header and separator rows excluded."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Julia",):
            continue
        rows.append(cells)
    return rows


_TOKEN = re.compile(r"@?[^\W\d][\w.]*!?")


def names_in_cell(cell: str) -> set[str]:
    """Names a cell's code spans mention: every identifier, macro and dotted name, with its
    dotted prefixes and last component.

    `Flux.adjust!(opt_state, 0.01)` yields `Flux`, `Flux.adjust!`, `adjust!`, `opt_state`;
    `@layer NewLayer trainable=(weight,)` yields `@layer`; `sum(abs2, x)/2` yields `sum`, `abs2`.
    """
    found: set[str] = set()
    for span in _CODE_SPAN.findall(cell):
        found.add(span)
        for token in _TOKEN.findall(span):
            token = token.rstrip(".")
            parts = token.split(".")
            found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
            found.add(parts[-1])
    return found


def test_seed_name_list_is_not_empty_and_has_no_duplicates():
    names = seed_names()
    assert len(names) > 80
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


def test_every_seed_name_has_a_row_in_the_translation_table():
    rows = table_rows(TABLE.read_text(encoding="utf-8"))
    julia_names: set[str] = set()
    for cells in rows:
        julia_names |= names_in_cell(cells[0])
    missing = [n for n in seed_names() if n not in julia_names]
    assert not missing, f"seed names without a row in docs/translation.md: {missing}"


def test_every_row_gives_a_fluxtrain_name_and_the_differences_give_a_reason():
    rows = table_rows(TABLE.read_text(encoding="utf-8"))
    assert all(len(cells) == 3 for cells in rows), [c for c in rows if len(c) != 3]
    assert all(cells[1] for cells in rows), [c[0] for c in rows if not c[1]]
    text = TABLE.read_text(encoding="utf-8")
    differences = text.split("## Where fluxtrain deliberately differs", 1)[1]
    diff_rows = table_rows(differences)
    assert len(diff_rows) >= 10
    assert all(len(cells[2].split()) >= 4 for cells in diff_rows), "each difference needs a why"


def test_every_ft_name_in_the_fluxtrain_column_exists():
    # The table must not promise names the library does not have.
    rows = table_rows(TABLE.read_text(encoding="utf-8"))
    missing = []
    for cells in rows:
        for span in _CODE_SPAN.findall(cells[1]):
            for dotted in _FT_NAME.findall(span):
                obj = ft
                for attr in dotted.split("."):
                    if not hasattr(obj, attr):
                        missing.append(f"ft.{dotted}")
                        break
                    obj = getattr(obj, attr)
    assert not missing, f"names in docs/translation.md that fluxtrain lacks: {sorted(set(missing))}"


def test_names_in_cell_reads_calls_macros_and_lists():
    assert {"adjust!", "Flux.adjust!"} <= names_in_cell("`Flux.adjust!(opt_state, 0.01)`")
    assert "@layer" in names_in_cell("`@layer NewLayer trainable=(weight,)`")
    assert {"StepBegin", "StepEnd"} <= names_in_cell("`StepBegin`, `StepEnd`")
    assert "@functor" in names_in_cell("`Functors.@functor`")
    assert {"Cos", "λ0", "period"} <= names_in_cell("`Cos(λ0 = 1e-4, λ1 = 1e-2, period = 10)`")
    assert {"sum", "abs2"} <= names_in_cell("`sum(abs2, x)/2`")
    assert {"Flux.Optimise", "Optimiser"} <= names_in_cell("`Flux.Optimise.Optimiser(a, b)`")
    assert "nothing_here" not in names_in_cell("plain text nothing_here, no code span")
