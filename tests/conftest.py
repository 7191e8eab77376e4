"""Shared test fixtures."""

import os

import pytest
import torch

# Under pytest-xdist each worker process gets one intra-op thread: the workers run side by side
# on a machine with few cores, and two workers each using every core oversubscribe it (OpenMP
# threads spinning against each other). Tests that need a thread count set their own.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
