#!/usr/bin/env bash
# What tracing costs: release meshes side by side, one with no OTEL_*
# settings (spans propagated, none exported), one sampling every request
# (OTEL_TRACES_SAMPLER=always_on) and one a tenth of them, exporting to a
# real OTLP/gRPC receiver (runtime/examples/otlp_sink.rs) on the same
# machine. Alternating rounds:
#   1. cache hits: oha, GET /v1/images/{key} from L1, 64 connections;
#   2. misses: the 12 MP photo uploaded with a new wm_text each time, 2 at
#      a time (benches/throughput.py), with the default 2 workers.
#   bash benches/tracing_cost.sh [seconds per hit round] [images per miss round]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-8}"
IMAGES="${2:-30}"
# shellcheck source=benches/oha.sh
source benches/oha.sh
# shellcheck source=benches/mesh.sh
source benches/mesh.sh
cargo build --release --locked -p nws-mesh >&2
cargo build --release --locked -p nws-runtime --example otlp_sink --features test-support >&2
PHOTO="${NWS_TEST_IMAGES:-../shared/testdata/images}/kleiber_4000x3000.jpg"

WORK="$(mktemp -d)"
trap 'stop_meshes; kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

coproc SINK { exec "$CARGO_TARGET_DIR/release/examples/otlp_sink"; }
read -r SINK_ADDR <&"${SINK[0]}"
spans_received() { echo >&"${SINK[1]}"; read -r count <&"${SINK[0]}"; echo "$count"; }

OFF="$(start_mesh off)"
ON="$(start_mesh on OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK_ADDR" OTEL_TRACES_SAMPLER=always_on)"
# What operators usually run: one request in ten sampled (the default
# sampler follows a caller's decision; these requests start their trace).
TENTH="$(start_mesh tenth OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK_ADDR" \
  OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)"

# The same ~100 KB result in each, served from L1.
result() { # gateway
  curl -sS -o /dev/null -D - --data-binary "@$PHOTO" \
    "$1/v1/watermark?format=jpeg&max_width=1200&max_height=900&quality=80" \
    | tr -d '\r' | sed -n 's/^content-location: //Ip'
}
HIT_OFF="$OFF$(result "$OFF")"
HIT_ON="$ON$(result "$ON")"
HIT_TENTH="$TENTH$(result "$TENTH")"

misses() { # name gateway
  python3 benches/throughput.py mesh --gateway "$2" --image "$PHOTO" --count "$IMAGES" --parallel 2 --pid 1 \
    | awk -v name="$1" -F'|' '{ gsub(/ /, "", $4); print name, $4 }'
}

hits warm-off "$HIT_OFF" > /dev/null
hits warm-on "$HIT_ON" > /dev/null
hits warm-tenth "$HIT_TENTH" > /dev/null
: > "$WORK/rounds.txt"
for ROUND in 1 2 3 4 5; do
  hits "hit-off" "$HIT_OFF" >> "$WORK/rounds.txt"
  hits "hit-on" "$HIT_ON" >> "$WORK/rounds.txt"
  hits "hit-tenth" "$HIT_TENTH" >> "$WORK/rounds.txt"
done
for ROUND in 1 2 3; do
  misses "miss-off" "$OFF" >> "$WORK/rounds.txt"
  misses "miss-on" "$ON" >> "$WORK/rounds.txt"
done
SPANS="$(spans_received)"
# The receiver shares the two cores: what it spent is part of the cost seen.
SINK_CPU="$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$SINK_PID/stat")"
METRICS="$(curl -sS "$(grep -o '"service":"admin","addr":"[^"]*"' "$WORK/on.log" | sed 's/.*"addr":"/http:\/\//; s/"$//')/metrics")"
EXPORTED="$(echo "$METRICS" | awk '/^nws_trace_spans_total\{.*outcome="exported"/ { print $2 }')"
DROPPED="$(echo "$METRICS" | awk '/^nws_trace_spans_total\{.*outcome="dropped/ { s += $2 } END { print s + 0 }')"

python3 - "$WORK/rounds.txt" "$DURATION" "$IMAGES" "$SPANS" "${EXPORTED:-0}" "$DROPPED" "$SINK_CPU" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
duration, images, spans, exported, dropped, sink_cpu = sys.argv[2:8]
def runs(name):
    return [float(r[1]) for r in rows if r[0] == name]
print(f"Hits: oha, 64 connections, {duration} s per round; misses: {images} uploads of the 12 MP photo per round, 2 at a time.\n")
print("| path | tracing | median | rounds |")
print("|---|---|---:|---|")
for path, unit in (("hit", "req/s"), ("miss", "images/s")):
    for mode in ("off", "on", "tenth"):
        values = runs(f"{path}-{mode}")
        if not values:
            continue
        print(f"| {path} | {mode} | {statistics.median(values):.1f} {unit} | {' / '.join(f'{v:g}' for v in values)} |")
for path in ("hit", "miss"):
    off, on = runs(f"{path}-off"), runs(f"{path}-on")
    pairs = [b / a for a, b in zip(off, on)]
    cost = 1 - statistics.median(on) / statistics.median(off)
    print(f"\n**{path}: tracing on costs {cost * 100:.1f}%** (ratio of medians {statistics.median(on) / statistics.median(off):.3f}; "
          f"per round {' / '.join(f'{p:.3f}' for p in pairs)})")
off, tenth = runs("hit-off"), runs("hit-tenth")
print(f"\n**hit, 10% sampled: costs {(1 - statistics.median(tenth) / statistics.median(off)) * 100:.1f}%** "
      f"(per round {' / '.join(f'{b / a:.3f}' for a, b in zip(off, tenth))})")
print(f"\nSpans received by the sink: {spans}; exported (nws_trace_spans_total): {exported}; dropped: {dropped}; "
      f"the sink's own CPU time on the shared cores: {sink_cpu} s.")
PY
