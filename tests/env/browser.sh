#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the web UI's tests in a real browser. Run
# `tests/env/browser.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

usage() {
    cat <<EOF2
Usage:
  $PROG install
      Install Debian's chromium and chromium-driver packages when /usr/bin/chromium or
      /usr/bin/chromedriver is missing (needs root).
EOF2
}

cmd_install() {
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && return 0
    [[ $(id -u) == 0 ]] || die "chromium or chromedriver is missing; install Debian's chromium and chromium-driver packages (needs root)"
    command -v apt-get >/dev/null 2>&1 || die "chromium is missing and apt-get is not available"
    log "installing Debian's chromium and chromium-driver packages"
    local -a apt=(apt-get -o DPkg::Lock::Timeout=120 -y --no-install-recommends)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install chromium chromium-driver >&2 || {
        log "install failed; running apt-get update and retrying"
        apt-get -o DPkg::Lock::Timeout=120 update >&2 &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" install chromium chromium-driver >&2
    } || die "apt-get install chromium chromium-driver failed"
    [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || die "chromium or chromedriver still missing after installing the packages"
}

case ${1:-help} in
install) cmd_install ;;
help | -h | --help) usage ;;
*) usage_error "unknown command: $1" ;;
esac
