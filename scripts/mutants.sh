#!/usr/bin/env bash
# Mutation testing with cargo-mutants over the modules where a silent
# regression hurts most: each mutant (an operator flipped, a function body
# replaced by a default) is built and tested, and must be caught by a
# failing test. Equivalent mutants are excluded in .cargo/mutants.toml, one
# reason each.
#
#   bash scripts/mutants.sh                      # every module, in order
#   bash scripts/mutants.sh contracts gateway    # some of them
#
# Modules, their test command, and what they cost on 2 shared cores. The
# first run also builds cargo-mutants (~5 min) and the dependencies into
# the campaign's own target dir (~12 min for contracts, ~18 more for
# gateway, whose dev-dependencies bring the image codecs, ~10 more for
# optimizer); later runs reuse both.
#   contracts  src/options.rs, src/params.rs, src/render.rs
#              `cargo test -p nws-watermark --lib`
#              94 mutants, 1-2 s each: ~3 min
#   gateway    gateway/src/results/ (cache tiers, coalescing, Redis)
#              `cargo test -p gateway --lib`, against inline Storage and
#              Optimizer services and a real Redis (NWS_TEST_REDIS_URL, else
#              127.0.0.1:6379, else a private redis-server)
#              39 mutants, ~5 s each: ~6 min
#   optimizer  optimizer-svc/src/pipeline/{resize,encode}.rs, a subset of the
#              pipeline: their own unit tests (`cargo test -p optimizer-svc
#              --lib -- pipeline::resize pipeline::encode`), with the crate
#              built at opt-level 0 so a mutant rebuilds in seconds
#              47 mutants, ~4 s each: ~4 min
#
# Each module prints caught / viable per file (viable = caught + missed;
# unviable mutants do not build, and are counted apart, as are timeouts),
# and the missed mutants. The script fails when a module's score is under
# NWS_MUTANTS_MIN percent (85) or its baseline tests fail. Reports are kept
# under ~/.cache/nws-watermark/mutants/<module>/mutants.out.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}"
TOOLS="$CACHE/tools"
MUTANTS_VERSION=27.1.0
MIN_SCORE="${NWS_MUTANTS_MIN:-85}"
OUT="$CACHE/mutants"
# Mutants are built in a copy of the tree, in a target dir of their own:
# kept between runs (dependencies are built once), and apart from the
# shared one, so a campaign never waits on, or invalidates, other builds.
export CARGO_TARGET_DIR="${NWS_MUTANTS_TARGET_DIR:-$CACHE/mutants-target}"

step() { printf '\n==> %s\n' "$*"; }

if [ "$("$TOOLS/cargo-mutants/bin/cargo-mutants" mutants --version 2>/dev/null)" != "cargo-mutants $MUTANTS_VERSION" ]; then
  step "cargo-mutants $MUTANTS_VERSION (from crates.io; about 4 minutes to build)"
  CARGO_TARGET_DIR="$TOOLS/cargo-mutants-build" cargo install "cargo-mutants@$MUTANTS_VERSION" \
    --locked --root "$TOOLS/cargo-mutants"
  rm -rf "$TOOLS/cargo-mutants-build"
fi
export PATH="$TOOLS/cargo-mutants/bin:$PATH"

redis_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null; }

ensure_redis() {
  [ -n "${NWS_TEST_REDIS_URL:-}" ] && return
  if redis_answers 6379; then
    export NWS_TEST_REDIS_URL="redis://127.0.0.1:6379"
    return
  fi
  command -v redis-server >/dev/null || { echo "the gateway module needs Redis: start one on 127.0.0.1:6379 or set NWS_TEST_REDIS_URL" >&2; exit 1; }
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >/dev/null &
  REDIS_PID=$!
  trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do redis_answers "$REDIS_PORT" && break; sleep 0.1; done
  redis_answers "$REDIS_PORT" || { echo "the private redis-server did not start" >&2; exit 1; }
  export NWS_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
}

# Prints caught / viable per file from a report (caught.txt, missed.txt,
# unviable.txt, timeout.txt: one mutant a line, `file:line:col: what`), and
# the missed mutants; fails when the module's score is under the minimum.
score() {
  python3 - "$1/mutants.out" "$MIN_SCORE" <<'EOF'
import collections, sys
report, minimum = sys.argv[1], float(sys.argv[2])
per_file = collections.defaultdict(collections.Counter)
lines = {}
for outcome in ("caught", "missed", "unviable", "timeout"):
    lines[outcome] = open(f"{report}/{outcome}.txt").read().splitlines()
    for line in lines[outcome]:
        per_file[line.split(":", 1)[0]][outcome] += 1
total = collections.Counter()
print(f'{"file":<36} {"caught/viable":>13} {"score":>6} {"unviable":>8} {"timeout":>7}')
rows = sorted(per_file.items()) + [("module", None)]
for file, counts in rows:
    if counts is None:
        counts = total
    else:
        total += counts
    viable = counts["caught"] + counts["missed"]
    score = 100 * counts["caught"] / max(viable, 1)
    print(f'{file:<36} {counts["caught"]:>6}/{viable:<6} {score:>5.1f}% {counts["unviable"]:>8} {counts["timeout"]:>7}')
for line in lines["missed"] + lines["timeout"]:
    print("missed or timed out:", line)
if score < minimum:
    print(f"score under {minimum:g}%")
    sys.exit(1)
EOF
}

# run MODULE PACKAGE FILE... -- extra cargo-mutants arguments
run() {
  local module="$1" package="$2" files=() started
  shift 2
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do files+=(--file "$1"); shift; done
  [ "$#" -gt 0 ] && shift
  step "$module: cargo mutants -p $package ${files[*]} $*"
  started=$SECONDS
  mkdir -p "$OUT/$module"
  # Exit 2 (missed mutants) and 3 (timeouts) are judged by the score
  # below; 4 is failing baseline tests, in the unmutated copy.
  local rc=0
  cargo mutants --package "$package" "${files[@]}" --output "$OUT/$module" --jobs 1 "$@" || rc=$?
  echo "$module: $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s"
  if [ "$rc" -gt 3 ]; then
    echo "$module: cargo mutants failed (exit $rc): see $OUT/$module/mutants.out/log" >&2
    return 1
  fi
  score "$OUT/$module"
}

modules=("$@")
[ "${#modules[@]}" -gt 0 ] || modules=(contracts gateway optimizer)
status=0
for module in "${modules[@]}"; do
  case "$module" in
    contracts)
      run contracts nws-watermark src/options.rs src/params.rs src/render.rs -- --cargo-arg=--lib || status=1
      ;;
    gateway)
      ensure_redis
      run gateway gateway 'gateway/src/results/*.rs' -- --cargo-arg=--lib || status=1
      ;;
    optimizer)
      # libjpeg-turbo is built from source: cmake and nasm, as for the tests.
      # shellcheck source=scripts/build-tools.sh
      source scripts/build-tools.sh
      ensure_build_tools
      # The crate's own code unoptimised (a mutant rebuilds in seconds, not
      # minutes at opt-level 3); the files' own tests only, on small images.
      run optimizer optimizer-svc optimizer-svc/src/pipeline/resize.rs optimizer-svc/src/pipeline/encode.rs \
        -- --cargo-arg=--lib --cargo-arg=--config=profile.dev.package.optimizer-svc.opt-level=0 \
        -- -- pipeline::resize pipeline::encode || status=1
      ;;
    *)
      echo "unknown module $module: contracts, gateway, optimizer" >&2
      exit 64
      ;;
  esac
done
exit "$status"
