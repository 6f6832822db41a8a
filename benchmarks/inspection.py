"""Visual inspection on the synthetic set: image and pixel ROC-AUC and AUPRO, per defect type.

    python3 benchmarks/inspection.py                              # the inspection preset (DRAEM) and its recipe
    python3 benchmarks/inspection.py --arch ae-ssim               # the residual-only AE-SSIM preset
    python3 benchmarks/inspection.py --arch ae-ssim --size 256 --crop 128   # patches, sliding windows
    python3 benchmarks/inspection.py --ae-ssim --epochs 100       # Bergmann et al.'s nine layers
    python3 benchmarks/inspection.py --loss mse --metric mse      # the mean-error baseline

Writes `convae.data.synthetic.inspection_set` (160 normal 128x128 textures for
training; 20 normal and 20 of each defect, scratch, hole and stain, with
masks, for testing) to a temporary folder, trains the `inspection` preset
(or --arch) with its recipe (what is given here overrides it) on `mvtec:` it, and scores the test split with
`convae.inference.anomaly.score` (pixel maps: the segmenter's, or the squared residual, smoothed by a
4-pixel Gaussian). Prints one JSON line. Real photographs: benchmarks/real_inspection.py.
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
# Bergmann et al.'s nine layers to a one-pixel 100-d code (the inspection preset has four, to 32x8x8).
AE_SSIM = (
    "conv(32,4,stride=2) leakyrelu(0.2) conv(32,4,stride=2) leakyrelu(0.2) conv(32,3) leakyrelu(0.2) "
    "conv(64,4,stride=2) leakyrelu(0.2) conv(64,3) leakyrelu(0.2) conv(128,4,stride=2) leakyrelu(0.2) "
    "conv(64,3) leakyrelu(0.2) conv(32,3) leakyrelu(0.2) conv(100,8,padding=valid)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="inspection", help="preset or architecture (default: inspection)")
    parser.add_argument("--ae-ssim", action="store_true", help="Bergmann et al.'s AE-SSIM (AE_SSIM below)")
    parser.add_argument("--loss", help="training loss (default: the recipe's, or ssim)")
    parser.add_argument("--metric", default=None, help="image score (default: max of the smoothed map)")
    parser.add_argument("--epochs", type=int, help="default: the recipe's, or 30")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's, or 16")
    parser.add_argument("--crop", type=int, help="train on patches of this side (scored by sliding windows)")
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    args = parser.parse_args()
    from convae.config import resolve_config
    from convae.data.synthetic import inspection_set
    from convae.inference.anomaly import score
    from convae.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        root = inspection_set(Path(tmp) / "set", size=args.size)
        arch = AE_SSIM if args.ae_ssim else args.arch
        from convae import presets

        preset = presets.is_preset(arch)
        given = dict(loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, crop=args.crop)
        fallback = {} if preset else dict(loss="ssim", epochs=30, batch_size=16)
        settings = fallback | {k: v for k, v in given.items() if v is not None}
        settings |= dict(data=f"mvtec:{root}", arch=arch, quiet=True, histograms=False, out=str(Path(tmp) / "run"))
        config = resolve_config(settings)
        started = time.perf_counter()
        train(config)
        minutes = (time.perf_counter() - started) / 60
        r = score(Path(tmp) / "run", metric=args.metric)
    keys = ("image_auroc", "pixel_auroc", "aupro")
    row = {
        "arch": "bergmann" if args.ae_ssim else args.arch if preset else "custom",
        "loss": config.loss,
        "metric": r["metric"],
    }
    row |= {"epochs": config.epochs, "crop": config.crop, "size": args.size, "train_minutes": round(minutes, 1)}
    row |= {k: round(r[k], 3) for k in keys}
    row["per_type"] = {t: {k: round(v[k], 3) for k in keys} for t, v in r["per_type"].items()}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
