#!/usr/bin/env bash
# The whole test suite: lint, then every test (slow ones included). Extra arguments go to pytest.
source "$(dirname "$0")/_venv.sh"
ruff check .
python -m pytest -m "slow or not slow" "$@"
