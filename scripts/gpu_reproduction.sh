#!/usr/bin/env bash
# The GPU reproduction in one command, on a machine without network or Ray (README, "At GPU
# scale"): reproduction/gpu_fashion/space.yaml (full Fashion-MNIST, ResNet-20, Cutout vs
# MaxUp + Cutout, 5 seeds; priced at <= 8 min on one H200) run into a fresh storage, and its
# records copied back into the repository.
#
#   bash scripts/gpu_reproduction.sh --wheels WHEELS --data FMNIST [--dest DIR] [--scratch DIR]
#   bash scripts/gpu_reproduction.sh --tiny --wheels WHEELS [--data DIR]     # CPU smoke run
#
# 1. A scratch virtual environment (SCRATCH/venv) on top of the machine's Python: it sees the
#    machine's packages (torch, numpy, pandas, ...; also when that Python is itself a venv) and
#    gets only what is missing, from WHEELS: `pip install --no-index --find-links WHEELS
#    ray[tune,train]==2.60.0` (scripts/build_wheelhouse.sh makes WHEELS where an index is
#    reachable; where everything is installed already, an empty folder will do).
# 2. The sweep, from the repository root, with absolute paths: `python -m maxup sweep
#    reproduction/gpu_fashion/space.yaml --storage SCRATCH/storage --data.root=FMNIST`
#    (its priced dry run first). This repository's maxup is used (PYTHONPATH), not an
#    installed one; nothing is installed into the machine's own environment.
# 3. The records copied into the storage root DEST (default: this repository's
#    reproduction/): DEST/gpu_fashion/{sweep.json,run.json}, DEST/trials/<id>/{record.json,
#    log.txt}. No checkpoints, TensorBoard files or Ray Tune files.
#
# --tiny: the same path on a CPU in about a minute: the space shrunk to 1 seed x {m=1, m=4},
# 2 epochs, batch 16, device cpu; without --data it writes a tiny Fashion-MNIST (64/32 images)
# in the real IDX format; DEST defaults to SCRATCH/dest (never the repository).
# Re-running with the same --scratch reuses its environment and resumes the sweep (completed
# trials are skipped); --install-only stops after step 1 (e.g. when wheels and data cannot
# travel to the GPU machine together: install first, then run with the same --scratch).
# Exit: 0 done; 1 the sweep left trials failed or unfinished (nothing copied); 2 bad arguments
# (one line, nothing written); other: the step that failed says so.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPACE_REL="reproduction/gpu_fashion/space.yaml"
SWEEP="gpu_fashion"
REQUIREMENT="ray[tune,train]==2.60.0"
MARKER=".maxup-gpu-reproduction"
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz
       t10k-labels-idx1-ubyte.gz)

usage() {  # the header above
    sed -n '2,/^set /p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
}

refuse() {  # one line, exit 2, nothing written
    echo "gpu_reproduction.sh: $1" >&2
    exit 2
}

WHEELS="" DATA="" DEST="" SCRATCH="" TINY=0 INSTALL_ONLY=0 PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --tiny) TINY=1; shift ;;
        --install-only) INSTALL_ONLY=1; shift ;;
        --wheels|--data|--dest|--scratch|--python)
            [ $# -ge 2 ] && [ -n "$2" ] || refuse "$1: missing value; allowed: $1 PATH"
            case "$1" in
                --wheels) WHEELS="$2" ;; --data) DATA="$2" ;; --dest) DEST="$2" ;;
                --scratch) SCRATCH="$2" ;; --python) PY="$2" ;;
            esac
            shift 2 ;;
        *) refuse "unknown argument '$1'; allowed: --wheels DIR, --data DIR, --dest DIR, --scratch DIR, --python PY, --tiny, --install-only, --help" ;;
    esac
done

abspath() { (cd "$1" 2>/dev/null && pwd -P); }

# ---- arguments, all checked before anything is written
[ -n "$WHEELS" ] || refuse "--wheels: missing; allowed: a folder of wheels (scripts/build_wheelhouse.sh), empty when nothing is missing"
[ -d "$WHEELS" ] || refuse "--wheels: '$WHEELS' is not a directory; allowed: a folder of wheels (scripts/build_wheelhouse.sh)"
WHEELS="$(abspath "$WHEELS")"
if [ -n "$DATA" ]; then
    [ -d "$DATA" ] || refuse "--data: '$DATA' is not a directory; allowed: a folder holding the four Fashion-MNIST files ${FILES[*]}"
    for f in "${FILES[@]}"; do
        [ -f "$DATA/$f" ] || refuse "--data: '$DATA' has no $f; allowed: a folder holding the four Fashion-MNIST files ${FILES[*]}"
    done
    DATA="$(abspath "$DATA")"
elif [ "$TINY" = 0 ] && [ "$INSTALL_ONLY" = 0 ]; then
    refuse "--data: missing; allowed: a folder holding the four Fashion-MNIST files ${FILES[*]} (e.g. /usr/share/datasets/fashion-mnist)"
fi
command -v "$PY" >/dev/null 2>&1 || refuse "--python: '$PY' not found; allowed: a Python >= 3.11 with torch installed"
"$PY" -c 'import sys, torch; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
    || refuse "--python: '$PY' is not a Python >= 3.11 that imports torch; allowed: the machine's Python with torch"
if [ -n "$SCRATCH" ] && [ -e "$SCRATCH" ]; then
    [ -d "$SCRATCH" ] || refuse "--scratch: '$SCRATCH' is not a directory; allowed: a new folder, or one this script made before (resumes)"
    if [ -n "$(ls -A "$SCRATCH")" ] && [ ! -f "$SCRATCH/$MARKER" ]; then
        refuse "--scratch: '$SCRATCH' is not empty and was not made by this script; allowed: a new or empty folder, or one this script made before (resumes)"
    fi
fi
if [ -n "$DEST" ]; then
    [ ! -e "$DEST" ] || [ -d "$DEST" ] || refuse "--dest: '$DEST' is not a directory; allowed: a storage root folder (default: reproduction/)"
elif [ "$TINY" = 0 ]; then
    DEST="$ROOT/reproduction"
fi
if [ -n "$DEST" ] && [ -e "$DEST/$SWEEP/sweep.json" ]; then
    refuse "--dest: '$DEST' already holds a stored $SWEEP sweep ($DEST/$SWEEP/sweep.json); allowed: a storage root without one (move it away first, or give another --dest)"
fi

# ---- scratch folder and environment
if [ -z "$SCRATCH" ]; then
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/maxup-gpu-reproduction.XXXXXX")" || exit 3
fi
mkdir -p "$SCRATCH" && SCRATCH="$(abspath "$SCRATCH")" && touch "$SCRATCH/$MARKER" || exit 3
[ -n "$DEST" ] || DEST="$SCRATCH/dest"
case "$DEST" in /*) ;; *) DEST="$PWD/$DEST" ;; esac
STORAGE="$SCRATCH/storage"
echo "== gpu_reproduction: repository $ROOT"
echo "   scratch $SCRATCH, storage $STORAGE, records to $DEST$([ "$TINY" = 1 ] && echo ' (--tiny)')"

VENV="$SCRATCH/venv"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --without-pip --system-site-packages "$VENV" || { echo "venv: could not create $VENV" >&2; exit 3; }
    # The machine's Python may itself be a venv (its packages are then not the "system" ones a
    # venv sees): add its site folders, .pth files included, after the scratch venv's own.
    SITE_DIRS="$("$PY" -c 'import site, sys; print(repr([p for p in site.getsitepackages() + [site.getusersitepackages()] if p]))')"
    VSITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "import site; list(map(site.addsitedir, $SITE_DIRS))" > "$VSITE/_maxup_machine_site.pth"
fi
VPY="$VENV/bin/python"
echo "== install: what is missing for $REQUIREMENT, from $WHEELS (no index)"
"$VPY" -m pip --version >/dev/null 2>&1 || { echo "install: pip is not importable from $PY; install pip there, or add its wheel to $WHEELS" >&2; exit 3; }
PIP_LOG="$SCRATCH/pip-install.log"
# Only WHEELS and the machine's packages count: no pip configuration, no PIP_* variables.
if ! PIP_CONFIG_FILE=/dev/null "$VPY" -m pip --isolated install --no-index --find-links "$WHEELS" --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location "$REQUIREMENT" >"$PIP_LOG" 2>&1; then
    tail -n 5 "$PIP_LOG" >&2
    echo "install: pip could not satisfy $REQUIREMENT from $WHEELS and the machine's packages (log: $PIP_LOG); add the missing wheels (scripts/build_wheelhouse.sh)" >&2
    exit 3
fi
INSTALLED="$(grep '^Successfully installed' "$PIP_LOG" | sed 's/^Successfully installed //')"
echo "   installed into $VENV: ${INSTALLED:-nothing (all satisfied by the machine packages)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$VPY" -c 'import maxup, ray, torch; print(f"   maxup from {maxup.__file__}, ray {ray.__version__} from {ray.__file__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")' \
    || { echo "install: the scratch environment cannot import maxup, ray and torch" >&2; exit 3; }

if [ "$INSTALL_ONLY" = 1 ]; then
    echo "== installed (--install-only); run: bash scripts/gpu_reproduction.sh --wheels $WHEELS --data DIR --scratch $SCRATCH"
    exit 0
fi

# ---- the sweep
cd "$ROOT" || exit 3
SPACE="$SPACE_REL"
if [ "$TINY" = 1 ]; then
    SPACE="$SCRATCH/tiny/space.yaml"
    "$VPY" scripts/_gpu_reproduction.py tiny-space "$SPACE_REL" "$SPACE" || exit 3
    if [ -z "$DATA" ]; then
        DATA="$SCRATCH/tiny/fashion-mnist"
        "$VPY" scripts/_gpu_reproduction.py tiny-data "$DATA" || exit 3
    fi
fi
SWEEP_CMD=("$VPY" -m maxup sweep "$SPACE" --storage "$STORAGE" "--data.root=$DATA")
echo "== plan: ${SWEEP_CMD[*]} --dry-run"
"${SWEEP_CMD[@]}" --dry-run || { echo "plan: the dry run refused the sweep (above)" >&2; exit 3; }
echo "== sweep: ${SWEEP_CMD[*]}"
START=$(date +%s)
"${SWEEP_CMD[@]}"
RC=$?
WALL=$(( $(date +%s) - START ))
echo "   sweep exit status $RC after ${WALL} s"
if [ "$RC" != 0 ]; then
    echo "sweep: trials failed or unfinished; nothing copied. Records: $STORAGE; rerun with --scratch $SCRATCH to resume" >&2
    exit 1
fi

# ---- the records
echo "== copy: records of $SWEEP into $DEST"
mkdir -p "$DEST" || exit 3
if [ "$TINY" = 1 ]; then HOW="bash scripts/gpu_reproduction.sh --tiny"; else HOW="bash scripts/gpu_reproduction.sh"; fi
"$VPY" scripts/_gpu_reproduction.py copy "$STORAGE" "$SWEEP" "$DEST" \
    --command "$HOW (maxup sweep $SPACE --storage <fresh storage> --data.root=<Fashion-MNIST folder>)" \
    --wall-s "$WALL" \
    --note "a fresh storage on this machine; records copied without checkpoints by scripts/gpu_reproduction.sh" \
    || exit 3
echo "== done. Next: maxup tables $DEST/$SWEEP; maxup report $DEST --out REPRODUCTION.md; maxup verify $DEST --trials 1 --epochs 1"
