"""The one-class protocol on Fashion-MNIST: train on one class, score the test split, all classes against it.

    python3 benchmarks/one_class.py                      # the default preset, 15 epochs, each class in turn
    python3 benchmarks/one_class.py --classes 0,6 --epochs 5 --metrics ssim

For each class K: `convae.training.train` with ``normal_class=K`` (training and
validation images of class K only), then `convae.inference.anomaly.score` on the
official test split, where the other nine classes are the anomalies, with
each image score of --metrics (default: mse, the mean squared error, and knn,
the mean distance of the code to the 5 nearest training codes); prints each
class's image ROC-AUC and the mean per score, beside published figures of the
same protocol. The settings are the preset's recipe unless --set changes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import SRC, add_set_flag, parse_set

sys.path.insert(0, str(SRC))

# Mean image ROC-AUC over the ten classes, as published for this protocol.
PUBLISHED = {
    "Golan & El-Yaniv 2018, geometric transformations": 0.935,
    "OC-SVM on raw pixels": 0.928,
    "OC-SVM on CAE features": 0.917,
    "Deep SVDD (Ruff et al. 2018)": 0.892,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="normal classes, one run each")
    parser.add_argument("--arch", default="fmnist-32", help="preset or architecture (default fmnist-32)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--metrics", default="mse,knn", help="image scores, each measured on the same runs")
    add_set_flag(parser, "other training settings, KEY=VALUE")
    args = parser.parse_args()
    from convae.config import resolve_config
    from convae.inference.anomaly import score
    from convae.training.train import train

    extra = parse_set(parser, args.set)
    metrics = args.metrics.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(c) for c in args.classes.split(",")):
            config = resolve_config(
                dict(data="fashion-mnist", arch=args.arch, epochs=args.epochs, normal_class=k, quiet=True)
                | dict(histograms=False, embedding_samples=0, out=str(Path(tmp) / f"class{k}"))
                | extra
            )
            started = time.perf_counter()
            train(config)
            row = {"class": k}
            for metric in metrics:
                row[metric] = score(Path(tmp) / f"class{k}", metric=metric)["image_auroc"]
            row["minutes"] = (time.perf_counter() - started) / 60
            rows.append(row)
            shown = ", ".join(f"{m} {row[m]:.3f}" for m in metrics)
            print(f"class {k}: image ROC-AUC {shown} ({row['minutes']:.1f} min)", flush=True)
    for metric in metrics:
        mean = sum(r[metric] for r in rows) / len(rows)
        print(f"mean over {len(rows)} classes: {mean:.3f} ({args.arch}, {args.epochs} epochs, score {metric})")
    for name, value in PUBLISHED.items():
        print(f"  published: {name}: {value:.3f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
