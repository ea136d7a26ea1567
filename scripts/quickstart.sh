#!/usr/bin/env bash
# clipzoo quick start on a fresh machine: set up a virtual environment, then run the main job on the
# embedded default model, clipzoo/tiny-shapes (a tiny CLIP trained offline on generated shapes and
# shipped inside the package — nothing is downloaded).
#
# It runs `clipzoo demo --no-serve` (generate 300 captioned shapes, index them, print searches and a
# zero-shot classification), lists OpenAI's models, shows the tiny model's card and size, compares two
# drawn images with three texts, and evaluates the model on 300 held-out shapes with every image task.
# `clipzoo demo` (without --no-serve) then serves the search page on http://127.0.0.1:5020.
#
#   bash scripts/quickstart.sh            # OUT=/some/dir to write the files elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e '.[search,eval]'   # the demo indexes and serves; eval plots
export PATH="$PWD/.venv/bin:$PATH"

OUT=${OUT:-/tmp/clipzoo-quickstart}
mkdir -p "$OUT"
python - "$OUT" <<'PY'
import sys
from PIL import Image, ImageDraw

out = sys.argv[1]
red = Image.new("RGB", (96, 96), (90, 110, 100))
ImageDraw.Draw(red).ellipse([20, 20, 76, 76], fill=(225, 25, 25))
red.save(f"{out}/red-circle.png")
blue = Image.new("RGB", (96, 96), (150, 140, 120))
ImageDraw.Draw(blue).polygon([(48, 14), (84, 74), (12, 74)], fill=(35, 75, 230))
blue.save(f"{out}/blue-triangle.png")
PY

set -x
clipzoo demo --no-serve
clipzoo models --publisher openai --backend open_clip --id 'ViT-B*'
clipzoo info clipzoo/tiny-shapes
clipzoo compare clipzoo/tiny-shapes \
    --image "$OUT/red-circle.png" --image "$OUT/blue-triangle.png" \
    --text "a red circle" --text "a blue triangle" --text "a green star"
clipzoo data shapes --out "$OUT/shapes" -n 300 --label-key shape_color --two-object-prob 0 --no-progress --overwrite
clipzoo eval all -m clipzoo/tiny-shapes -d "$OUT/shapes" --output-dir "$OUT/results" \
    --no-progress > "$OUT/results.json"
cat "$OUT/results/report.md"
