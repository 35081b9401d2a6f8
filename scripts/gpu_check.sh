#!/usr/bin/env bash
# The GPU verification, as one script for a machine with CUDA (a lent device machine):
# the gpu-marked tests, BBC News on the GPU, and a synthetic 100M-token run (tokens/s and peak
# GPU memory land in its metrics.json). Run from the repository root after scripts/setup.sh
# with a CUDA build of torch 2.13.0. Prints each run's metrics; writes under ${OUT:-outputs}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
$PY -m pytest -q -m gpu tests/test_gpu.py
show() { $PY -c 'import json,sys; m=json.load(open(sys.argv[1])); print({k: m[k] for k in sys.argv[2:] if k in m})' "$@"; }
$PY -m nlp_adagrad.train trainer.device=cuda trainer.progress=false hydra.run.dir="$OUT/gpu_bbc"
show "$OUT/gpu_bbc/metrics.json" test/accuracy train/tokens_per_sec train/peak_gpu_memory_mb
$PY -m nlp_adagrad.train trainer.device=cuda trainer.progress=false data=synthetic \
    data.num_docs=1000000 data.doc_length=100 data.vocab_size=1000000 trainer.epochs=1 \
    trainer.batch_size=1024 tokenizer.cache=false hydra.run.dir="$OUT/gpu_synthetic_100m"
show "$OUT/gpu_synthetic_100m/metrics.json" test/accuracy train/tokens train/tokens_per_sec \
    train/prepare_seconds train/peak_gpu_memory_mb
