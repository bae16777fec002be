#!/usr/bin/env bash
# Monocular training from scratch with an MS warm start, as measured for README "Results", finding 2 (at
# 500 + 500 steps it did NOT fix monocular training: the MS stage's pose net had not found the forward motion
# yet and the M stage degraded depth): first MS (the stereo pair fixes the scale), then M with the learned pose
# net, every network starting from the MS run (model.init_from). Both stages are ordinary md2bench runs in one MLflow
# experiment ("mono-warm-start"), with val/pose/t_cos etc. logged against the world's exact poses.
#
#   experiments/mono_warm_start.sh SEED [MS_STEPS] [M_STEPS] [OUT]      (default 500 500 md2bench_runs/mono-warm-start)
#
# 192x64, batch 8, lr 1e-4, the "default" synthetic world (rendered into .md2bench_cache/ on first use).
set -euo pipefail
seed=${1:?usage: $0 SEED [MS_STEPS] [M_STEPS] [OUT]}
ms_steps=${2:-500}
m_steps=${3:-500}
out=${4:-md2bench_runs/mono-warm-start}
common=(data.synth_preset=default data.height=64 data.width=192 train.batch_size=8 model.pretrained=scratch
        train.epochs=100 train.lr_step_epoch=100 train.val_batches=4 train.seed="$seed")
md2bench train synth "${common[@]}" data.mode=MS train.max_steps="$ms_steps" train.out_dir="$out/ms-seed$seed" \
  --experiment mono-warm-start --run-name "ms/seed$seed" --no-progress "${@:5}"
ckpt=$(ls -d "$out/ms-seed$seed"/*/checkpoint.pt | head -n 1)
md2bench train synth "${common[@]}" data.mode=M train.max_steps="$m_steps" model.init_from="$(realpath "$ckpt")" \
  train.out_dir="$out/m-seed$seed" --experiment mono-warm-start --run-name "m-from-ms/seed$seed" --no-progress "${@:5}"
