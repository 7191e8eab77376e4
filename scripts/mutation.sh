#!/usr/bin/env bash
# Curated mutation testing (benchmarks/mutation.py): each hand-written single-line mutant of
# the objective, certification, identity, tables, checkpointing, the optimiser and schedule as
# applied, randomness between epochs, reported metrics and the LM selection and training loop
# is run in a scratch copy of HEAD against its fast tests; writes docs/mutation.md. 12-17
# minutes on 2 cores; not part of CI's pass/fail. Extra arguments go to the tool (--jobs 2, --only ID).
source "$(dirname "$0")/_venv.sh"
exec python benchmarks/mutation.py "$@"
