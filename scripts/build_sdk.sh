#!/usr/bin/env bash
# Generate the Python SDK (`lethe_client`) from openapi.json into build/sdk/lethe-client with openapi-python-client,
# in a venv of its own (.venv-sdk/, from sdk/requirements.txt). Fails when the generator warns about the spec: a
# warning means an operation or a body the SDK would drop.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-sdk
STAMP=$VENV/.installed
OUT=build/sdk

if [[ ! -f $STAMP ]] || ! cmp -s sdk/requirements.txt "$STAMP"; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --requirement sdk/requirements.txt
    cp sdk/requirements.txt "$STAMP"
fi

mkdir -p "$OUT"
# Its post-hooks run the venv's ruff on the generated code: the venv's bin first on PATH.
log=$(cd "$OUT" && PATH="$PWD/../../$VENV/bin:$PATH" openapi-python-client generate \
    --path ../../openapi.json --config ../../sdk/config.yaml --meta setup --overwrite 2>&1) || {
    echo "$log" >&2
    echo "build_sdk: openapi-python-client failed" >&2
    exit 1
}
# It prints one line, `Generating <dir>`, when the spec gives it nothing to warn about.
if grep -qv '^Generating ' <<<"$log"; then
    echo "$log" >&2
    echo "build_sdk: openapi-python-client warned about openapi.json (above): fix the spec" >&2
    exit 1
fi
echo "build_sdk: $OUT/lethe-client (package lethe_client) from openapi.json"
