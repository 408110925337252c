#!/usr/bin/env bash
# The fast-path benchmarks of benchmarks/RESULTS.md, in one go, on an otherwise idle machine.
# Each prints JSON; the demo prints its own summary and /usr/bin/time its peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=src
$PY benchmarks/bench_fastpath.py --scenario pipeline --size 64
$PY benchmarks/bench_fastpath.py --scenario head --size 64 --train-limit 10000 --epochs 10
$PY benchmarks/bench_fastpath.py --scenario partial --size 64 --train-limit 10000 --epochs 2
# The demo from a cold feature cache, as a first-time user runs it.
XDG_CACHE_HOME=$(mktemp -d) /usr/bin/time -v .venv/bin/transferkit demo --out runs/demo-bench --quiet 2>&1 \
  | grep -E "recipe|test set|time |Maximum resident|Elapsed"
