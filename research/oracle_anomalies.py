"""How far the inspection recipe gets when its synthetic anomalies are the benchmark's own defects.

    python3 research/oracle_anomalies.py [--categories brick,grass] [--keep DIR] [--set epochs=300 device=cuda]

An upper bound, not a method: ``benchmarks/real_inspection.py``'s DRAEM preset trained with its
anomaly generator replaced by the benchmark's defect maker (``defect``: all five kinds, held-out
ones included, pasted into the training crops at the preset's rate), then scored as the benchmark
scores. Everything else is the preset's: networks, recipe, the 200 training crops of the top 300
rows, the test crops of the rows below. Where this oracle stays far from the issue's targets
(0.95 image ROC-AUC, 0.95 pixel ROC-AUC, 0.90 AUPRO), what is missing is not a better anomaly
generator but what the networks can learn of a texture from 200 crops of one region in the
training time (the test region's shift included); where it reaches them, the generator is.

Prints one JSON line per (category, method) and the mean lines, as the benchmark does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import real_inspection as bench  # noqa: E402
from common import add_set_flag, parse_set  # noqa: E402

import convae.training.trainer as trainer  # noqa: E402


class BenchmarkDefects:
    """Stands in for :class:`convae.data.anomalies.Anomalies`: ``fraction`` of a batch's images get
    one of the benchmark's five defect kinds (drawn per image), with its exact mask."""

    def __init__(self, other: np.ndarray, fraction: float = 0.5):
        self.other, self.fraction = other, fraction

    def __call__(self, x: torch.Tensor, low: float, high: float, generator: torch.Generator | None = None):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        scale = max(high - low, 1e-12)
        images = ((x - low) / scale * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out, masks = x.clone(), torch.zeros(len(x), 1, *x.shape[2:])
        for i, image in enumerate(images):
            if rng.random() >= self.fraction:
                continue
            bad, mask = bench.defect(str(rng.choice(bench.KINDS)), image, self.other, rng)
            out[i] = torch.from_numpy(bad).permute(2, 0, 1).to(x.dtype) / 255 * scale + low
            masks[i, 0] = torch.from_numpy(mask)
        return out, masks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", default=",".join(bench.CATEGORIES), help="comma-separated (default: all)")
    parser.add_argument("--keep", help="write the sets and runs here instead of a temporary folder")
    add_set_flag(parser, "training settings beyond the preset's recipe, e.g. epochs=300 device=cuda")
    args = parser.parse_args()
    settings = parse_set(parser, args.set)
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        for name in args.categories.split(","):
            root = bench.build(work, name)
            other = bench.foreign_source(name)
            trainer.Anomalies = lambda sources, fraction, other=other: BenchmarkDefects(other, fraction)
            for reported, r in bench.convae_method(root, "inspection", work, settings).items():
                bench.report(name, f"oracle {reported}", r, rows)
    bench.report_means(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
