#!/usr/bin/env bash
# The main job: train the default preset on Fashion-MNIST (scikit-learn's digits
# when Fashion-MNIST is nowhere to be found), evaluate it against PCA, and say
# where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=fashion-mnist
if ! python3 -c "from convae.data.sources import load; load('fashion-mnist', download=False)" 2>/dev/null; then
    if python3 -c "from convae.data.sources import load; load('fashion-mnist')" 2>/dev/null; then
        :
    else
        echo "main job: Fashion-MNIST is not available (apt-get install dataset-fashion-mnist); using scikit-learn's digits instead" >&2
        DATA=digits
    fi
fi
OUT=${OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}
start=$(date +%s)
python3 -m convae train --data "$DATA" --out "$OUT" "$@"
python3 -m convae eval "$OUT"
echo "time:         $(( $(date +%s) - start )) s"
echo "tensorboard:  tensorboard --logdir runs   (then open http://localhost:6006)"
echo "pictures:     $OUT/reconstructions.png, $OUT/loss_curves.png, $OUT/codes_map.png"
