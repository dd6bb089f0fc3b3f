#!/usr/bin/env bash
# GPU benchmark: our DreamBooth/LoRA vs diffusers' scripts (s/step, peak memory) and generate vs plain pipeline.
#
#   bash benchmarks/gpu/run.sh [--tiny] [--out DIR] [--work DIR] [--examples DIR] [--steps N] [...]
#
# --tiny: the tiny test model on CPU (the CI smoke test). Otherwise an SD-1.5-shaped model with random weights at
# 512 px, about 7 minutes on one H100. Writes DIR/results.json and DIR/results.md (default outputs/gpu-bench).
# Nothing is downloaded or installed; optional packages (xformers, bitsandbytes, deepspeed) are used if present.
# PYTHON=/path/to/python picks the interpreter (default: python on PATH, else python3).
# Exit status: non-zero if one of our arms failed; skipped arms and failing diffusers arms do not count.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"
exec "$python" "$here/bench.py" "$@"
