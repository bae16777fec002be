#!/usr/bin/env bash
# One lent-GPU session: the throughput benchmark and as much of the synthetic ablation grid as the time allows, then
# its report in reports/synth-ablation/ (paper and synthetic presets, 1/2/4 runs packed on the GPU, the loader at 640x192).
# Usage (device tool, repo root, with MLflow and Optuna wheels for the device's Python carried in .whl/: fill it
# here first with `bash experiments/gpu-wheels.sh`, about 35 MB, and name .whl in the call's carry):
#   bash experiments/gpu-session.sh GRID_SECONDS
set -u
GRID_SECONDS=${1:-200}
OUT=${OUT:-out}; mkdir -p "$OUT"
if ! python3 -c "import mlflow" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
b() { timeout 150 python3 -m md2bench bench "$@" --json 2>&1 | tee -a "$OUT/bench.log" | tail -1 >> "$OUT/bench.jsonl"; }
# paper preset: 640x192, batch 12, bf16 + channels-last (train step only: no KITTI here)
b paper model.pretrained=scratch --parts train --steps 10 --warmup 5
# synthetic preset 320x96 batch 12: step, loader, renderer, and 1/2/4 runs sharing the GPU
b synth data.num_workers=4 --parts train,loader,render --steps 10 --warmup 5 --concurrent 1,2,4
# loader at the paper's 640x192, batch 12, from a world rendered at that size
python3 -m md2bench data synth --out /tmp/w640 --preset small --height 192 --width 640 --frames 24 > /dev/null 2>&1
b synth data.path=/tmp/w640 data.height=192 data.width=640 train.batch_size=12 data.num_workers=8 --parts loader
# the synthetic ablation: render the world once, then the grid (seed-major) within GRID_SECONDS
python3 -m md2bench data synth --out .md2bench_cache/synth/default-0 --preset default 2>&1 | tail -2 | tee -a "$OUT/grid.log"
export OMP_NUM_THREADS=2
timeout -s INT "$GRID_SECONDS" python3 -m md2bench run-ablation experiments/synth-ablation.toml --gpus all --runs-per-gpu 6 2>&1 | tail -40 >> "$OUT/grid.log"
sleep 5
timeout 90 python3 -m md2bench report synth-ablation --out reports/synth-ablation 2>&1 | tail -20 >> "$OUT/grid.log"
tar czf "$OUT/report.tgz" reports/synth-ablation mlruns.db 2>/dev/null
ls -la "$OUT"
