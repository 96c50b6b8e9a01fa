# One image with every binary; each container runs one of them.
#   docker build -t nws-watermark .
FROM rust:1.95-bookworm AS build
# libjpeg-turbo is built from source, with its SIMD code; libheif (HEIC and
# AVIF input) and libaom (AVIF output, linked statically) are Debian's.
RUN apt-get update && apt-get install -y --no-install-recommends cmake nasm \
    libheif-dev libaom-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/nws-mesh target/release/gateway target/release/optimizer-svc target/release/storage-svc /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libheif1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/nws nws \
 && mkdir -p /var/lib/nws/data && chown -R nws /var/lib/nws
COPY --from=build /out/ /usr/local/bin/
USER nws
WORKDIR /var/lib/nws
ENV NWS_DATA_DIR=/var/lib/nws/data \
    NWS_LOG_FORMAT=json
EXPOSE 3000 50051 50052
# The whole mesh in one container by default; deployments run `gateway`,
# `optimizer-svc` and `storage-svc` apart (see docker-compose.yml, k8s/).
CMD ["nws-mesh"]
