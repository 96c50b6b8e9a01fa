# syntax=docker/dockerfile:1
# One image with every binary; each container runs one of them
# (docker-compose.yml, k8s/), the whole mesh by default:
#   docker build -t nws-watermark .
#   docker run --rm -p 127.0.0.1:3000:3000 nws-watermark            # nws-mesh
#   docker run --rm nws-watermark gateway --help
#
# Stages: chef (toolchain, C build tools, cargo-chef) → planner (the
# dependency recipe) → build (dependencies, cached as long as Cargo.toml,
# Cargo.lock and .cargo/config.toml keep the recipe the same; then our
# crates) → runtime.

# Debian bookworm on both sides: the binaries link the system's libheif
# (1.15, the API the pinned libheif-sys is built for), so the runtime must
# be the release the build ran on.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

FROM ${RUST_IMAGE} AS chef
# libjpeg-turbo is built from source with its SIMD code (cmake, nasm);
# libheif (HEIC and AVIF input) is linked dynamically and libaom (AVIF
# output) statically, both Debian's (scripts/build-tools.sh installs the
# same on a developer's machine).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake nasm libheif-dev libaom-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
# .cargo/config.toml points libaom-sys at x86_64 paths; variables in the
# environment win over it, so other architectures (an arm64 laptop) build
# against their own multiarch directory.
RUN multiarch="$(gcc -print-multiarch)" \
 && printf 'export LIB_AOM_STATIC_LIB_PATH=/usr/lib/%s LIB_AOM_PKG_CONFIG_PATH=/usr/lib/%s/pkgconfig LIB_AOM_INCLUDE_PATH=/usr/include\n' \
      "$multiarch" "$multiarch" > /etc/nws-build-env
ARG CARGO_CHEF_VERSION=0.1.78
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The same flags as the build below, so the dependencies compiled here (the
# C codecs, tonic, …: most of the build time) are the ones it links.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git/db \
    . /etc/nws-build-env \
 && cargo chef cook --release --locked --workspace --bins --recipe-path recipe.json
COPY . .
# Release profile: thin LTO, and line tables kept (not stripped) so CPU
# profiles from the admin listener and panic backtraces name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git/db \
    . /etc/nws-build-env \
 && cargo build --release --locked --workspace --bins \
 && install -D -m 0755 -t /out \
      target/release/nws-mesh target/release/gateway \
      target/release/optimizer-svc target/release/storage-svc

FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nws-watermark" \
      org.opencontainers.image.description="NWS Watermark: image watermarking over a gRPC mesh (gateway, optimizer-svc, storage-svc, nws-mesh)" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
# libheif1 is the one shared library beyond glibc and libgcc (it brings its
# decoders, libde265 and dav1d); the other codecs are linked in. No CA
# bundle: the TLS clients trust the roots compiled into them
# (webpki-roots).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libheif1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify USER and
# volumes can be chowned to it ahead of time (k8s/ sets fsGroup 10001).
RUN groupadd --system --gid 10001 nws \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/nws --no-create-home \
      --shell /usr/sbin/nologin nws \
 && mkdir -p /var/lib/nws/data \
 && chown -R 10001:10001 /var/lib/nws
COPY --from=build /out/ /usr/local/bin/
COPY --chmod=0755 deploy/docker/nws-healthcheck.sh /usr/local/bin/nws-healthcheck
USER 10001:10001
WORKDIR /var/lib/nws
# With a read-only root filesystem, only /tmp (a tmpfs) and the data
# directory (a volume, for storage-svc's fs backend) are writable. No VOLUME
# here: it would give every container, gateway and optimizer included, an
# anonymous volume it never writes.
# The listen addresses bind every interface: in a container, loopback is
# unreachable from outside and the network namespace is the boundary. The
# admin listeners (profiles) stay on loopback unless NWS_ADMIN_ADDR says
# otherwise.
ENV NWS_LOG_FORMAT=json \
    NWS_DATA_DIR=/var/lib/nws/data \
    NWS_HTTP_ADDR=0.0.0.0:3000 \
    NWS_OPTIMIZER_ADDR=0.0.0.0:50051 \
    NWS_STORAGE_ADDR=0.0.0.0:50052 \
    TMPDIR=/tmp
EXPOSE 3000 50051 50052
# Liveness of whichever binary runs, on the port its settings name
# (deploy/docker/nws-healthcheck.sh); Kubernetes ignores it and uses its
# own probes (k8s/).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["nws-healthcheck"]
# No ENTRYPOINT: the command is the binary (`docker run nws-watermark
# gateway`). Each binary is PID 1 and handles SIGTERM itself (drain, then
# exit 0), so no init is needed.
CMD ["nws-mesh"]
