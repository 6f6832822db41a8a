"""How cheap can the patch memory of ``--metric max+patch`` be: fewer patches, a coarser grid, PCA.

    python3 benchmarks/real_inspection.py --methods inspection --keep /tmp/ri   # train, keep the runs
    python3 research/patch_memory.py /tmp/ri brick                              # variants on brick

For each kept ``run-CATEGORY-inspection`` run named, scores the test split as ``max+patch`` does
(``convae.inference.anomaly.with_patches``: the ``max`` score and map plus the patch distances,
each standardised on the validation split) with the memory and grid varied: the number of patches
drawn, the grid the distances are computed on, and patches projected on their first principal
components. Prints image / pixel ROC-AUC, AUPRO and test images a second for the distances.
Decide on brick alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convae.inference.anomaly import anomaly_scores
from convae.inference.patches import PATCH, patch_maps, patch_memory
from convae.inference.run import dataset_split, load
from convae.metrics import aupro

VARIANTS = [(20_000, 2, 0), (5_000, 2, 0), (20_000, 4, 0), (20_000, 2, 32), (5_000, 4, 0)]  # (bank, stride, pca)


def projected_maps(x: np.ndarray, memory: torch.Tensor, components: int, stride: int) -> np.ndarray:
    """As ``patch_maps``, with patches and memory projected on the memory's first principal components."""
    mean = memory.mean(0)
    basis = torch.linalg.svd(memory - mean, full_matrices=False)[2][:components].T
    reference = (memory - mean) @ basis
    rows, cols = x.shape[2] - PATCH + 1, x.shape[3] - PATCH + 1
    out = []
    for image in torch.as_tensor(x):
        grid = F.unfold(image[None], PATCH)[0].T.reshape(rows, cols, -1)[::stride, ::stride]
        shape = grid.shape[:2]
        near = torch.cdist((grid.reshape(-1, grid.shape[-1]) - mean) @ basis, reference).min(1).values
        inner = F.interpolate(near.reshape(1, 1, *shape), size=(rows, cols), mode="bilinear", align_corners=True)
        out.append(F.pad(inner, (PATCH // 2,) * 4, mode="replicate")[0, 0])
    return torch.stack(out).numpy()


def main() -> None:
    root, categories = Path(sys.argv[1]), sys.argv[2].split(",")
    for name in categories:
        run = load(root / f"run-{name}-inspection")
        train, _, _ = dataset_split(run, None, "train")
        val, _, _ = dataset_split(run, None, "val")
        test, y, dataset = dataset_split(run, None, "test")
        masks = dataset.masks[:, 0]
        score_val, map_val = anomaly_scores(run, val, "max")
        score_test, map_test = anomaly_scores(run, test, "max")
        for bank, stride, pca in VARIANTS:
            memory = patch_memory(train, bank=bank)

            def distances(x: np.ndarray, memory=memory, stride=stride, pca=pca) -> np.ndarray:
                return projected_maps(x, memory, pca, stride) if pca else patch_maps(x, memory, stride=stride)

            started = time.perf_counter()
            d_test = distances(test)
            per_s = len(test) / (time.perf_counter() - started)
            d_val = distances(val)

            def z(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
                return (a - ref.mean()) / (ref.std() or 1.0)

            def peak(m: np.ndarray) -> np.ndarray:
                return m.reshape(len(m), -1).max(1)

            score = z(score_test, score_val) + z(peak(d_test), peak(d_val))
            amap = z(map_test, map_val) + z(d_test, d_val)
            row = {"category": name, "bank": bank, "stride": stride, "pca": pca, "images_per_s": round(per_s, 1)}
            row["image"] = round(float(roc_auc_score(y != 0, score)), 3)
            row["pixel"] = round(float(roc_auc_score(masks.ravel() > 0, amap.ravel())), 3)
            row["aupro"] = round(aupro(masks, amap), 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
