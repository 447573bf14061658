#!/usr/bin/env bash
# The render tools Capstan runs: kustomize and helm, built from the Go modules pinned in
# tests/env/render-tools and cached outside the repository, keyed by the pins, so only the first
# run pays for the build. Run `tests/env/rendertools.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

TOOLS_MOD=${SELF%/*}/render-tools
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}

usage() {
    cat <<EOF2
Usage:
  $PROG build
      Build (once) kustomize and helm from the Go modules pinned in tests/env/render-tools; print
      the directory holding them. Cached under \$CAPSTAN_CACHE (default ~/.cache/capstan), keyed
      by the pins.
EOF2
}

go_pin() { awk -v m="$1" '$1 == m && NF >= 2 { print $2; exit }' "$TOOLS_MOD/go.mod"; }

HELM_VERSION=$(go_pin helm.sh/helm/v4)
KUSTOMIZE_VERSION=$(go_pin sigs.k8s.io/kustomize/kustomize/v5)
# Stamp the versions the binaries report, as their release builds do.
LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
LDFLAGS+=" -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$KUSTOMIZE_VERSION"

cmd_build() {
    local key bin
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$LDFLAGS") | sha256sum | cut -c1-12)
    bin="$CACHE/render-$key/bin"
    if [[ -x $bin/kustomize && -x $bin/helm ]]; then
        echo "$bin"
        return
    fi
    command -v go >/dev/null 2>&1 || die "go is not installed; it builds kustomize and helm from Go modules"
    mkdir -p "$CACHE"
    # One build at a time, even when several test binaries start at once.
    exec 9>"$CACHE/build.lock"
    flock 9
    if [[ ! -x $bin/helm ]]; then
        local tmp
        tmp=$(mktemp -d "$CACHE/build.XXXXXX")
        log "building kustomize $KUSTOMIZE_VERSION and helm $HELM_VERSION from Go modules (first run only; a few minutes)"
        # go.sum pins every module; the checksum database is not needed (nor reachable here).
        (
            cd "$TOOLS_MOD"
            export GOFLAGS=-mod=readonly GOSUMDB=off
            go build -trimpath -ldflags="$LDFLAGS" -o "$tmp/" \
                sigs.k8s.io/kustomize/kustomize/v5 helm.sh/helm/v4/cmd/helm
        ) >&2 || { rm -rf "$tmp"; die "building kustomize and helm from Go modules failed (see above)"; }
        mkdir -p "${bin%/*}"
        rm -rf "$bin"
        mv "$tmp" "$bin"
    fi
    flock -u 9
    echo "$bin"
}

case ${1:-help} in
build) cmd_build ;;
help | -h | --help) usage ;;
*) usage_error "unknown command '$1'" ;;
esac
