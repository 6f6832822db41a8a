"""Which patch distances add most to DRAEM's segmenter: variants of ``max+patch`` on kept runs, no training.

    python3 benchmarks/real_inspection.py --methods inspection --keep /tmp/ri   # train, keep the runs
    python3 research/patch_variants.py /tmp/ri                                  # score them

``max+patch`` sums two peaks, each z-scored on the run's validation images: the segmenter's and
that of the raw 9x9 patch distances (``convae.inference.patches``). The grey, stochastic textures
(grass, gravel) lose most where the test region differs from the training region. Variants of the
patch term, each fused the same way:

- ``raw``: convae's (9x9 pixels, every 2 pixels);
- ``centred``: each patch minus its own mean per channel (blind to slow changes of brightness
  between regions; a smudge is then the segmenter's to find);
- ``half``: 9x9 patches of the image at half resolution (18 pixels of context), the map upsampled;
- ``raw+half``: both terms, three peaks summed (convae's ``max+patch`` since 2026-12-04);
- ``quarter``: 9x9 patches at a quarter of the resolution (36 pixels of context: a blob of another
  texture, a swirl); ``raw+half+quarter``: all three scales, four peaks summed.

Decided on the kinds the generator makes (foreign, smudge: ``tuned`` in the output); the held-out
kinds (scratch, crack, warp) are reported, never chosen on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convae.inference.anomaly import aupro
from convae.inference.run import dataset_split, load
from convae.inference.scoring import smooth

HELD_OUT = ("scratch", "crack", "warp")
BLUR = 4.0
PATCH, BANK, STRIDE = 9, 20_000, 2


def grid(images: torch.Tensor, centred: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, rows, cols, D) patches of (N, C, H, W) images every STRIDE pixels."""
    n, c = images.shape[:2]
    rows, cols = images.shape[2] - PATCH + 1, images.shape[3] - PATCH + 1
    p = F.unfold(images, PATCH).transpose(1, 2).reshape(n, rows, cols, c, PATCH * PATCH)
    if centred:
        p = p - p.mean(-1, keepdim=True)
    return p.reshape(n, rows, cols, -1)[:, ::STRIDE, ::STRIDE], (rows, cols)


def distance_maps(train: np.ndarray, x: np.ndarray, centred: bool, scale: int) -> np.ndarray:
    def prepare(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
        return F.avg_pool2d(t, scale) if scale > 1 else t

    tr = prepare(train)
    g, _ = grid(tr, centred)
    bank = g.reshape(-1, g.shape[-1])
    pick = np.random.default_rng(0).choice(len(bank), min(BANK, len(bank)), replace=False)
    memory = bank[torch.as_tensor(pick)]
    out = []
    h, w = x.shape[2:]
    for image in prepare(x):
        g, (rows, cols) = grid(image[None], centred)
        small = g.shape[1:3]
        q = g.reshape(-1, g.shape[-1])
        d = torch.cat([torch.cdist(part, memory).min(1).values for part in q.split(4096)]).reshape(1, 1, *small)
        inner = F.interpolate(d, size=(rows, cols), mode="bilinear", align_corners=True)
        pad = PATCH // 2
        full = F.pad(inner, (pad, pad, pad, pad), mode="replicate")
        if scale > 1:
            full = F.interpolate(full, size=(h, w), mode="bilinear", align_corners=False)
        out.append(full[0, 0])
    return torch.stack(out).numpy()


def z(m: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (m - ref.mean()) / (ref.std() + 1e-12)


def peak(m: np.ndarray) -> np.ndarray:
    return m.reshape(len(m), -1).max(1)


def measures(image, pixel, y, masks, kinds) -> dict:
    def on(keep: np.ndarray) -> dict:
        return {
            "image": roc_auc_score(y[keep] != 0, image[keep]),
            "pixel": roc_auc_score(masks[keep].ravel() > 0, pixel[keep].ravel()),
            "aupro": aupro(masks[keep], pixel[keep]),
        }

    held = [k for k, name in enumerate(kinds) if name in HELD_OUT]
    tuned = [k for k, name in enumerate(kinds) if name not in HELD_OUT and name != "good"]
    good = [k for k, name in enumerate(kinds) if name == "good"]
    everything = np.ones(len(y), bool)
    rows = {"all": on(everything), "tuned": on(np.isin(y, good + tuned)), "held": on(np.isin(y, good + held))}
    return {part: {k: round(float(v), 3) for k, v in r.items()} for part, r in rows.items()}


def main() -> None:
    root = Path(sys.argv[1])
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else None
    for run_dir in sorted(root.glob("run-*-inspection")):
        category = run_dir.name.split("-")[1]
        if names and category not in names:
            continue
        run = load(run_dir)
        train, _, _ = dataset_split(run, None, "train", at_most=2000)
        val, _, _ = dataset_split(run, None, "val")
        test, y, dataset = dataset_split(run, None, "test")
        masks, kinds = dataset.masks[:, 0], list(dataset.classes)
        scorer = run.scorer("max")
        with torch.no_grad():
            seg_val, seg_test = (
                torch.cat([scorer.residual(p)[1] for p in torch.as_tensor(a).split(16)]).numpy() for a in (val, test)
            )
        blur_val, blur_test = (smooth(torch.as_tensor(m), BLUR).numpy() for m in (seg_val, seg_test))
        terms = {
            "raw": (False, 1),
            "centred": (True, 1),
            "half": (False, 2),
            "quarter": (False, 4),
        }
        maps = {k: (distance_maps(train, val, *v), distance_maps(train, test, *v)) for k, v in terms.items()}
        row = {"category": category}
        row["segmenter"] = measures(peak(seg_test), blur_test, y, masks, kinds)
        for name in [*terms, "raw+half", "raw+half+quarter"]:
            parts = name.split("+")
            score = z(peak(seg_test), peak(seg_val)) + sum(z(peak(maps[p][1]), peak(maps[p][0])) for p in parts)
            pixel = z(blur_test, blur_val) + sum(z(maps[p][1], maps[p][0]) for p in parts)
            row[name] = measures(score, pixel, y, masks, kinds)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
