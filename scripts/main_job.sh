#!/usr/bin/env bash
# The main job: show the default architecture.
set -euo pipefail
python3 -m convae summary "conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu conv(128,3,stride=2) bn relu dense(32)" --input-shape 1,28,28
