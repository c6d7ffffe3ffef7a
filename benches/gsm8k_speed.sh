#!/usr/bin/env bash
# Generation speed for PERFORMANCE.md: GSM8K (5-shot, greedy, --limit N)
# through slmbench (quantized and f32) and through lm-eval's `hf` backend
# (float32, batch size 1, the same GGUF file, which transformers
# dequantizes), one after the other; then decoding speed, `slmbench bench`
# against llama.cpp's `llama-bench` with `-p 512 -n 128`. Prints figures;
# asserts nothing. Run it with nothing else busy on the machine.
#
#   benches/gsm8k_speed.sh [MODEL]          # default smollm2-135m-instruct
#
# Environment:
#   LIMIT        documents (default 100)
#   THREADS      threads for every engine (default 2)
#   DATA_DIR     evaluation data (default ../shared/data)
#   LMEVAL_VENV  virtualenv with lm-eval (default $SLMBENCH_HOME/lm-eval-venv,
#                created with pip on first use; SKIP_LMEVAL=1 skips it)
#   LLAMA_BENCH  llama-bench binary (unset: skipped; scripts/llama-server.sh's
#                build tree has it after `cmake --build build --target llama-bench`)
#   SLMBENCH     slmbench binary (default target/release/slmbench)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2-135m-instruct}
LIMIT=${LIMIT:-100}
THREADS=${THREADS:-2}
DATA_DIR=$(realpath "${DATA_DIR:-../shared/data}")
SLMBENCH=${SLMBENCH:-target/release/slmbench}
home=${SLMBENCH_HOME:-$HOME/.cache/slmbench}
VENV=${LMEVAL_VENV:-$home/lm-eval-venv}
[ -x "$SLMBENCH" ] || cargo build --release --quiet
file=$("$SLMBENCH" fetch "$MODEL" | tail -1 | cut -f2)
work=$(mktemp -d)

echo "| engine | dtype | wall s | user s | peak RSS MiB | TTFT p50 ms | decode t/s p50 |"
echo "|---|---|---:|---:|---:|---:|---:|"
for dtype in quantized f32; do
  /usr/bin/time -o "$work/time-$dtype" -f "%e %U %M" \
    "$SLMBENCH" run --model "$MODEL" --tasks gsm8k --limit "$LIMIT" --dtype "$dtype" \
    --threads "$THREADS" --data-dir "$DATA_DIR" --out "$work/run-$dtype" >/dev/null 2>&1
  read -r wall user rss <"$work/time-$dtype"
  gen=$(python3 -c "import json,sys; g=json.load(open(sys.argv[1]))['cells'][0]['generation']; print(round(g['ttft']['p50_ms']), round(g['decode_tokens_per_s_p50'], 1))" "$work/run-$dtype/results.json")
  echo "| slmbench | $dtype | $wall | $user | $((rss / 1024)) | ${gen% *} | ${gen#* } |"
done

if [ "${SKIP_LMEVAL:-0}" != 1 ]; then
  if [ ! -x "$VENV/bin/lm_eval" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "lm-eval[hf]>=0.4.9,<0.5" gguf sentencepiece
  fi
  mkdir -p "$work/tasks"
  g=$DATA_DIR/openai/gsm8k/main
  sed -e "s|^task: gsm8k|task: gsm8k_local|" -e "/^dataset_name:/d" -e "/^tag:/,/^task:/{/^  - /d;/^tag:/d}" \
    -e "s|^dataset_path: .*|dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: $g/train.jsonl\n    test: $g/test.jsonl|" \
    suites/gsm8k.yaml >"$work/tasks/gsm8k_local.yaml"
  HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$THREADS \
    /usr/bin/time -o "$work/time-lmeval" -f "%e %U %M" \
    "$VENV/bin/lm_eval" --model hf \
    --model_args "pretrained=$(dirname "$file"),gguf_file=$(basename "$file"),dtype=float32" \
    --tasks gsm8k_local --include_path "$work/tasks" --limit "$LIMIT" \
    --batch_size 1 --device cpu >"$work/lmeval.log" 2>&1 || {
    echo "lm-eval failed; log: $work/lmeval.log" >&2
    exit 1
  }
  read -r wall user rss <"$work/time-lmeval"
  echo "| lm-eval $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lm-eval"))') (hf) | f32 | $wall | $user | $((rss / 1024)) | | |"
  grep -E "^\|gsm8k" "$work/lmeval.log" >&2 || true
fi

echo
echo "decoding, -p 512 -n 128, $THREADS threads:"
"$SLMBENCH" bench --model "$MODEL" -p 512 -n 128 -t "$THREADS" -r 3 | grep -E "pp512|tg128"
if [ -n "${LLAMA_BENCH:-}" ]; then
  "$LLAMA_BENCH" -m "$file" -p 512 -n 128 -t "$THREADS" -r 3 | grep -E "pp512|tg128"
fi
echo "(runs kept in $work)"
