#!/usr/bin/env bash
# The lm-evaluation-harness side of issue 7's workload, for PERFORMANCE.md:
# copa + arc_easy (--limit 300) through lm-eval's `hf` backend in float32 on
# the same GGUF file slmbench uses (transformers dequantizes it), with wall
# time and peak RSS from /usr/bin/time. Nothing here is asserted.
#
#   benches/lm_eval_anchor.sh MODEL [MODEL...]
#
# Environment:
#   LMEVAL_VENV  virtualenv with lm-eval, torch, transformers, gguf
#                (default: $SLMBENCH_HOME or ~/.cache/slmbench, /lm-eval-venv;
#                created with pip on first use)
#   DATA_DIR     evaluation data (default: ../shared/data)
#   THREADS      torch threads (default: 2);  BATCH  lm-eval batch size (default: 16)
#   SLMBENCH     slmbench binary, used to fetch the model (default: target/release/slmbench)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: benches/lm_eval_anchor.sh MODEL [MODEL...]" >&2; exit 2; }

SLMBENCH=${SLMBENCH:-target/release/slmbench}
DATA_DIR=$(realpath "${DATA_DIR:-../shared/data}")
THREADS=${THREADS:-2}
BATCH=${BATCH:-16}
home=${SLMBENCH_HOME:-$HOME/.cache/slmbench}
VENV=${LMEVAL_VENV:-$home/lm-eval-venv}
[ -x "$SLMBENCH" ] || cargo build --release --quiet

if [ ! -x "$VENV/bin/lm_eval" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "lm-eval[hf]>=0.4.9,<0.5" gguf sentencepiece
fi
echo "# lm-eval $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lm-eval"), "torch", m.version("torch"), "transformers", m.version("transformers"))')"

# This repo's task files are lm-eval's definitions; point them at local JSON Lines.
tasks=$(mktemp -d)
sed -e "s|^task: copa|task: copa_local|" -e "/^dataset_name:/d" -e "/^tag:/,/^task:/{/^  - /d;/^tag:/d}" \
  -e "s|^dataset_path: .*|dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: $DATA_DIR/aps/super_glue/copa/train.jsonl\n    validation: $DATA_DIR/aps/super_glue/copa/validation.jsonl|" \
  suites/copa.yaml >"$tasks/copa_local.yaml"
arc=$DATA_DIR/allenai/ai2_arc/ARC-Easy
sed -e "s|^task: arc_easy|task: arc_easy_local|" -e "/^dataset_name:/d" -e "/^tag:/,/^task:/{/^  - /d;/^tag:/d}" \
  -e "s|^dataset_path: .*|dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: $arc/train.jsonl\n    validation: $arc/validation.jsonl\n    test: $arc/test.jsonl|" \
  suites/arc_easy.yaml >"$tasks/arc_easy_local.yaml"

echo "| model | wall s | user s | peak RSS MiB |"
echo "|---|---:|---:|---:|"
for m in "$@"; do
  file=$("$SLMBENCH" fetch "$m" | tail -1 | cut -f2)
  out=$(mktemp -d)
  HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$THREADS \
    /usr/bin/time -o "$out/time" -f "%e %U %M" \
    "$VENV/bin/lm_eval" --model hf \
    --model_args "pretrained=$(dirname "$file"),gguf_file=$(basename "$file"),dtype=float32" \
    --tasks copa_local,arc_easy_local --include_path "$tasks" --limit 300 \
    --batch_size "$BATCH" --device cpu --output_path "$out/results" >"$out/log" 2>&1 || {
    echo "lm-eval failed for $m; log: $out/log" >&2
    continue
  }
  read -r wall user rss <"$out/time"
  echo "| $m (lm-eval) | $wall | $user | $((rss / 1024)) |"
  grep -E "^\|(copa|arc)" "$out/log" | head -4 >&2 || true
done
