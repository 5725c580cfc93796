# syntax=docker/dockerfile:1
# Tern's container image: `tern` (the server, the entrypoint) and `ternctl` (the admin CLI).
# The Helm chart (charts/tern) runs this image.
#
#   docker build -t tern:0.1.0 .
#   docker run --rm -p 1700:1700/udp -p 1884:1884 -p 1885:1885 -v tern-data:/data tern:0.1.0
#
# Build stage: the toolchain named in the workspace (edition 2024) and protoc, which the API
# crate's build script needs to generate code from api/*.proto.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target directories are BuildKit caches, so a rebuild after a source change
# recompiles only what changed; the binaries are copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tern -p ternctl \
 && mkdir -p /out \
 && cp target/release/tern target/release/ternctl /out/

# Runtime stage: a small Debian with CA certificates (TLS to PostgreSQL, webhooks, MQTT
# bridges), a non-root user, and the data directory as a volume.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tern \
 && useradd --system --uid 10001 --gid tern --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin tern \
 && mkdir -p /data /etc/tern \
 && chown tern:tern /data
COPY --from=build /out/tern /out/ternctl /usr/local/bin/
# Every option with its default, for reference; mount a real one and pass --config.
COPY config/tern.toml /usr/share/doc/tern/tern.toml
# Local state: the embedded store, bootstrap.txt, generated keys.
ENV TERN_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# 1700/udp Semtech UDP, 1887 Basics Station, 1883/8883 MQTT, 1884 gRPC, 1885 HTTP (REST API,
# /healthz, /readyz, /metrics).
EXPOSE 1700/udp 1887 1883 8883 1884 1885
ENTRYPOINT ["tern"]
CMD ["start"]
