# Sourced by the bench scripts: the peer (libvips through pyvips) and the
# release mesh on free loopback ports.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nws-watermark/target}"

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
