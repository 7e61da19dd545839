"""Griffe extension used by the docs build: read ``Example:`` sections as ``Examples:``.

fluxtrain docstrings (see notes) end with a short ``Example:`` section of ``>>>`` lines.  Griffe's
Google-style parser only turns the plural ``Examples:`` into highlighted code; the singular form
would be rendered as Markdown, where ``>>>`` starts a block quote and ``['w']`` reads as a link.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
