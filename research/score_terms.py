"""What else ``max+patch`` could read, and how: variants on kept runs, no training.

    python3 benchmarks/real_inspection.py --methods inspection --keep /tmp/ri   # train, keep the runs
    python3 research/score_terms.py /tmp/ri [CATEGORIES]                        # score them

``max+patch`` sums three terms, each standardised on the run's validation crops: the segmenter's
map and the raw patch distances at full and half resolution. The benchmark's good test crops
come from rows of the photograph that training never saw, and their terms stand 1-7 validation
deviations above the validation crops'; where the maps find a defect the image score may still
not (gravel's foreign blobs: pixel ROC-AUC 0.969, image 0.615). Variants:

- ``convae``: as the library scores (each term's peak summed; the maps summed);
- ``relative``: each term's map minus its own median over the image, before peak and sum (a
  shift of region raises the whole map, a defect part of it);
- ``fused``: the image score is the peak of the summed map, not the sum of the peaks;
- ``dihedral``: the patch memories drawn from the training crops and their seven rotations and
  mirrors (the test region's texture met in more orientations);
- ``oracle-calibration``: not a method (it reads the test labels): ``convae``'s terms standardised
  on the good test crops instead of the validation crops, whose pixels the training crops share;
  what a better calibration could gain at most;
- ``encoder-K``: a fourth term, the distance of each position's features after the reconstructive
  autoencoder's encoder block K (3x3-averaged, as PatchCore does) to the nearest of 20,000
  training positions': features learned on this texture, with more context than 9x9 pixels.

The terms are computed once per category and cached beside the runs (``terms-CATEGORY.npz``).
Decided on the kinds the generator makes (foreign, smudge: ``tuned``); the held-out kinds
(scratch, crack, warp) are reported, never chosen on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from patch_variants import measures  # the same split into all, tuned and held-out kinds

from convae.inference.anomaly import anomaly_scores, patch_terms
from convae.inference.patches import BANK, patch_maps, patch_memory
from convae.inference.run import Run, dataset_split, load

ENCODER_BLOCKS = (0, 1, 2)


def dihedral(x: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) in their eight rotations and mirrors (square images)."""
    turns = [np.rot90(x, k, (2, 3)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(turns + [t[..., ::-1] for t in turns]))


def encoder_features(run: Run, x: np.ndarray) -> list[torch.Tensor]:
    """Each of :data:`ENCODER_BLOCKS`' outputs for ``x``, averaged over 3x3 neighbourhoods."""
    h, out = run.normalizer.transform(torch.as_tensor(x).float()), []
    for block in run.model.eval().encoder[: max(ENCODER_BLOCKS) + 1]:
        h = block(h)[0]
        out.append(F.avg_pool2d(h, 3, 1, 1))
    return out


def feature_maps(train: torch.Tensor, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, *size) distance of each position's feature vector in ``x`` to the nearest of (at most
    :data:`BANK`) of ``train``'s, upsampled."""
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    memory = bank[torch.as_tensor(np.random.default_rng(0).choice(len(bank), min(BANK, len(bank)), replace=False))]
    query = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    d = torch.cat([torch.cdist(part, memory).min(1).values for part in query.split(4096)])
    d = d.reshape(len(x), 1, *x.shape[2:])
    return F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def cached_terms(run_dir: Path, cache: Path) -> dict[str, np.ndarray]:
    """Per split (val, test): the library's terms (peaks, maps), the dihedral memories' patch maps
    and the encoder-feature maps; the test crops' labels, masks and kinds."""
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=False))
    run = load(run_dir)
    train, _, _ = dataset_split(run, None, "train", at_most=2_000)
    turned = {s: patch_memory(dihedral(train), scale=s) for s in (1, 2)}
    train_features = encoder_features(run, train)
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        x, y, dataset = dataset_split(run, None, split)
        scores, maps = anomaly_scores(run, x, "max")
        image, pixel = patch_terms(run, x, scores, maps)
        out[f"{split}_peaks"] = np.stack(image, 1)
        out[f"{split}_maps"] = np.stack(pixel, 1).astype(np.float32)
        out[f"{split}_dihedral"] = np.stack([patch_maps(x, m, scale=s) for s, m in turned.items()], 1)
        features = encoder_features(run, x)
        out[f"{split}_encoder"] = np.stack(
            [feature_maps(train_features[k], features[k], x.shape[2:]) for k in ENCODER_BLOCKS], 1
        )
        if split == "test":
            out["y"], out["masks"], out["kinds"] = y, dataset.masks[:, 0], np.array(dataset.classes)
    np.savez(cache, **out)
    return out


def peaks(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(*maps.shape[:2], -1).max(-1)


def relative(maps: np.ndarray) -> np.ndarray:
    return maps - np.median(maps.reshape(*maps.shape[:2], -1), -1)[..., None, None]


def standardised(test: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Sum over terms (axis 1) of ``test`` in units of ``val``'s mean and spread per term."""
    axes = (0, *range(2, val.ndim))
    mean, std = val.mean(axes, keepdims=True), val.std(axes, keepdims=True)
    return ((test - mean) / np.where(std > 0, std, 1)).sum(1)


def variants(t: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image scores and pixel maps of the test crops, by variant."""

    def fused(maps: dict[str, np.ndarray], peaks_: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return standardised(peaks_["test"], peaks_["val"]), standardised(maps["test"], maps["val"])

    maps = {s: t[f"{s}_maps"] for s in ("val", "test")}
    # The segmenter's image term is the peak of its unsmoothed map (the library's): kept in every variant.
    seg = {s: t[f"{s}_peaks"][:, :1] for s in ("val", "test")}
    out = {"convae": fused(maps, {s: t[f"{s}_peaks"] for s in ("val", "test")})}

    rel = {s: relative(maps[s]) for s in maps}
    median = {s: np.median(maps[s][:, 0].reshape(len(maps[s]), -1), 1)[:, None] for s in maps}
    out["relative"] = fused(rel, {s: np.concatenate([seg[s] - median[s], peaks(rel[s])[:, 1:]], 1) for s in maps})

    summed = {s: standardised(maps[s], maps["val"]) for s in maps}
    top = {s: summed[s].reshape(len(summed[s]), -1).max(1) for s in summed}
    out["fused"] = ((top["test"] - top["val"].mean()) / top["val"].std(), summed["test"])

    turned = {s: np.concatenate([maps[s][:, :1], t[f"{s}_dihedral"]], 1) for s in maps}
    out["dihedral"] = fused(turned, {s: np.concatenate([seg[s], peaks(turned[s])[:, 1:]], 1) for s in maps})

    # Not a method (it reads the test labels): the terms standardised on the good test crops rather than
    # on validation crops that share pixels with the training crops; how much the calibration costs.
    good = t["y"] == list(t["kinds"]).index("good")
    out["oracle-calibration"] = fused(
        {"val": maps["test"][good], "test": maps["test"]}, {"val": t["test_peaks"][good], "test": t["test_peaks"]}
    )

    for k in ENCODER_BLOCKS:
        more = {s: np.concatenate([maps[s], t[f"{s}_encoder"][:, k : k + 1]], 1) for s in maps}
        more_peaks = {s: np.concatenate([t[f"{s}_peaks"], peaks(more[s])[:, -1:]], 1) for s in maps}
        out[f"encoder-{k}"] = fused(more, more_peaks)
    return out


def main() -> None:
    root = Path(sys.argv[1])
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    for run_dir in sorted(root.glob("run-*-inspection")):
        category = run_dir.name.split("-")[1]
        if names and category not in names:
            continue
        with torch.no_grad():
            t = cached_terms(run_dir, root / f"terms-{category}.npz")
        y, masks, kinds = t["y"], t["masks"], list(t["kinds"])
        for name, (image, pixel) in variants(t).items():
            print(json.dumps({"category": category, "variant": name, **measures(image, pixel, y, masks, kinds)}))


if __name__ == "__main__":
    main()
