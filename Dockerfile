# The Capstan controller image: the operator plus the pinned kustomize and helm it renders with,
# and sops, which decrypts SOPS-encrypted files.
# One Dockerfile, two routes to the same final stage:
#   * with a registry, from the repository root:  docker build -t capstan .
#     (everything is built from source in the stages below)
#   * without any network (the test machines): `make image` (tests/env/image.sh) runs
#       buildah bud --pull=never --network none \
#         --build-arg BINARIES=prebuilt --build-arg BASE=minimal-root -f Dockerfile CONTEXT
#     where CONTEXT holds bin/ (capstan, kustomize, helm, sops built on the host) and rootfs/ (only the
#     libraries and CA certificates those binaries need).
ARG BINARIES=from-source
ARG BASE=debian-slim

# kustomize, helm and sops, from the Go modules pinned in tests/env/render-tools, by the same script the
# tests use (so the image renders exactly as the tests did).
FROM golang:1.26-bookworm AS tools
WORKDIR /src
COPY tests/env/lib.sh tests/env/rendertools.sh tests/env/
COPY tests/env/render-tools tests/env/render-tools
RUN bin=$(CAPSTAN_CACHE=/cache tests/env/rendertools.sh build) && mkdir /out && cp "$bin/kustomize" "$bin/helm" "$bin/sops" /out/

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin capstan && strip target/release/capstan

FROM scratch AS from-source
COPY --from=build /src/target/release/capstan /out/capstan
COPY --from=tools /out/kustomize /out/helm /out/sops /out/

FROM scratch AS prebuilt
COPY bin/capstan bin/kustomize bin/helm bin/sops /out/

# Only what the controller needs at run time: its libraries (OpenSSL, zlib) and CA certificates.
FROM debian:bookworm-slim AS debian-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/*

FROM scratch AS minimal-root
COPY rootfs/ /

FROM ${BINARIES} AS binaries

# The final stage, the same on both routes. The chart runs it as 65532 with a read-only root
# filesystem; /tmp and /var/cache/capstan are its writable volumes.
FROM ${BASE}
COPY --from=binaries /out/capstan /out/kustomize /out/helm /out/sops /usr/local/bin/
# The tools are found here whatever PATH the tools are run with (Capstan runs them with none).
ENV CAPSTAN_KUSTOMIZE_PATH=/usr/local/bin/kustomize \
    CAPSTAN_HELM_PATH=/usr/local/bin/helm \
    CAPSTAN_SOPS_PATH=/usr/local/bin/sops
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["controller"]
