#!/usr/bin/env bash
# The main job: a real MaxUp sweep (search_spaces/quickstart.yaml: digits, m in {1, 4} x 5 seeds)
# on an embedded local Ray, then its table. Extra arguments go to `maxup sweep`.
source "$(dirname "$0")/_venv.sh"
maxup sweep search_spaces/quickstart.yaml --storage results "$@"
