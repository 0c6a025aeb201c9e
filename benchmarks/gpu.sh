#!/usr/bin/env bash
# GPU benchmark, under 5 minutes on one H100: sdaudit's extraction and full-audit images/s for the
# architecture-only SD-1.5 and SD-2.1 U-Nets at 512 px (float16, SDPA attention), the achieved model
# FLOP/s against the card's peak (FLOPs counted with torch.utils.flop_counter on one forward), and
# sdhelper 1.0.0's images/s on the same card with the same images, layers and batch.
#
#   bash benchmarks/gpu.sh                     # both models, ~4 min
#   bash benchmarks/gpu.sh --models arch:sd15  # one model
#   bash benchmarks/gpu.sh --compile           # also torch.compile (adds minutes of compilation)
#   PEAK_TFLOPS=989 bash benchmarks/gpu.sh     # override the card's peak (dense fp16 TFLOP/s)
#
# Writes gpu.json to $OUT (or --out DIR) when set. Needs a CUDA GPU; nothing here downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
exec timeout 295 python benchmarks/gpu_bench.py --budget-s 270 "$@"
