#!/usr/bin/env bash
# Runs the whole mesh in one process (gateway on 127.0.0.1:3000, Optimizer
# and Storage embedded, data under ./data), on a machine with only Rust and a
# C compiler: what the build needs besides is installed first, or the
# exact command to install it is printed. Arguments go to the binary, e.g.
#   bash scripts/run.sh --http-addr 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/build-tools.sh
source scripts/build-tools.sh
ensure_build_tools
exec cargo run --release --locked -p nws-mesh -- "$@"
