"""Shared test fixtures, and the order in which pytest-xdist hands out the test files."""

import json
from pathlib import Path

import pytest
import torch

#: Measured seconds per test file (``python scripts/test_durations.py JUNIT.xml`` writes it).
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_collection_modifyitems(session, config, items):
    """Longest test files first.

    ``scripts/test.sh`` runs ``pytest -n 2 --dist loadfile``, which hands whole files to the
    two workers in collection order. In alphabetical order the Ray-heavy sweep files came
    last, so one worker ran them alone at the end while the other idled; longest first
    (the greedy LPT schedule) ends both workers close together. The sort is stable, so the
    tests inside a file keep their order, and every worker collects the same order (xdist
    requires it). Files missing from the table count as the median file.
    """
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(seconds, dict) or not seconds:
        return
    median = sorted(seconds.values())[len(seconds) // 2]

    def weight(item) -> float:
        return -float(seconds.get(item.nodeid.split("::", 1)[0], median))

    items.sort(key=weight)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
