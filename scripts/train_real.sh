#!/usr/bin/env bash
# Train the three models (and the grade classifier) on real data, the paper's way, on GPUs.
#   scripts/train_real.sh /data/IDRiD /data/FGADR [GPUS]
# IDRiD's segmentation images carry no grade, so the ACGAN and the grade classifier train on FGADR
# (graded); the renderer and the segmenter train on both. See docs/datasets.md and docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
IDRID=${1:?path to the IDRiD folder}
FGADR=${2:?path to the FGADR folder}
GPUS=${3:-1}
PY=${PY:-.venv/bin/python}
RUN="$PY -m torch.distributed.run --standalone --nproc_per_node $GPUS"

$PY -m fundus_studio prepare idrid "$IDRID" --out data/idrid-train --split train --size 512
$PY -m fundus_studio prepare idrid "$IDRID" --out data/idrid-test --split test --size 512
$PY -m fundus_studio prepare fgadr "$FGADR" --out data/fgadr --split all --size 512

# Label maps: the flow-matching prior at 128² with its 128² → 512² upsampler (the default generator), and
# the paper's pixel-space ACGAN beside it (selectable with --generator acgan).
$RUN -m training.label_upsampler --data data/fgadr --out runs/label_upsampler-fgadr --preset gpu-128 \
    --export-to runs/checkpoints-real
$RUN -m training.label_flow --data data/fgadr --out runs/label_flow-fgadr --preset paper-gpu --export-to runs/checkpoints-real
$RUN -m training.acgan --data data/fgadr --out runs/acgan-fgadr --preset paper-256 --export-to runs/checkpoints-real
$PY -m training.grade_classifier --data data/fgadr --out runs/grade_classifier-fgadr --preset paper-256 \
    --export-to runs/checkpoints-real
$RUN -m training.spade --data data/fgadr --out runs/spade-fgadr --preset paper-512 --export-to runs/checkpoints-real
$RUN -m training.unet --data data/idrid-train --data data/fgadr --out runs/unet-real --preset paper-512 \
    --export-to runs/checkpoints-real
$PY -m training.evaluate_segmentation --checkpoint runs/checkpoints-real/unet.safetensors --data data/idrid-test
echo "start the studio on them: python app.py --checkpoints runs/checkpoints-real"
