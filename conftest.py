"""Shared test configuration."""

import pytest
import torch

# The tests use small tensors, for which a second thread only adds synchronisation, and the
# machine may be shared: one thread keeps the suite fast and its timings steady.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    # Every test starts from the same random state, so failures reproduce.
    torch.manual_seed(0)
    yield
