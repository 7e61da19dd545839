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


@pytest.fixture
def one_process_group(tmp_path):
    """A torch.distributed process group of this process alone (gloo), for DDP and FSDP on one
    CPU; destroyed after the test."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.fixture
def compile_everything():
    """Compile every group, however small (the engine's default skips small groups)."""
    from fluxtrain.optimisers import compiled

    before = compiled.configure()
    compiled.configure(enabled=True, min_numel=1)
    yield
    compiled.configure(**before)
