"""How DRAEM's map becomes an image score and a pixel map: variants compared on kept runs, no training.

    python3 benchmarks/real_inspection.py --methods inspection --keep /tmp/ri   # train, keep the runs
    python3 research/image_scores.py /tmp/ri                                    # score them every way

For each kept ``run-CATEGORY-inspection`` run it computes the segmenter's raw probability map of
every test image once, then image ROC-AUC for several image scores (the map's peak, as convae
scores today; the mean of its k highest pixels; the peak after a small blur) and pixel ROC-AUC /
AUPRO for several blurs of the map. Decide on brick alone (the category tuned on); the other
categories are read, never tuned on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convae.inference.anomaly import aupro
from convae.inference.run import dataset_split, load
from convae.inference.scoring import smooth

IMAGE_SCORES = {
    "max": lambda m: m.amax(1),
    **{f"top{k}": (lambda m, k=k: m.topk(k, dim=1).values.mean(1)) for k in (10, 50, 200)},
}
BLURS = (0.0, 1.0, 2.0, 4.0, 8.0)


def raw_maps(run_dir: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    run = load(run_dir)
    x, y, dataset = dataset_split(run, None, "test")
    scorer = run.scorer("max")
    with torch.no_grad():
        maps = torch.cat([scorer.residual(part)[1] for part in torch.as_tensor(x).split(16)])
    return maps, y, dataset.masks[:, 0]


def main() -> None:
    root = Path(sys.argv[1])
    for run_dir in sorted(root.glob("run-*-inspection")):
        maps, y, masks = raw_maps(run_dir)
        flat = maps.reshape(len(maps), -1)
        row: dict = {"category": run_dir.name.split("-")[1]}
        for name, score in IMAGE_SCORES.items():
            row[f"image_{name}"] = round(float(roc_auc_score(y != 0, score(flat).numpy())), 3)
        for sigma in (1.0, 2.0):
            peak = smooth(maps, sigma).reshape(len(maps), -1).amax(1).numpy()
            row[f"image_max_blur{sigma:g}"] = round(float(roc_auc_score(y != 0, peak)), 3)
        for sigma in BLURS:
            m = smooth(maps, sigma).numpy()
            row[f"pixel_blur{sigma:g}"] = round(float(roc_auc_score(masks.ravel() > 0, m.ravel())), 3)
            row[f"aupro_blur{sigma:g}"] = round(aupro(masks, m), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
