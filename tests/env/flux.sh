#!/usr/bin/env bash
# Flux's source-controller and kustomize-controller, built from the Go modules pinned in
# tests/env/flux-tools and cached outside the repository, keyed by the pins, so only the first
# run pays for the build; and the CRDs they need, from the same modules' sources. Run
# `tests/env/flux.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

TOOLS_MOD=${SELF%/*}/flux-tools
CACHE=${CAPSTAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan}

SOURCE_MOD=github.com/fluxcd/source-controller
KUSTOMIZE_MOD=github.com/fluxcd/kustomize-controller
# What each controller watches: source-controller reconciles the first five kinds (HelmChart
# watches GitRepository, HelmRepository and Bucket); kustomize-controller watches GitRepository,
# OCIRepository and Bucket, and ExternalArtifact once its ExternalArtifact feature gate is on.
SOURCE_CRDS="gitrepositories helmrepositories helmcharts buckets ocirepositories externalartifacts"
KUSTOMIZE_CRDS="kustomizations"
# As Flux's own images are built: static, stripped. The controllers stamp no version.
LDFLAGS="-s -w"

usage() {
    cat <<EOF2
Usage:
  $PROG build
      Build (once) source-controller and kustomize-controller from the Go modules pinned in
      tests/env/flux-tools; print the path of each, one a line, in that order. Cached under
      \$CAPSTAN_CACHE (default ~/.cache/capstan), keyed by the pins.
  $PROG crds
      Print the paths of the CRDs the two controllers need, one a line, from the pinned
      modules' config/crd/bases: source.toolkit.fluxcd.io's gitrepositories, helmrepositories,
      helmcharts, buckets, ocirepositories and externalartifacts, then
      kustomize.toolkit.fluxcd.io's kustomizations. Apply them before starting the controllers.

Pinned: source-controller $(go_pin "$SOURCE_MOD"), kustomize-controller $(go_pin "$KUSTOMIZE_MOD").
EOF2
}

build_flux() {
    CGO_ENABLED=0 go build -trimpath -ldflags="$LDFLAGS" -o "$1/" "$SOURCE_MOD" "$KUSTOMIZE_MOD"
}

cmd_build() {
    local source_version kustomize_version key bin
    source_version=$(go_pin "$SOURCE_MOD")
    kustomize_version=$(go_pin "$KUSTOMIZE_MOD")
    [[ -n $source_version ]] || die "$TOOLS_MOD/go.mod pins no $SOURCE_MOD"
    [[ -n $kustomize_version ]] || die "$TOOLS_MOD/go.mod pins no $KUSTOMIZE_MOD"
    key=$(cat "$TOOLS_MOD/go.mod" "$TOOLS_MOD/go.sum" <(echo "$LDFLAGS") | sha256sum | cut -c1-12)
    bin=$(go_cached "$CACHE/flux-$key/bin" \
        "source-controller $source_version and kustomize-controller $kustomize_version" \
        build_flux source-controller kustomize-controller)
    echo "$bin/source-controller"
    echo "$bin/kustomize-controller"
}

# The source directory of module $1 in the module cache (downloaded first if need be).
mod_dir() {
    command -v go >/dev/null 2>&1 || die "go is not installed; the CRDs come from Go modules"
    local dir
    dir=$(cd "$TOOLS_MOD" && GOFLAGS=-mod=readonly GOSUMDB=off go mod download "$1" &&
        GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' "$1") || die "cannot fetch the Go module $1"
    [[ -n $dir && -d $dir ]] || die "the Go module $1 is not in the module cache"
    echo "$dir"
}

# crds_of MODULE GROUP NAMES...: the paths of the CRDs NAMES of GROUP in MODULE's source.
crds_of() {
    local dir group=$2 name f
    dir=$(mod_dir "$1")
    shift 2
    for name in "$@"; do
        f=$dir/config/crd/bases/${group}_$name.yaml
        [[ -f $f ]] || die "$f not found"
        echo "$f"
    done
}

cmd_crds() {
    # shellcheck disable=SC2086 # word lists
    crds_of "$SOURCE_MOD" source.toolkit.fluxcd.io $SOURCE_CRDS
    # shellcheck disable=SC2086
    crds_of "$KUSTOMIZE_MOD" kustomize.toolkit.fluxcd.io $KUSTOMIZE_CRDS
}

case ${1:-help} in
build) cmd_build ;;
crds) cmd_crds ;;
help | -h | --help) usage ;;
*) usage_error "unknown command '$1'" ;;
esac
