"""Visual inspection on real photographs: image and pixel ROC-AUC, AUPRO, per category and defect kind.

    python3 benchmarks/real_inspection.py                                # every category, every method
    python3 benchmarks/real_inspection.py --categories brick --methods knn
    python3 benchmarks/real_inspection.py --methods ae-ssim --keep sets/ # keep the sets (MVTec AD's layout)
    python3 benchmarks/real_inspection.py --methods inspection --set epochs=300 device=cuda  # another recipe

The categories are photographs that ship with scikit-image (nothing is downloaded): ``brick``,
``grass`` and ``gravel`` (grey textures, 512x512) and ``tissue`` (immunohistochemistry, RGB). Each
is cut in two: training crops (128x128, 200 of them) come from its top 300 rows, test crops from
the rows below, which no method sees in training. Defects are pasted into test crops with exact
masks, in five kinds:

==========  =====================================================  ==========================
kind        what                                                   like the generator's?
==========  =====================================================  ==========================
foreign     a blob of another photograph (another category)         yes: a pasted texture
smudge      a blob darkened or brightened, soft-edged               yes: a blob of colour
scratch     a thin bright or dark curve, 1-2 pixels wide            **no**: held out
crack       a dark branching line                                   **no**: held out
warp        the texture swirled inside a disc (nothing added)       **no**: held out
==========  =====================================================  ==========================

so the three held-out kinds measure what a method learned of normal texture, not of the
anomaly generator. Methods:

- ``knn``: no training; each 9x9 pixel patch of a test image is scored by its distance to the
  nearest of 20,000 9x9 patches of the training crops; the map is upsampled to the image, the
  image score is its maximum (``convae.inference.patches``).
- ``ae-ssim``: ``convae train --arch ae-ssim`` (Bergmann et al.'s AE-SSIM recipe) then
  ``convae score``.
- ``inspection``: ``convae train --arch inspection`` then ``convae score``, and again with
  ``--metric max+patch`` (the segmenter's map and the patch distances together), reported as
  ``inspection max+patch``.

Prints one JSON line per (category, method) and a mean line per method; training minutes are
this machine's (name it with the figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SRC, add_set_flag, parse_set

sys.path.insert(0, str(SRC))

SIZE, TRAIN_ROWS = 128, 300
KINDS = ("foreign", "smudge", "scratch", "crack", "warp")
HELD_OUT = ("scratch", "crack", "warp")
CATEGORIES = ("brick", "grass", "gravel", "tissue")


def photograph(name: str) -> np.ndarray:
    """(H, W, C) uint8 of a scikit-image photograph."""
    import skimage.data

    image = skimage.data.immunohistochemistry() if name == "tissue" else getattr(skimage.data, name)()
    return image[..., None] if image.ndim == 2 else image


def foreign_source(name: str) -> np.ndarray:
    """The photograph that ``foreign`` defects of category ``name`` are cut from: the next category's."""
    return photograph(CATEGORIES[(CATEGORIES.index(name) + 1) % len(CATEGORIES)])


def crops(image: np.ndarray, rows: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    top = rng.integers(rows[0], rows[1] - SIZE + 1, n)
    left = rng.integers(0, image.shape[1] - SIZE + 1, n)
    return np.stack([image[t : t + SIZE, x : x + SIZE] for t, x in zip(top, left)])


# ----------------------------------------------------------------------------- defects with exact masks


def blob(rng: np.random.Generator, radius: tuple[int, int] = (8, 20)) -> np.ndarray:
    """An irregular filled shape: a disc whose radius varies smoothly with the angle."""
    r0 = rng.uniform(*radius)
    cy, cx = rng.uniform(r0 + 4, SIZE - r0 - 4, 2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = sum(rng.uniform(0, 0.25) * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    return np.hypot(yy - cy, xx - cx) <= r0 * (1 + wobble)


def stroke(rng: np.random.Generator, branches: int, width: tuple[int, int]) -> np.ndarray:
    """A mask of curved lines drawn by Pillow: a quadratic curve (branches 0) or a random walk that forks."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    w = int(rng.integers(width[0], width[1] + 1))
    if branches == 0:
        p0, p1, p2 = rng.uniform(10, SIZE - 10, (3, 2))
        t = np.linspace(0, 1, 60)[:, None]
        points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        draw.line([tuple(p) for p in points], fill=255, width=w)
    else:
        start = rng.uniform(30, SIZE - 30, 2)
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(branches + 1):
            p, h = start.copy(), heading + rng.uniform(-1.2, 1.2)
            points = [tuple(p)]
            for _ in range(int(rng.integers(8, 16))):
                h += rng.normal(0, 0.5)
                p = np.clip(p + 3 * np.array([np.cos(h), np.sin(h)]), 0, SIZE - 1)
                points.append(tuple(p))
            draw.line(points, fill=255, width=w)
            start = np.array(points[len(points) // 2])
    return np.asarray(canvas) > 0


def defect(kind: str, image: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(defective image, mask) of one kind pasted into ``image`` (H, W, C) uint8; ``other`` another photograph."""
    out = image.astype(np.float64)
    if kind == "foreign":
        mask = blob(rng)
        patch = crops(other, (0, other.shape[0]), 1, rng)[0].astype(np.float64)
        if patch.shape[-1] != out.shape[-1]:
            patch = np.repeat(patch.mean(-1, keepdims=True), out.shape[-1], -1)
        out[mask] = patch[mask]
    elif kind == "smudge":
        from scipy.ndimage import gaussian_filter

        mask = blob(rng)
        alpha = gaussian_filter(mask.astype(np.float64), 1.5)
        shift = rng.choice([-1, 1]) * rng.uniform(45, 80)
        out = out + (alpha * shift)[..., None]
        mask = alpha > 0.5
    elif kind in ("scratch", "crack"):
        mask = stroke(rng, 0 if kind == "scratch" else 2, (1, 2))
        value = rng.uniform(200, 250) if kind == "scratch" and rng.random() < 0.5 else rng.uniform(10, 50)
        out[mask] = value
    elif kind == "warp":
        from scipy.ndimage import map_coordinates

        radius = rng.uniform(14, 24)
        # Of five places, the busiest: a swirl of a flat area changes nothing a person could see.
        places = rng.uniform(radius + 4, SIZE - radius - 4, (5, 2))
        grey = out.mean(-1)
        busy = [grey[int(y) - 8 : int(y) + 8, int(x) - 8 : int(x) + 8].std() for y, x in places]
        cy, cx = places[int(np.argmax(busy))]
        yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
        r = np.hypot(yy - cy, xx - cx)
        turn = rng.choice([-1, 1]) * rng.uniform(1.5, 2.5) * np.clip(1 - r / radius, 0, None) ** 2
        sy = cy + (yy - cy) * np.cos(turn) - (xx - cx) * np.sin(turn)
        sx = cx + (yy - cy) * np.sin(turn) + (xx - cx) * np.cos(turn)
        for c in range(out.shape[-1]):
            out[..., c] = map_coordinates(out[..., c], [sy, sx], order=1, mode="reflect")
        mask = np.hypot(sy - yy, sx - xx) >= 1.0  # where a pixel came from at least one pixel away
    else:
        raise ValueError(kind)
    return np.clip(out, 0, 255).round().astype(np.uint8), mask


def build(root: Path, name: str, n_train: int = 200, n_good: int = 20, per_kind: int = 10, seed: int = 0) -> Path:
    """One category in MVTec AD's layout below ``root``."""
    from PIL import Image

    rng = np.random.default_rng([seed, CATEGORIES.index(name)])
    image, other = photograph(name), foreign_source(name)
    base = root / name

    def save(folder: str, i: int, a: np.ndarray) -> Path:
        path = base / folder / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path)
        return path

    for i, a in enumerate(crops(image, (0, TRAIN_ROWS), n_train, rng)):
        save("train/good", i, a)
    test = crops(image, (TRAIN_ROWS, image.shape[0]), n_good + per_kind * len(KINDS), rng)
    for i, a in enumerate(test[:n_good]):
        save("test/good", i, a)
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            bad, mask = defect(kind, test[n_good + k * per_kind + i], other, rng)
            save(f"test/{kind}", i, bad)
            mask_path = base / "ground_truth" / kind / f"{i:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
    return base


# ----------------------------------------------------------------------------- the raw-pixel baseline


def knn_method(root: Path) -> dict:
    from convae.data import floats, load
    from convae.inference.anomaly import pixel_metrics
    from convae.inference.patches import patch_maps, patch_memory

    dataset = load(f"mvtec:{root}")
    started = time.perf_counter()
    maps = patch_maps(floats(dataset.x_test), patch_memory(floats(dataset.x_train)))
    scores = maps.reshape(len(maps), -1).max(axis=1)
    from sklearn.metrics import roc_auc_score

    y = dataset.y_test
    result = {"image_auroc": float(roc_auc_score(y != 0, scores)), "train_minutes": 0.0}
    result |= pixel_metrics(maps, dataset.masks[:, 0], scores, y, dataset.classes)
    result["score_seconds"] = time.perf_counter() - started
    return result


def convae_method(root: Path, arch: str, work: Path, settings: dict | None = None) -> dict[str, dict]:
    """Train ``arch`` on the category, then score it: {method name: result}."""
    from convae.config import resolve_config
    from convae.inference.anomaly import score
    from convae.training.train import train

    out = work / f"run-{root.name}-{arch}"
    settings = dict(data=f"mvtec:{root}", arch=arch, quiet=True, histograms=False, out=str(out)) | (settings or {})
    config = resolve_config(settings)
    started = time.perf_counter()
    train(config)
    minutes = {"train_minutes": (time.perf_counter() - started) / 60}
    results = {arch: score(out) | minutes}
    if config.segmenter:
        results[f"{arch} max+patch"] = score(out, metric="max+patch") | minutes
    return results


KEYS = ("image_auroc", "pixel_auroc", "aupro")


def report(category: str, method: str, result: dict, rows: dict[str, list[dict]]) -> None:
    """Print one (category, method) result as a JSON line and keep it in ``rows`` for :func:`report_means`."""
    row = {"category": category, "method": method, **{k: round(result[k], 3) for k in KEYS}}
    row["train_minutes"] = round(result["train_minutes"], 1)
    row["per_type"] = {t: {k: round(v[k], 3) for k in KEYS} for t, v in result["per_type"].items()}
    rows.setdefault(method, []).append(row)
    print(json.dumps(row), flush=True)


def report_means(rows: dict[str, list[dict]]) -> None:
    """Print each method's mean over its categories, and over the held-out kinds alone."""
    for method, group in rows.items():
        mean = {k: round(float(np.mean([g[k] for g in group])), 3) for k in (*KEYS, "train_minutes")}
        held = {k: round(float(np.mean([g["per_type"][t][k] for g in group for t in HELD_OUT])), 3) for k in KEYS}
        print(json.dumps({"method": method, "mean": mean, "held_out_kinds": held}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated (default: all)")
    parser.add_argument("--methods", default="knn,ae-ssim,inspection", help="comma-separated: knn, or a --arch")
    parser.add_argument("--keep", help="write the sets (and runs) here instead of a temporary folder")
    add_set_flag(parser, "training settings beyond each --arch's recipe, e.g. epochs=300 device=cuda")
    args = parser.parse_args()
    settings = parse_set(parser, args.set)
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for name in args.categories.split(","):
            root = build(work, name)
            for method in args.methods.split(","):
                results = {"knn": knn_method(root)} if method == "knn" else convae_method(root, method, work, settings)
                for reported, r in results.items():
                    report(name, reported, r, rows)
    report_means(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
