#!/usr/bin/env bash
# Download, here, the wheels that scripts/gpu_check.sh installs on the GPU host, into gpu-wheels/ (git-ignored).
#
#   bash scripts/gpu_wheels.sh            # then send the tree with gpu-wheels/ to the host, run gpu_check.sh
#
# The host is bare (no network, no package registry) and its image already has Python 3.12 with torch,
# transformers, peft, accelerate, safetensors, huggingface-hub and their dependencies, plus numpy, scipy,
# scikit-learn, matplotlib, jinja2, pytest and more (IMAGE_HAS below). What Lethe needs beyond that are the
# service's dependencies (pyproject's base list: API, catalogue, queue, storage) and the engine's few others
# (rouge-score): those are downloaded here for cp312 / manylinux x86_64, at the versions this checkout's venv
# was tested with, and installed there with `pip install --no-index --no-deps`.
#
# At most 64 MiB of the tree travels to the host, wheels included: the script prints the wheels' total and the
# tracked tree's, and fails if together they pass BUDGET_MIB.
#
# Environment: VENV (default .venv: the versions to pin), PIP (default: $VENV/bin/python -m pip), OUT (default
# gpu-wheels), BUDGET_MIB (default 48, well under the 64 MiB limit).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
OUT="${OUT:-gpu-wheels}"
BUDGET_MIB="${BUDGET_MIB:-48}"
read -r -a PIP <<<"${PIP:-$VENV/bin/python -m pip}"

log() { printf 'gpu_wheels: %s\n' "$*" >&2; }
fail() { printf 'gpu_wheels: FAIL: %s\n' "$*" >&2; exit 1; }

# Lethe's own requirements, by distribution name: the base dependencies of pyproject.toml (read from it, so the list
# never drifts from what the service imports), then the engine's ROUGE (nltk; rouge-score is built below), then
# what tests/conftest.py imports at start (psycopg, redis, minio are base dependencies already).
mapfile -t REQUIREMENTS < <(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
names = []
for dep in deps:
    name = re.split(r"[<>=!~; ]", dep, maxsplit=1)[0]
    if name not in names:
        names.append(name)
print("\n".join(names + ["nltk"]))
PY
)
# Published as source only: built here into a (pure-Python) wheel, its dependencies being in the list above
# or on the host (rouge-score: absl-py, nltk, numpy, six).
BUILT_HERE=(rouge-score)

# Distributions the host image already has (its package list as last read, 2026-11-17, device/KINDS.md): their
# wheels are not carried, so the host's own, which its torch stack was built against, stay in charge. Left out of
# this list on purpose, so carried at this checkout's versions: the `lethe` command's typer, click and rich (the
# CLI needs typer>=0.29, and the image's versions are not known) and prometheus-client (>=0.26). Names are
# normalised (lower case, '-' for '_' and '.').
IMAGE_HAS="
absl-py accelerate aiofiles anyio attrs certifi charset-normalizer cloudpickle contourpy cycler filelock fonttools
fsspec h11 hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 joblib kiwisolver markdown-it-py markupsafe
matplotlib mdurl mpmath networkx numpy packaging peft pillow pip pluggy psutil pygments pyparsing
pytest python-dateutil pyyaml regex requests safetensors scikit-learn scipy setuptools shellingham six sympy
threadpoolctl tokenizers torch tqdm transformers triton typing-extensions urllib3 uvloop werkzeug wheel
wrapt zipp
"

[ -x "$VENV/bin/python" ] || fail "no venv at $VENV: run make venv first (its versions are the ones pinned)"

normalise() { tr 'A-Z_.' 'a-z--'; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The versions this checkout runs with: every distribution of the venv, pinned, as constraints.
"${PIP[@]}" freeze --exclude-editable 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' >"$tmp/constraints.txt"

rm -rf "$OUT"
mkdir -p "$OUT"
log "pip download ${REQUIREMENTS[*]} (cp312, manylinux x86_64, binary only) into $OUT/"
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"${PIP[@]}" download --quiet --disable-pip-version-check --dest "$tmp/all" --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 "${platforms[@]}" \
    --constraint "$tmp/constraints.txt" "${REQUIREMENTS[@]}" \
    || fail "pip download failed (see above)"
log "pip wheel --no-deps ${BUILT_HERE[*]} (source only on PyPI; pure Python)"
"${PIP[@]}" wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$tmp/all" \
    --constraint "$tmp/constraints.txt" "${BUILT_HERE[@]}" || fail "pip wheel failed (see above)"
for wheel in "$tmp"/all/*.whl; do
    case "$(basename "$wheel")" in
        *-none-any.whl|*-cp312-*|*-abi3-*) ;;
        *) fail "$(basename "$wheel") is not for CPython 3.12 on any platform" ;;
    esac
done

kept=0 dropped=0
for wheel in "$tmp"/all/*.whl; do
    name="$(basename "$wheel" | cut -d- -f1 | normalise)"
    if printf '%s\n' $IMAGE_HAS | grep -qxF "$name"; then
        dropped=$((dropped + 1))
        continue
    fi
    mv "$wheel" "$OUT/"
    kept=$((kept + 1))
done
[ "$kept" -gt 0 ] || fail "no wheel left to carry"

wheels_bytes="$(du -cb "$OUT"/*.whl | tail -n 1 | cut -f1)"
tree_bytes="$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)"
total=$((wheels_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
ls -1 "$OUT" >&2
log "$kept wheels carried ($(mib "$wheels_bytes")), $dropped left out (the host image has them)"
log "tracked tree $(mib "$tree_bytes"); together $(mib "$total") of the 64 MiB that travel (budget $BUDGET_MIB MiB)"
[ "$total" -le $((BUDGET_MIB * 1048576)) ] || fail "wheels + tree are $(mib "$total"), over the budget of $BUDGET_MIB MiB"
