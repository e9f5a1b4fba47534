#!/usr/bin/env bash
# Regenerate every shipped demo checkpoint in checkpoints/ from scratch, on the CPU.
# About 5 hours on 2 cores (phantoms 7 min, label upsampler 32, flow prior ≈ 80, ACGAN 13, grade
# classifier 15, SPADE 42 + 100 (256² detail) + 70 (512²), U-Net 13, label calibration 10).
# Each training step resumes: re-running this script after an interruption continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/phantoms-train}
OUT=${OUT:-checkpoints}
export OMP_WAIT_POLICY=PASSIVE  # one thread per job: spinning OpenMP threads crawl on a busy 2-core machine

$PY -m fundus_studio phantom --out "$DATA" --count 3000 --size 512 --seed 1
# The default label-map generator: the flow-matching prior over 64² soft maps and its 512² upsampler.
$PY -m training.label_upsampler --data "$DATA" --out runs/label_upsampler-demo --preset demo-cpu --threads 1 \
    --export-to "$OUT"
$PY -m training.label_flow --data "$DATA" --out runs/label_flow-demo --preset demo-cpu --threads 2 \
    --steps "${FLOW_STEPS:-4000}" --export-to "$OUT"
# Each lesion class's share per grade as in the training maps (refitted after every new prior or upsampler).
$PY -m training.calibrate_labels --checkpoints "$OUT" --data "$DATA"
# The paper's generator, selectable with --generator acgan.
$PY -m training.acgan --data "$DATA" --out runs/acgan-demo --preset demo-cpu --threads 1 --steps 3000 \
    --export-to "$OUT"
$PY -m training.grade_classifier --data "$DATA" --out runs/grade_classifier-demo --preset demo-cpu --threads 1 \
    --set map_resolution=64 --set downsample=keep-lesions --export-to "$OUT"
$PY -m training.spade --data "$DATA" --out runs/spade-demo --preset demo-cpu --threads 2 --steps 2000
# Fine-tuned with the detail loss (the contrast of vessels and lesions) at 256², then at 512², the side the
# studio renders at (docs/spade_training.md; the shipped lineage ran the 256² part as two runs).
$PY -m training.spade --data "$DATA" --out runs/spade-detail --preset demo-cpu --threads 2 --steps 8000 \
    --init runs/spade-demo/spade.safetensors --set detail_weight=20 --set ema=true --set ema_half_life_images=1000
$PY -m training.spade --data "$DATA" --out runs/spade-512 --preset demo-cpu --threads 2 --steps "${SPADE_512_STEPS:-3000}" \
    --init runs/spade-detail/spade.safetensors --set resolution=512 --set batch=1 --set downsample=nearest \
    --set detail_weight=20 --set ema=true --set ema_half_life_images=1000
# Disc and vessels too: the quality report's render stage (fundus-studio evaluate) scores them; the
# studio's photo → label map path takes only the lesion channels (disc and vessels come classically).
$PY -m training.unet --data "$DATA" --out runs/unet-demo --preset demo-cpu --threads 1 \
    --classes optic_disc vessel microaneurysm haemorrhage hard_exudate soft_exudate neovascularisation irma
# The renderer and the segmenter ship in float16 (half the size; renders differ by at most a grey level).
$PY -m training.export_checkpoint runs/spade-512/spade.safetensors runs/spade-512/spade_encoder.safetensors \
    runs/unet-demo/unet.safetensors --to "$OUT" --half
echo "checkpoints written to $OUT"
