# The Capstan controller image: the operator plus the pinned kustomize and helm it renders with.
# Build from the repository root: docker build -t capstan .

# kustomize and helm, from the Go modules pinned in tests/env/render-tools, by the same script the
# tests use (so the image renders exactly as the tests did).
FROM golang:1.26-bookworm AS tools
WORKDIR /src
COPY tests/env/lib.sh tests/env/rendertools.sh tests/env/
COPY tests/env/render-tools tests/env/render-tools
RUN bin=$(CAPSTAN_CACHE=/cache tests/env/rendertools.sh build) && mkdir /out && cp "$bin/kustomize" "$bin/helm" /out/

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin capstan && strip target/release/capstan

# Only what the controller needs at run time: its libraries (OpenSSL, zlib) and CA certificates.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/capstan /usr/local/bin/capstan
COPY --from=tools /out/kustomize /out/helm /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/capstan"]
CMD ["controller"]
