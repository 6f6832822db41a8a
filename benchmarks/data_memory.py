"""Peak memory of training on a folder of images: what the originals cost against what training needs.

    python3 benchmarks/data_memory.py --photos 120            # camera-sized JPEGs (3000x2000) at 64x64
    python3 benchmarks/data_memory.py --pngs 30000            # 64x64 RGB PNGs
    python3 benchmarks/data_memory.py --photos 120 --keep DIR # keep the generated folder

Generates the folder (smooth colour fields with noise, so JPEG sizes are
camera-like), then runs `convae train --data folder:DIR --image-size 64
--channels 3 --max-steps 5` in a child process twice, with an empty cache of
decoded images (it is built) and then with it, and prints each one's peak
resident memory (ru_maxrss), the pixels training needs (N x 3 x 64 x 64 bytes
as uint8) and the wall time. The figures include PyTorch itself (0.3-0.4 GB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import peak_of


def make_folder(root: Path, count: int, size: tuple[int, int], suffix: str) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    total = 0
    for i in range(count):
        phase = rng.random(3) * 6
        field = np.stack([np.sin(xx / w * (2 + c) + yy / h * 3 + phase[c]) for c in range(3)], -1) * 100 + 128
        noise = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8))
        path = root / f"{i:06d}{suffix}"
        image.save(path, quality=90) if suffix == ".jpg" else image.save(path)
        total += path.stat().st_size
    return total


def measure(folder: Path, out: Path, cache: Path) -> tuple[float, float]:
    command = [sys.executable, "-m", "convae", "train", "--data", f"folder:{folder}", "--image-size", "64"]
    command += ["--channels", "3", "--max-steps", "5", "--quiet", "--histograms", "false", "--out", str(out)]
    peak, seconds, _ = peak_of(command, env={"CONVAE_CACHE": str(cache)})
    return peak, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=0, help="JPEGs of 3000x2000")
    parser.add_argument("--pngs", type=int, default=0, help="PNGs of 64x64")
    parser.add_argument("--keep", help="generate the folder here and keep it")
    args = parser.parse_args()
    if bool(args.photos) == bool(args.pngs):
        parser.error("give one of --photos N or --pngs N")
    count, size, suffix = (args.photos, (2000, 3000), ".jpg") if args.photos else (args.pngs, (64, 64), ".png")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        on_disk = make_folder(folder, count, size, suffix)
        cache = Path(tmp) / "cache"
        runs = [measure(folder, Path(tmp) / f"run{i}", cache) for i in range(2)]  # the cache built, then read
    pixels = count * 3 * 64 * 64 / 2**20
    print(f"{count} {suffix[1:]} files of {size[1]}x{size[0]} ({on_disk / 2**20:.0f} MB on disk), trained at 64x64:")
    print(f"training pixels {pixels:,.0f} MB as uint8 ({4 * pixels:,.0f} MB as float32)")
    for (peak, seconds), what in zip(runs, ("decoding into the cache", "from the cache")):
        print(f"{what}: peak RSS {peak:,.0f} MB; {seconds:.0f} s to train 5 steps, loading included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
