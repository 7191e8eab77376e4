#!/usr/bin/env bash
# The whole test suite: lint, then every test (slow ones included). Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
ruff check .
# Two pytest workers, one test file each at a time (module fixtures stay shared): most of the
# suite waits on Ray start-ups and subprocesses, so two files overlap well on two cores
# (BENCHMARKS.md, "Test suite"). Pass -n 0 to run in one process.
python -m pytest -m "slow or not slow" -n 2 --dist loadfile "$@"
