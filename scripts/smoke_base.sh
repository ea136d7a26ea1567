#!/usr/bin/env bash
# The base install alone (`pip install clipzoo`, no extras) in its own venv, .venv-base: the embedded model
# loads, embeds and compares; features behind an extra fail with one line naming it. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-base/bin/python ] || python3 -m venv .venv-base
.venv-base/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv-base/bin/python -m pip install --quiet -e .
.venv-base/bin/python scripts/smoke_base.py
