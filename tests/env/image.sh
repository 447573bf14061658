#!/usr/bin/env bash
# The controller image from the project's Dockerfile, built without any network: buildah (from
# Debian) with --pull=never --network none, from binaries built on this machine (capstan in
# release mode, kustomize, helm and sops by rendertools.sh) and a base made here from only the files
# those binaries need. The Dockerfile's final stage is the same one a registry build uses.
# Run `tests/env/image.sh help` for the interface. Needs root (buildah's storage).
set -euo pipefail

PROG=${0##*/}
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

REPO=$(cd "${SELF%/*}/../.." && pwd -P)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
IMAGE=${CAPSTAN_IMAGE:-localhost/capstan:dev}

usage() {
    cat <<EOF
Usage:
  $PROG build [--output ARCHIVE] [--binary CAPSTAN] [--dockerfile FILE]
      Build $IMAGE (CAPSTAN_IMAGE overrides the name) from $REPO/Dockerfile and
      write it as a docker-archive to ARCHIVE (default $TARGET/image/capstan-image.tar). Prints
      the image name, the archive path and the image size. The build's context (bin/, rootfs/)
      and its log, build.log, are kept next to ARCHIVE (default $TARGET/image/build.log).
      The capstan binary is a release build (cargo build --release) unless --binary gives one
      (the node tests pass the debug build cargo test already made). --dockerfile builds another
      Dockerfile from the same context (build args BINARIES=prebuilt, BASE=minimal-root), e.g. a
      variant with debugging tools.
      A failure ends with one line naming the step (cargo, buildah bud, buildah push) and the log;
      The stages' images and working containers buildah keeps are removed, good build or not,
      and so is the untagged image that had the tag before.
EOF
}

# The shared libraries each binary loads (ldd's resolved paths), plus the dynamic loader.
needed_libs() {
    local f
    for f in "$@"; do
        ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
    done | sort -u
}

# A root filesystem holding only what the binaries need at run time: their libraries, CA
# certificates where OpenSSL looks for them, and passwd/group entries for the user 65532.
make_minimal_root() {
    local root=$1
    shift
    rm -rf "$root"
    mkdir -p "$root/etc/ssl/certs" "$root/usr/lib/ssl" "$root/tmp" "$root/var/cache" "$root/home/nonroot"
    chmod 1777 "$root/tmp"
    local lib real
    while read -r lib; do
        [[ -n $lib ]] || continue
        real=$(readlink -f "$lib")
        mkdir -p "$root${lib%/*}" "$root${real%/*}"
        cp -a "$real" "$root$real"
        [[ $lib == "$real" ]] || ln -sf "$real" "$root$lib"
    done < <(needed_libs "$@")
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "/etc/ssl/certs/ca-certificates.crt missing (install Debian's ca-certificates)"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
    ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
    chown 65532:65532 "$root/home/nonroot"
}

# remove_leftovers LOG FINAL [PREVIOUS]: what buildah 1.28 keeps after a build: each stage's image
# (the "--> ID" lines of the build's LOG) and, even after a good build, a working container of the
# stage the final one starts FROM (--force-rm would remove it, but then fails the build with
# "identifier is not an image"). Not the FINAL image; PREVIOUS, the one that had the tag before,
# once nothing else names it. Stage images carry their build's time, so no other build has them.
remove_leftovers() {
    local log=$1 final=$2 previous=${3:-} id cid image
    local -a stages=()
    while read -r id; do
        [[ -n $final && $final == "$id"* ]] || stages+=("$id")
    done < <(sed -n 's/^--> \([0-9a-f]\{6,\}\)$/\1/p' "$log" | sort -u)
    [[ -z $previous || $previous == "$final" ]] || stages+=("$previous")
    ((${#stages[@]})) || return 0
    while read -r cid image; do
        for id in "${stages[@]}"; do
            [[ $image == "$id"* ]] && { buildah rm "$cid" >/dev/null 2>&1 || true; break; }
        done
    done < <(buildah containers --format '{{.ContainerID}} {{.ImageID}}' 2>/dev/null)
    local named
    named=$(buildah images --format '{{.ID}} {{.Name}}' 2>/dev/null | awk '$2 != "<none>" { print $1 }')
    for id in "${stages[@]}"; do
        # Not one with a name; buildah refuses one a container still uses.
        grep -q "^${id:0:12}" <<<"$named" || buildah rmi "$id" >/dev/null 2>&1 || true
    done
}

cmd_build() {
    local out='' binary='' dockerfile=$REPO/Dockerfile
    while (($#)); do
        case $1 in
            --output) (($# >= 2)) || usage_error "--output needs a path"; out=$2; shift 2 ;;
            --binary) (($# >= 2)) || usage_error "--binary needs a path"; binary=$2; shift 2 ;;
            --dockerfile) (($# >= 2)) || usage_error "--dockerfile needs a path"; dockerfile=$2; shift 2 ;;
            *) usage_error "build: unknown argument '$1'" ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "building the image with buildah needs root here"
    command -v buildah >/dev/null 2>&1 || "${SELF%/*}/node.sh" install
    command -v buildah >/dev/null 2>&1 || die "buildah is not installed (Debian package buildah)"
    [[ -f $dockerfile ]] || die "--dockerfile $dockerfile: no such file"
    dockerfile=$(abs_dir "$(dirname "$dockerfile")")/${dockerfile##*/}
    out=${out:-$TARGET/image/capstan-image.tar}
    mkdir -p "$(dirname "$out")"
    # Builds with different archives keep apart (the node tests build while the demo may).
    local work
    work=$(abs_dir "$(dirname "$out")")
    local buildlog=$work/build.log
    : >"$buildlog"

    if [[ -z $binary ]]; then
        log "building capstan (release) with cargo"
        (cd "$REPO" && cargo build --release --locked --bin capstan) >>"$buildlog" 2>&1 ||
            { log_tail "$buildlog"; die "cargo build --release failed (log: $buildlog)"; }
        binary=$TARGET/release/capstan
    fi
    [[ -x $binary ]] || die "$binary is not an executable capstan binary"
    local tools
    tools=$("${SELF%/*}/rendertools.sh" build) || die "building kustomize, helm and sops failed"

    local ctx=$work/context
    rm -rf "${ctx:?}/bin"
    mkdir -p "$ctx/bin"
    cp "$binary" "$ctx/bin/capstan"
    strip "$ctx/bin/capstan"
    cp "$tools/kustomize" "$tools/helm" "$tools/sops" "$ctx/bin/"
    make_minimal_root "$ctx/rootfs" "$ctx/bin/capstan" "$ctx/bin/kustomize" "$ctx/bin/helm" "$ctx/bin/sops"

    log "building $IMAGE from $dockerfile with buildah (no network)"
    local previous
    previous=$(buildah images --format '{{.ID}}' "$IMAGE" 2>/dev/null | head -n 1) || previous=
    buildah bud --pull=never --network none --layers=false \
        --build-arg BINARIES=prebuilt --build-arg BASE=minimal-root \
        -f "$dockerfile" -t "$IMAGE" "$ctx" >>"$buildlog" 2>&1 ||
        { remove_leftovers "$buildlog" ''; log_tail "$buildlog"; die "the image build failed (buildah bud of $dockerfile; log: $buildlog)"; }
    local built
    built=$(buildah images --format '{{.ID}}' "$IMAGE" | head -n 1)
    remove_leftovers "$buildlog" "$built" "$previous"
    rm -f "$out"
    buildah push --quiet "$IMAGE" "docker-archive:$out:$IMAGE" >>"$buildlog" 2>&1 ||
        { log_tail "$buildlog"; die "writing the image archive $out failed (buildah push; log: $buildlog)"; }
    local size
    size=$(buildah images --format '{{.Size}}' "$IMAGE" 2>/dev/null | head -n 1)
    echo "image: $IMAGE"
    echo "archive: $out ($(du -h "$out" | cut -f1))"
    echo "size: ${size:-unknown}"
}

case ${1:-help} in
    build) shift; cmd_build "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$1'" ;;
esac
