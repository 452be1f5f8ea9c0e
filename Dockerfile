# syntax=docker/dockerfile:1
# Gantry's image: the `gantry` binary, git (pipeline files and changed paths are read with it)
# and CA certificates, running as a non-root user. Build: docker build -t gantry .

ARG RUST_VERSION=1.95

# cargo-chef splits the build: dependencies are compiled in a layer that only changes when
# Cargo.toml or Cargo.lock files do.
FROM rust:${RUST_VERSION}-slim-trixie AS chef
RUN cargo install --locked cargo-chef
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --package gantry --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --package gantry \
    && install -m 0755 target/release/gantry /usr/local/bin/gantry

FROM debian:trixie-slim
# Unpinned on purpose: trixie-slim pins the release, whose packages only get security fixes;
# a pinned version disappears from the archive when it is fixed.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 gantry \
    && useradd --uid 65532 --gid 65532 --home-dir /var/lib/gantry --create-home --shell /usr/sbin/nologin gantry
COPY --from=builder /usr/local/bin/gantry /usr/local/bin/gantry
USER 65532:65532
WORKDIR /var/lib/gantry
ENV GANTRY_LISTEN=0.0.0.0:8080 \
    GANTRY_DATA_DIR=/var/lib/gantry \
    GANTRY_LOG_FORMAT=json \
    GANTRY_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["/usr/local/bin/gantry", "--version"]
ENTRYPOINT ["/usr/local/bin/gantry"]
CMD ["serve"]
