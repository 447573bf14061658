#!/usr/bin/env bash
# The render tools Capstan runs: kustomize, helm and sops (SOPS decryption), built from the Go
# modules pinned in tests/env/render-tools and cached outside the repository, keyed by the pins, so
# only the first run pays for the build. age and age-keygen come along for the tests, which
# encrypt with them. Run `tests/env/rendertools.sh help` for the interface.
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
      Build (once) kustomize, helm, sops, age and age-keygen from the Go modules pinned in
      tests/env/render-tools; print
      the directory holding them. Cached under \$CAPSTAN_CACHE (default ~/.cache/capstan), keyed
      by the pins.
EOF2
}


HELM_VERSION=$(go_pin helm.sh/helm/v4)
KUSTOMIZE_VERSION=$(go_pin sigs.k8s.io/kustomize/kustomize/v5)
SOPS_VERSION=$(go_pin github.com/getsops/sops/v3)
AGE_VERSION=$(go_pin filippo.io/age)
# Stamp the versions the binaries report, as their release builds do.
LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
LDFLAGS+=" -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$KUSTOMIZE_VERSION"

build_render_tools() {
    go build -trimpath -ldflags="$LDFLAGS" -o "$1/" \
        sigs.k8s.io/kustomize/kustomize/v5 helm.sh/helm/v4/cmd/helm \
        github.com/getsops/sops/v3/cmd/sops filippo.io/age/cmd/age filippo.io/age/cmd/age-keygen
}

cmd_build() {
    local key
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$LDFLAGS") | sha256sum | cut -c1-12)
    go_cached "$CACHE/render-$key/bin" \
        "kustomize $KUSTOMIZE_VERSION, helm $HELM_VERSION, sops $SOPS_VERSION and age $AGE_VERSION" \
        build_render_tools kustomize helm sops age age-keygen
}

case ${1:-help} in
build) cmd_build ;;
help | -h | --help) usage ;;
*) usage_error "unknown command '$1'" ;;
esac
