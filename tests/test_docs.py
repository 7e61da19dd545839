"""The documentation cannot rot: it builds strictly, and every Python block in it runs.

Each page's ```python blocks run in order in one namespace (one page, one namespace), in a
temporary working directory. Only shell blocks (```bash) and literal output (```text) are not
run; a fence with no language or another language fails the test, so no Python hides untested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = {"bash", "text"}


def code_blocks(markdown: str) -> list[tuple[str, str, int]]:
    """``(language, code, line)`` of every fenced block, in page order."""
    blocks = []
    for m in _FENCE.finditer(markdown):
        line = markdown.count("\n", 0, m.start()) + 1
        blocks.append((m.group(1).strip(), m.group(2), line))
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md")) + [ROOT / "README.md"]


def _page_id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_docs_build_strictly_without_warnings(tmp_path):
    # --strict turns every warning (broken link, unknown reference, missing page) into failure.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "translation" / "index.html").exists()


# A Sphinx role left in a docstring (``:class:`~fluxtrain.X` ``) reaches the HTML as
# ":class:<code>~fluxtrain.X</code>"; mkdocstrings wants autorefs links ([`X`][fluxtrain.X]).
_RAW_ROLE = re.compile(r":(class|meth|func|attr|mod|exc|data|obj|ref):(<code>|`)")


def test_api_reference_has_links_and_no_raw_sphinx_roles(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    raw = []
    for html in sorted(site.rglob("*.html")):
        text = html.read_text(encoding="utf-8")
        for m in _RAW_ROLE.finditer(text):
            context = re.sub(r"<[^>]+>", "", text[m.start() : m.start() + 80]).split("\n")[0]
            raw.append(f"{html.relative_to(site)}: {context}")
    assert not raw, f"{len(raw)} raw Sphinx roles in the built site:\n" + "\n".join(raw)
    # The roles became cross-references that autorefs resolved into links.
    learner = (site / "api" / "learner" / "index.html").read_text(encoding="utf-8")
    assert 'href="#fluxtrain.learner.CancelStepException"' in learner
    assert 'href="#fluxtrain.callbacks.Metrics"' in learner


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_every_code_block_is_python_or_marked_shell(page):
    bad = [
        (line, lang or "(none)")
        for lang, _, line in code_blocks(page.read_text(encoding="utf-8"))
        if lang not in _NOT_RUN | {"python"}
    ]
    assert not bad, f"{_page_id(page)}: blocks must be ```python, ```bash or ```text: {bad}"


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_python_blocks_of_page_run(page, tmp_path, monkeypatch):
    blocks = [
        (code, line)
        for lang, code, line in code_blocks(page.read_text(encoding="utf-8"))
        if lang == "python"
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the docs' models are tiny: one thread is fastest
    try:
        for code, line in blocks:
            try:
                exec(compile(code, f"{_page_id(page)}:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{_page_id(page)}, block at line {line} failed: {e!r}") from e
    finally:
        torch.set_num_threads(threads)
    assert os.getcwd() == str(tmp_path)


def test_pictures_in_the_docs_exist_and_are_not_blank():
    import matplotlib.image
    import numpy as np

    shown = set()
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text("utf-8")):
            shown.add((page.parent / target).resolve())
    assert len(shown) >= 5
    for path in sorted(shown):
        img = matplotlib.image.imread(path)
        colours = np.unique(img[..., :3].reshape(-1, 3), axis=0)
        assert img[..., :3].var() > 0 and len(colours) > 2, f"{path.name} is blank"


def test_code_blocks_are_found_with_language_and_line():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
    assert code_blocks(text) == [("python", "x = 1\n", 2), ("bash", "ls\n", 6)]


def test_readme_has_a_python_example_and_the_two_commands_first():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = code_blocks(text)
    assert blocks[0][0] == "bash"
    first, second = blocks[0][1].strip().splitlines()[:2]
    assert first.endswith(".venv/bin/fluxtrain demo") and "-c constraints.txt" in first
    assert first.startswith("python3 -m venv .venv") and '-e ".[demo]"' in first
    assert second.endswith(".venv/bin/python -m pytest") and '-e ".[dev]"' in second
    assert any(lang == "python" for lang, _, _ in blocks)
