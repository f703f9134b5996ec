#!/usr/bin/env bash
# GPU extraction throughput (issue 7): nagindex vs the upstream-style reference on a
# random-initialised model of Qwen3-1.7B-Base's shapes in bf16, max_length 120, at
# batch sizes 32-256. Needs no download: the tokenizer and a document sample come
# from CARRY (default .devcarry), made on a machine with the embedded backbone by
#   python benchmarks/gpu_extract_prepare.py .devcarry
# Figures land in $OUT (default ./runs/gpu).
set -uo pipefail
CARRY=${CARRY:-.devcarry}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_env.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_env.txt"
date -u | tee -a "$OUT/gpu_env.txt"
for bs in ${BATCHES:-32 64 128 256}; do
  echo "=== batch $bs" | tee -a "$OUT/gpu_extract.log"
  timeout 150 python3 benchmarks/bench_extract.py --device cuda --dtype bf16 --model-config qwen3-1.7b \
     --tokenizer "$CARRY/tok" --pool "$CARRY/docs.jsonl.gz" --n "${N:-4096}" --batch-size "$bs" --rounds 2 2>&1 \
     | tee -a "$OUT/gpu_extract.log"
done
