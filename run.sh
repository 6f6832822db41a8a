#!/usr/bin/env bash
# Set everything up, then run the main job.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec bash scripts/main_job.sh "$@"
