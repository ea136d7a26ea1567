#!/usr/bin/env bash
# clipzoo quick start on a fresh machine: set up a virtual environment, then run the main job.
#
# Until clipzoo ships an embedded default model, the job runs on a tiny model with random weights
# that this script writes (no download): it lists OpenAI's models, shows the tiny model's size, and
# compares two generated images with two texts, then evaluates it on 300 generated shapes. Random weights give meaningless probabilities; swap
# in a real model (e.g. `clipzoo compare openai/ViT-B-32 …`) where its weights can be downloaded.
#
#   bash scripts/quickstart.sh            # TINY=/some/dir to write the tiny model elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e .
export PATH="$PWD/.venv/bin:$PATH"

TINY=${TINY:-/tmp/clipzoo-tiny}
python -m clipzoo.testing.tiny "$TINY"
python - "$TINY" <<'PY'
import sys
from PIL import Image, ImageDraw

out = sys.argv[1]
red = Image.new("RGB", (96, 96), "white")
ImageDraw.Draw(red).ellipse([12, 12, 84, 84], fill=(220, 30, 30))
red.save(f"{out}/red-circle.png")
blue = Image.new("RGB", (96, 96), "white")
ImageDraw.Draw(blue).rectangle([16, 16, 80, 80], fill=(30, 60, 220))
blue.save(f"{out}/blue-square.png")
PY

set -x
clipzoo models --publisher openai --backend open_clip --id 'ViT-B*'
clipzoo info "$TINY/tiny-open_clip.safetensors"
clipzoo compare "$TINY/tiny-open_clip.safetensors" \
    --image "$TINY/red-circle.png" --image "$TINY/blue-square.png" \
    --text "a red circle" --text "a blue square"
clipzoo data shapes --out "$TINY/shapes" -n 300 --no-progress --overwrite
clipzoo eval all -m "$TINY/tiny-open_clip.safetensors" -d "$TINY/shapes" --output-dir "$TINY/results" \
    --no-progress > "$TINY/results.json"
cat "$TINY/results/report.md"
