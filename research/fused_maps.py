"""DRAEM's segmenter map and a raw-pixel patch kNN map, fused: two ways compared on kept runs, no training.

    python3 benchmarks/real_inspection.py --methods inspection --keep /tmp/ri   # train, keep the runs
    python3 research/fused_maps.py /tmp/ri                                      # score them fused

Whether the two kinds of evidence add up: the segmenter (trained on synthetic anomalies) and the
nearest-neighbour distance of each 9x9 pixel patch to the training crops' patches
(``convae.inference.patches``, the benchmark's ``knn`` baseline, its memory built from the run's
training split only). Each map is put on one
scale with no parameter to tune: z-scores against its own pixels on the run's validation images
(normal crops no method trained on); the fused map is their sum. Image score: the fused map's peak
(and, as a second reading, the sum of each map's peak z-scored against the validation images'
peaks). Pixel metrics on the fused map, the segmenter's map smoothed as convae scores it. Decide on
brick alone; the other categories are read, never tuned on. The second reading is what became
``convae score --metric max+patch`` (``convae.inference.anomaly.with_patches``).
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
from convae.inference.patches import patch_maps, patch_memory
from convae.inference.run import dataset_split, load
from convae.inference.scoring import smooth

HELD_OUT = ("scratch", "crack", "warp")  # the benchmark's kinds its anomaly generator never makes

BLUR = 4.0  # convae's smoothing of the segmenter's map for pixel metrics


def segmenter_maps(run, x: np.ndarray) -> np.ndarray:
    scorer = run.scorer("max")
    with torch.no_grad():
        return torch.cat([scorer.residual(part)[1] for part in torch.as_tensor(x).split(16)]).numpy()


def measures(image: np.ndarray, pixel: np.ndarray, y: np.ndarray, masks: np.ndarray, kinds: list[str]) -> dict:
    row = {
        "image": roc_auc_score(y != 0, image),
        "pixel": roc_auc_score(masks.ravel() > 0, pixel.ravel()),
        "aupro": aupro(masks, pixel),
    }
    held = [k for k, name in enumerate(kinds) if name in HELD_OUT]
    keep = np.isin(y, [0, *held])
    row["held_image"] = roc_auc_score(y[keep] != 0, image[keep])
    return {k: round(float(v), 3) for k, v in row.items()}


def main() -> None:
    root = Path(sys.argv[1])
    for run_dir in sorted(root.glob("run-*-inspection")):
        run = load(run_dir)
        train, _, _ = dataset_split(run, None, "train")
        val, _, _ = dataset_split(run, None, "val")
        test, y, dataset = dataset_split(run, None, "test")
        masks = dataset.masks[:, 0]
        seg_val, seg_test = segmenter_maps(run, val), segmenter_maps(run, test)
        memory = patch_memory(train)
        knn_val, knn_test = patch_maps(val, memory), patch_maps(test, memory)
        blur_val = smooth(torch.as_tensor(seg_val), BLUR).numpy()
        blur_test = smooth(torch.as_tensor(seg_test), BLUR).numpy()

        def z(m: np.ndarray, ref: np.ndarray) -> np.ndarray:
            return (m - ref.mean()) / (ref.std() + 1e-12)

        def peak(m: np.ndarray) -> np.ndarray:
            return m.reshape(len(m), -1).max(1)

        fused = z(seg_test, seg_val) + z(knn_test, knn_val)
        fused_pixel = z(blur_test, blur_val) + z(knn_test, knn_val)
        peaks = z(peak(seg_test), peak(seg_val)) + z(peak(knn_test), peak(knn_val))
        kinds = list(dataset.classes)
        row = {"category": run_dir.name.split("-")[1], "val_images": len(val), "train_images": len(train)}
        row["segmenter"] = measures(peak(seg_test), blur_test, y, masks, kinds)
        row["knn"] = measures(peak(knn_test), knn_test, y, masks, kinds)
        row["fused"] = measures(peak(fused), fused_pixel, y, masks, kinds)
        row["fused_peaks"] = measures(peaks, fused_pixel, y, masks, kinds)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
