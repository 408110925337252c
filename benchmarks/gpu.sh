#!/usr/bin/env bash
# ResNet-18 fine-tuning at 224 px on one GPU: transferkit (AMP + channels_last + on-device
# preprocessing) vs the plain loop, images/s and epoch time, in one go. Needs torch,
# torchvision and timm installed; runs from the repository root without installing transferkit.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONPATH=src python benchmarks/gpu_bench.py --images "${IMAGES:-4096}" --epochs "${EPOCHS:-2}" --batch-size "${BATCH:-128}"
# Single-GPU DDP smoke run: torchrun with one process on the same synthetic-free built-in data.
rm -rf "${TMPDIR:-/tmp}/tk-ddp-smoke"  # a second run would find the first one's run directory
PYTHONPATH=src python -m torch.distributed.run --standalone --nproc_per_node=1 -m transferkit train \
  --data digits --model resnet18 --weights none --freeze none --image-size 64 --epochs 1 \
  --out "${TMPDIR:-/tmp}/tk-ddp-smoke" --quiet || echo "DDP smoke run failed"
