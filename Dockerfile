# syntax=docker/dockerfile:1
#
# dynamodb-nakadi-relay: one static-ish binary on a distroless base.
#
#   docker build -t dynamodb-nakadi-relay:dev .
#
# Base images are pinned by tag and digest. The digests were taken from public Dockerfiles that
# use the same tags; to move to a newer build of a tag, run
# `docker buildx imagetools inspect <image:tag>` and change tag and digest together.

# ---- build -------------------------------------------------------------------------------------
# The image's toolchain is the pin (rustc 1.95, Debian 12). It already has gcc and libc6-dev,
# which aws-lc-sys and mimalloc need; nothing else is installed, so no apt pins to keep up to date.
FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
# .dockerignore lets in only Cargo.toml, Cargo.lock, src/, benches/ and tests/ (cargo resolves
# every target named in Cargo.toml even when it builds only the binary).
COPY . .
# --locked: the build uses exactly Cargo.lock or fails. The cache mounts keep the registry and
# target/ between builds without putting them into a layer, so the binary is copied out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dynamodb-nakadi-relay \
    && install -D -m 0755 target/release/dynamodb-nakadi-relay /out/dynamodb-nakadi-relay

# ---- runtime -----------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates (for Nakadi and AWS over TLS) and no shell or
# package manager. The :nonroot variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

ARG VERSION=dev
LABEL org.opencontainers.image.title="dynamodb-nakadi-relay" \
      org.opencontainers.image.description="Relays a DynamoDB stream to Nakadi as data change events (transactional outbox)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"

# Owned by root and not writable by the process: the relay writes nothing to disk, so the root
# filesystem can be mounted read-only (the Helm chart does).
COPY --from=build /out/dynamodb-nakadi-relay /usr/local/bin/dynamodb-nakadi-relay

# Numeric, so Kubernetes' runAsNonRoot can verify it without resolving a user name.
USER 65532:65532

# /metrics, /health/live, /health/ready, /status (RELAY_HTTP_ADDR, default 0.0.0.0:8080).
EXPOSE 8080

# Exec form: the relay is PID 1 and receives Kubernetes' SIGTERM itself, which starts its drain.
# No arguments runs the relay; `redrive --once` re-drains the DLQ once and exits.
ENTRYPOINT ["/usr/local/bin/dynamodb-nakadi-relay"]
