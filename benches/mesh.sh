# Sourced by the benches that run release meshes side by side; stop them
# with stop_meshes (e.g. in an EXIT trap). Needs WORK
# (a scratch directory), and for `hits` OHA (benches/oha.sh) and DURATION
# (seconds per round). Like every bench, meshes run without the edge's
# default rate limits (one load generator is one caller); a bench that
# measures the limits sets its own.

start_mesh() { # name [env...]: starts a release nws-mesh, prints its gateway's URL
  local name="$1"; shift
  mkdir -p "$WORK/$name"
  env NWS_HTTP_ADDR=127.0.0.1:0 NWS_RATE_LIMIT_RPS=0 NWS_READ_RATE_LIMIT_RPS=0 NWS_OPTIMIZER_ADDR=127.0.0.1:0 NWS_STORAGE_ADDR=127.0.0.1:0 \
    NWS_ADMIN_ADDR=127.0.0.1:0 NWS_DATA_DIR="$WORK/$name" NWS_LOG_FORMAT=json RUST_LOG=warn,nws_runtime=info \
    "$@" "$CARGO_TARGET_DIR/release/nws-mesh" > "$WORK/$name.log" 2>&1 &
  # Started inside $(…): not a job of the calling shell, so its trap
  # finds it by this file.
  echo $! > "$WORK/$name.pid"
  for _ in $(seq 100); do grep -q '"service":"gateway"' "$WORK/$name.log" 2>/dev/null && break; sleep 0.1; done
  grep -o '"service":"gateway","addr":"[^"]*"' "$WORK/$name.log" | sed 's/.*"addr":"/http:\/\//; s/"$//'
}

hits() { # name url [oha options...]: "name requests/s {status: count}" of one round, 64 connections
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -c 64 "${@:3}" "$2" > "$WORK/$1.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], round(r["summary"]["requestsPerSec"]), json.dumps(r.get("statusCodeDistribution",{})).replace(" ",""))' \
    "$WORK/$1.json" "$1"
}

stop_meshes() {
  for pid_file in "$WORK"/*.pid; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
}
