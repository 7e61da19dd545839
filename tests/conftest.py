"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each test starts and ends without them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
