"""Visual inspection on the synthetic set: image and pixel ROC-AUC and AUPRO, per defect type.

    python3 benchmarks/inspection.py                              # loss ssim, image score max, 30 epochs
    python3 benchmarks/inspection.py --loss mse --metric mse      # the mean-error baseline

Writes `convae.synthetic.inspection_set` (160 normal 128x128 textures for
training; 20 normal and 20 of each defect, scratch, hole and stain, with
masks, for testing) to a temporary folder, trains the convolutional
autoencoder below on `mvtec:` it, and scores the test split with
`convae.anomaly.score` (pixel maps: squared residual smoothed by a 4-pixel
Gaussian). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import SRC

sys.path.insert(0, str(SRC))
ARCH = "conv(32,4,stride=2) relu conv(32,4,stride=2) relu conv(64,4,stride=2) relu conv(64,3,stride=2) relu conv(32,3)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", default="ssim", help="training loss (default ssim)")
    parser.add_argument("--metric", default=None, help="image score (default: max of the smoothed map)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", default=ARCH)
    args = parser.parse_args()
    from convae.anomaly import score
    from convae.config import resolve_config
    from convae.synthetic import inspection_set
    from convae.train import train

    with tempfile.TemporaryDirectory() as tmp:
        root = inspection_set(Path(tmp) / "set")
        settings = dict(data=f"mvtec:{root}", arch=args.arch, loss=args.loss, epochs=args.epochs, batch_size=16)
        started = time.perf_counter()
        train(resolve_config(settings | dict(quiet=True, histograms=False, out=str(Path(tmp) / "run"))))
        minutes = (time.perf_counter() - started) / 60
        r = score(Path(tmp) / "run", metric=args.metric)
    keys = ("image_auroc", "pixel_auroc", "aupro")
    row = {"loss": args.loss, "metric": r["metric"], "epochs": args.epochs, "train_minutes": round(minutes, 1)}
    row |= {k: round(r[k], 3) for k in keys}
    row["per_type"] = {t: {k: round(v[k], 3) for k in keys} for t, v in r["per_type"].items()}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
