"""Single-pass kernels compiled from a rule's own maths (placeholder until measured)."""

from __future__ import annotations

from typing import Any

__all__ = ["try_compiled"]


def try_compiled(g: Any) -> bool:
    return False
