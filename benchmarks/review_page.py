"""How large and how fast the review page is for many images: writing it, its size, a browser opening it.

    python3 benchmarks/review_page.py                 # 1,000 RGB images of 128x128 with masks
    python3 benchmarks/review_page.py --images 200

Builds a `convae.inference.review.Review` of crops of a photograph (scikit-image's `astronaut`: JPEG
sizes depend on what the pictures show, and noise would be the worst case), smooth random maps and
masks, writes it, then opens it in headless Chromium (`chromium --dump-dom`,
which returns once the page's script has run) and prints one JSON line: seconds to write, megabytes,
seconds for the browser (its own start-up included: opening a blank page is timed too), and the cards the
browser found.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SRC

sys.path.insert(0, str(SRC))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    from convae.inference.review import Review, write_review

    rng = np.random.default_rng(0)
    n, s = args.images, args.size
    import skimage.data
    from scipy.ndimage import gaussian_filter

    photo = skimage.data.astronaut().astype(np.float32) / 255
    tops, lefts = rng.integers(0, photo.shape[0] - s, n), rng.integers(0, photo.shape[1] - s, n)
    x = np.stack([photo[t : t + s, c : c + s].transpose(2, 0, 1) for t, c in zip(tops, lefts)])
    maps = gaussian_filter(rng.random((n, s, s), dtype=np.float32), (0, 4, 4))
    masks = (rng.random((n, s, s)) > 0.97).astype(np.uint8)
    types = ["good" if i % 3 == 0 else f"kind{i % 3}" for i in range(n)]
    masks[[t == "good" for t in types]] = 0
    scores = maps.reshape(n, -1).max(1).astype(np.float64) + np.array([t != "good" for t in types])
    review = Review(
        title="benchmark",
        x=x,
        reconstructions=x[::-1].copy(),
        maps=maps,
        scores=scores,
        threshold=1.0,
        validation_scores=rng.random(100),
        summary={"metric": "max", "image_auroc": 1.0, "pixel_auroc": 0.5, "aupro": 0.5},
        types=types,
        masks=masks,
        files=[f"test/{t}/{i:04d}.png" for i, t in enumerate(types)],
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "review.html"
        started = time.perf_counter()
        write_review(page, review)
        written = time.perf_counter() - started
        row = {"images": n, "size": s, "write_s": round(written, 2), "mb": round(page.stat().st_size / 1e6, 2)}
        if chromium:
            flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
            blank = Path(tmp) / "blank.html"
            blank.write_text("<!DOCTYPE html><title>blank</title>")
            for name, target in (("blank_s", blank), ("open_s", page)):
                started = time.perf_counter()
                dom = subprocess.run([*flags, target.as_uri()], capture_output=True, text=True, timeout=300).stdout
                row[name] = round(time.perf_counter() - started, 2)
            row["cards"] = dom.count('class="card')
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
