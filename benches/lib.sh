# Sourced by the bench scripts: the peer (libvips through pyvips) and the
# release mesh on free loopback ports.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"

# build_services: the release mesh and each service's own binary.
build_services() {
  cargo build --release --locked -p nws-mesh -p gateway -p optimizer-svc -p storage-svc --bins >&2
}

# use_pyvips [debian packages...]: libvips (and the packages named) from
# Debian, pyvips from PyPI in a venv kept between runs; sets VENV.
use_pyvips() {
  dpkg -s libvips42 "$@" >/dev/null 2>&1 || apt-get install -y -qq libvips42 "$@" >&2
  VENV="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}/bench-venv"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyvips==3.0.0
}

# start_mesh DIR [NAME=value...]: starts nws-mesh with its data and log in
# DIR, rate limits off, the given settings added; sets MESH_PID and GATEWAY
# (the gateway's URL) once the gateway listens.
start_mesh() {
  local dir="$1"; shift
  mkdir -p "$dir"
  env NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 \
    NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
    NWS_DATA_DIR="$dir" NWS_LOG_FORMAT=json "$@" \
    "$CARGO_TARGET_DIR/release/nws-mesh" > "$dir/mesh.log" 2>&1 &
  MESH_PID=$!
  for _ in $(seq 100); do grep -q '"service":"gateway"' "$dir/mesh.log" 2>/dev/null && break; sleep 0.1; done
  GATEWAY="http://$(grep -o '"service":"gateway","addr":"[^"]*"' "$dir/mesh.log" | sed 's/.*"addr":"//; s/"$//')"
}

# start_bench_mesh [NAME=value...]: builds the release mesh and starts it
# in a temporary directory, removed (and the mesh stopped) on exit, with the
# given settings; sets MESH_PID and GATEWAY.
start_bench_mesh() {
  cargo build --release --locked -p nws-mesh >&2
  BENCH_DIR="$(mktemp -d)"
  start_mesh "$BENCH_DIR" "$@"
  trap 'kill $MESH_PID 2>/dev/null; rm -rf "$BENCH_DIR"' EXIT
}

# with_load_average COMMAND...: runs it between two lines giving the load
# average, since other work on the machine skews every figure.
with_load_average() {
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$@"
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}
