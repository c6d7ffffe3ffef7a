#!/usr/bin/env bash
# One benchmark sitting for PERFORMANCE.md: throughput (slmbench bench, and
# llama.cpp's llama-bench when LLAMA_BENCH points at one) and the suite
# workload of issue 7 (copa + arc_easy, --limit 300) per model, with wall
# time and peak RSS from /usr/bin/time. Figures are printed, never asserted.
#
#   benches/sitting.sh [MODEL...]          (default: the three base models)
#
# Environment:
#   SLMBENCH      slmbench binary (default: target/release/slmbench, built if missing)
#   DATA_DIR      evaluation data (default: ../shared/data)
#   THREADS       thread counts for bench (default: 1,2); the workload uses the last
#   REPS          bench repetitions (default: 3)
#   LLAMA_BENCH   llama-bench binary; skipped when unset
#   SKIP_BENCH=1  only the workload;  SKIP_WORKLOAD=1  only the throughput
#   OUT           where run directories go (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."

SLMBENCH=${SLMBENCH:-target/release/slmbench}
DATA_DIR=${DATA_DIR:-../shared/data}
THREADS=${THREADS:-1,2}
REPS=${REPS:-3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2-135m-instruct gemma3-270m qwen2.5-coder-1.5b-instruct)
[ -x "$SLMBENCH" ] || cargo build --release --quiet
[ -x /usr/bin/time ] || { echo "benches/sitting.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

cpu_field() { grep -m1 "^$1" /proc/cpuinfo | cut -d: -f2 | xargs; }
# Machines of one name differ (sessions 6-8 ran on a Zen 3, 9 on a Zen 4): say which.
simd=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile' | xargs)
echo "# sitting $(date -u +%FT%TZ) on $(cpu_field 'model name') (family $(cpu_field 'cpu family'), model $(cpu_field 'model'); $simd), $(nproc) threads"
echo "# slmbench $("$SLMBENCH" --version), load $(cut -d' ' -f1-3 /proc/loadavg)"

for m in "${models[@]}"; do
  "$SLMBENCH" fetch "$m" >/dev/null
done

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  for m in "${models[@]}"; do
    echo "## throughput: $m (load $(cut -d' ' -f1 /proc/loadavg))"
    if [ -n "${LLAMA_BENCH:-}" ]; then
      file=$("$SLMBENCH" fetch "$m" 2>/dev/null | tail -1 | cut -f2)
      "$LLAMA_BENCH" -m "$file" -p 512 -n 64 -t "$THREADS" -r "$REPS" -o md 2>/dev/null
    fi
    "$SLMBENCH" bench --model "$m" -p 512 -n 64 -t "$THREADS" -r "$REPS" -o md
  done
fi

if [ "${SKIP_WORKLOAD:-0}" != 1 ]; then
  t=${THREADS##*,}
  echo "## workload: copa + arc_easy --limit 300, $t threads"
  echo "| model | wall s | user s | peak RSS MiB |"
  echo "|---|---:|---:|---:|"
  for m in "${models[@]}"; do
    dir="$OUT/workload-$m"
    rm -rf "$dir"
    /usr/bin/time -o "$OUT/time-$m" -f "%e %U %M" \
      "$SLMBENCH" run --model "$m" --tasks copa,arc_easy --limit 300 \
      --data-dir "$DATA_DIR" --threads "$t" --out "$dir" >"$OUT/log-$m" 2>&1
    read -r wall user rss <"$OUT/time-$m"
    echo "| $m | $wall | $user | $((rss / 1024)) |"
  done
  echo "# run directories and logs: $OUT"
fi
