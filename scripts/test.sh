#!/usr/bin/env bash
# The whole test suite, from a fresh machine or a used one:
#   formatting, lints, unit tests, and the integration tests that start the
#   real binaries on 127.0.0.1:0 and talk to them with real clients (HTTP,
#   tonic, grpcurl, a Python client generated from proto/, boto3) and real
#   servers (s3s-fs, an S3-protocol server from crates.io; Redis).
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
# shellcheck source=scripts/build-tools.sh
source scripts/build-tools.sh
ensure_build_tools
cmake --version | head -1
nasm -v

step "system tools the tests use: python3 with venv, redis-server"
# A bare machine has Rust and a C compiler only. These come from the
# system's packages (Debian names), as root or with password-less sudo.
missing=()
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if ! system_install "${missing[@]}"; then
    cat >&2 <<HELP
error: the tests need ${missing[*]}, and this user cannot install packages
(neither root nor password-less sudo). Install them, then run this again:
  Debian, Ubuntu:  sudo apt-get install ${missing[*]}
  Fedora:          sudo dnf install python3 redis
HELP
    exit 1
  fi
fi
python3 --version

step "Redis: the machine's on 127.0.0.1:6379, or a private one when none answers"
redis_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null; }
if redis_answers 6379; then
  export NWS_TEST_REDIS_URL="redis://127.0.0.1:6379"
else
  # redis-server cannot be handed a bound socket: take a port the system
  # calls free, and another if redis-server finds it taken by then.
  for _ in 1 2 3 4 5; do
    REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >/dev/null &
    REDIS_PID=$!
    for _ in $(seq 50); do
      redis_answers "$REDIS_PORT" && break
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    redis_answers "$REDIS_PORT" && kill -0 "$REDIS_PID" 2>/dev/null && break
    kill "$REDIS_PID" 2>/dev/null || true
  done
  trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
  redis_answers "$REDIS_PORT" || { echo "the private redis-server did not start" >&2; exit 1; }
  export NWS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi
echo "NWS_TEST_REDIS_URL=$NWS_TEST_REDIS_URL ($(redis-server --version | cut -d' ' -f1-3))"

step "test tools from PyPI: grpcio-tools (Python client codegen), grpcurl, boto3, Pillow (AVIF/WebP decoding), openapi-spec-validator, prometheus-client (the text format parser), cryptography (RSA keys for the token tests)"
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
