#!/usr/bin/env bash
# Build the wheel folder scripts/gpu_reproduction.sh installs from, on a machine that reaches
# a package index (pip's own configuration is used). For a GPU machine without network whose
# Python has torch but not Ray (issue 30: Python 3.12, torch 2.11):
#
#   bash scripts/build_wheelhouse.sh OUT [--python-version 3.12] [--python PY]
#
# 1. Ray 2.60.0 (the project's pin) for cpVER manylinux x86_64, slimmed by scripts/slim_wheel.py:
#    without ray/jars, rllib, serve, llm and dashboard/client/build, RECORD rewritten (79.3 MB
#    -> 41.8 MB for cp312).
# 2. What ray[tune,train] needs that such a machine lacks, at the versions this project's
#    test environment runs with Ray 2.60 (PINS below): jsonschema and its referencing,
#    rpds-py, jsonschema-specifications; pydantic, pydantic-core, annotated-types,
#    typing-inspection; tensorboardX. The rest (numpy, pandas, pyarrow, scipy, pyyaml,
#    protobuf, msgpack, click, filelock, requests, fsspec, attrs, typing-extensions, tqdm,
#    tensorboard, ...) comes with torch's image there; a sweep imports nothing else (measured
#    with a tiny sweep: every module its driver and Ray workers imported, by distribution).
#    If pip there still misses one, it names it: add it with --also NAME==VERSION.
# Exit 0; 2 with one line for bad arguments (nothing written); 3 a download or slimming failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="ray==2.60.0"
PINS=(jsonschema==4.26.0 referencing==0.37.0 rpds-py==2026.9.1 jsonschema-specifications==2025.9.1
      pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
      tensorboardX==2.6.5)
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64
           manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64
           manylinux_2_34_x86_64 manylinux_2_35_x86_64)

refuse() { echo "build_wheelhouse.sh: $1" >&2; exit 2; }

OUT="" PYV="3.12" PY="${PYTHON:-python3}" ALSO=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --python-version|--python|--also)
            [ $# -ge 2 ] && [ -n "$2" ] || refuse "$1: missing value"
            case "$1" in
                --python-version) PYV="$2" ;; --python) PY="$2" ;; --also) ALSO+=("$2") ;;
            esac
            shift 2 ;;
        -*) refuse "unknown option '$1'; allowed: OUT, --python-version X.Y, --python PY, --also NAME==VERSION, --help" ;;
        *) [ -z "$OUT" ] || refuse "OUT: given twice ('$OUT', '$1'); allowed: one folder"
           OUT="$1"; shift ;;
    esac
done
[ -n "$OUT" ] || refuse "OUT: missing; allowed: a new or empty folder for the wheels"
[[ "$PYV" =~ ^3\.[0-9]+$ ]] || refuse "--python-version: '$PYV'; allowed: 3.N (the GPU machine's Python, e.g. 3.12)"
if [ -e "$OUT" ]; then
    [ -d "$OUT" ] || refuse "OUT: '$OUT' is a file; allowed: a new or empty folder"
    [ -z "$(ls -A "$OUT")" ] || refuse "OUT: '$OUT' is not empty; allowed: a new or empty folder"
fi
for spec in "${ALSO[@]}"; do
    [[ "$spec" =~ ^[A-Za-z0-9._-]+==[A-Za-z0-9._+!-]+$ ]] || refuse "--also: '$spec'; allowed: NAME==VERSION"
done
"$PY" -m pip --version >/dev/null 2>&1 || refuse "--python: '$PY' has no pip; allowed: a Python with pip"

ABI="cp${PYV/./}"
PLAT_ARGS=()
for p in "${PLATFORMS[@]}"; do PLAT_ARGS+=(--platform "$p"); done
download() {  # NAME==VERSION... into $1, binary wheels for the GPU machine only
    local dest="$1"; shift
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYV" \
        --implementation cp --abi "$ABI" "${PLAT_ARGS[@]}" -d "$dest" "$@"
}

mkdir -p "$OUT" || exit 3
RAW="$(mktemp -d "${TMPDIR:-/tmp}/maxup-wheelhouse.XXXXXX")" || exit 3
trap 'rm -rf "$RAW"' EXIT
echo "== $RAY for $ABI manylinux x86_64"
download "$RAW" "$RAY" || { echo "download: $RAY failed" >&2; exit 3; }
echo "== slim it"
"$PY" "$ROOT/scripts/slim_wheel.py" "$RAW"/ray-*.whl "$OUT" || exit 3
echo "== what ray[tune,train] needs beyond torch's image: ${PINS[*]} ${ALSO[*]}"
download "$OUT" "${PINS[@]}" "${ALSO[@]}" || { echo "download: dependencies failed" >&2; exit 3; }
echo "== $OUT"
ls -l "$OUT"
TOTAL=$(du -cb "$OUT"/*.whl | tail -n 1 | cut -f1)
echo "total: $(( TOTAL / 1000000 )) MB in $(ls "$OUT"/*.whl | wc -l) wheels"
echo "on the GPU machine: bash scripts/gpu_reproduction.sh --wheels $OUT --data FASHION_MNIST_FOLDER"
