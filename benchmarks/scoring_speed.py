"""How fast a run scores: images/s at 128x128, and one large image by sliding windows.

    python3 benchmarks/scoring_speed.py                 # inspection preset, RGB, 128x128 and 1024x1024
    python3 benchmarks/scoring_speed.py --large 512     # another large side
    python3 benchmarks/scoring_speed.py --patches       # and what --metric max+patch adds
    python3 benchmarks/scoring_speed.py --onnx          # and the exported scorer of the large image

Builds the `inspection` preset (untrained weights: speed does not depend on
them), with its segmenter, behind `convae.inference.scoring.Scorer`, the module
`convae score` and the exported scorer run, with the `max` score
(reconstruction, the segmenter's map or the residual, 4-pixel smoothing,
maximum); `--arch ae-ssim` times the residual-only preset. First a batch of 128x128 images (the model's own
size); then a large image, which a run trained on 128x128 patches (`--crop
128`) reconstructs by windows overlapping by half, blended. Prints one JSON
line: images/s, seconds per large image, windows per large image, and the
process's peak resident memory. With ``--patches``, also the raw-pixel patch
distances that ``--metric max+patch`` adds (``convae.inference.patches``, a
memory of 20,000 patches) on the same images, timed apart. With ``--onnx``,
also the windowed scorer exported for the large image's size (``convae export
--scores --input-size``: the windows slide inside the graph): the export's
seconds, the file's size, ONNX Runtime's seconds per large image and its
largest difference from PyTorch's map.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from common import SRC

sys.path.insert(0, str(SRC))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="inspection", help="preset or architecture (default: inspection)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="the model's input side (default 128)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch at --size (default 64)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches (default 5)")
    parser.add_argument("--large", type=int, default=1024, help="side of the large image (default 1024)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patches", action="store_true", help="also time the patch distances of max+patch")
    parser.add_argument("--onnx", action="store_true", help="also export the windowed scorer and time ONNX Runtime")
    args = parser.parse_args()
    import torch

    import convae
    from convae import presets
    from convae.data.preprocess import Normalizer
    from convae.inference.scoring import Scorer, window_starts

    device = torch.device(args.device)
    shape = (args.channels, args.size, args.size)
    model = convae.build(presets.resolve(args.arch), shape).eval().to(device)
    recipe = presets.get(args.arch).train if presets.is_preset(args.arch) else {}
    segmenter = None  # a DRAEM preset scores with its segmenter too
    if recipe.get("segmenter"):
        from convae.network.segmenter import Segmenter

        segmenter = Segmenter(recipe["segmenter"], shape).eval().to(device)
    whole = Scorer(model, Normalizer("none"), "max", segmenter=segmenter)
    windows = Scorer(model, Normalizer("none"), "max", window=args.size, segmenter=segmenter)

    def timed(scorer: Scorer, x: torch.Tensor, repeats: int) -> float:
        with torch.no_grad():
            scorer(x)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(repeats):
                scorer(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeats

    small = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
    per_batch = timed(whole, small, args.batches)
    large = torch.rand(1, args.channels, args.large, args.large, device=device)
    per_large = timed(windows, large, 2)
    row = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "segmenter": segmenter is not None,
        "size": args.size,
        "images_per_s": float(f"{args.batch / per_batch:.4g}"),
        "large": args.large,
        "windows": len(window_starts(args.large, args.size)) ** 2,
        "seconds_per_large_image": float(f"{per_large:.3g}"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.patches:  # max+patch's distances, at every scale it uses (convae.inference.patches.SCALES)
        from convae.inference.patches import BANK, patch_maps, patch_memory, scales_for

        normal = torch.rand(BANK // 100, args.channels, args.size, args.size).numpy()
        memories = {s: patch_memory(normal, scale=s) for s in scales_for(args.size)}
        started = time.perf_counter()
        for s, memory in memories.items():
            patch_maps(small.cpu().numpy(), memory, scale=s)
        row["patch_images_per_s"] = float(f"{args.batch / (time.perf_counter() - started):.4g}")
        started = time.perf_counter()
        for s, memory in memories.items():
            patch_maps(large.cpu().numpy(), memory, scale=s)
        row["patch_seconds_per_large_image"] = float(f"{time.perf_counter() - started:.3g}")
        row["patch_scales"] = list(memories)
    if args.onnx:
        row |= onnx_figures(model, windows, segmenter, large)
    print(json.dumps(row))
    return 0


def onnx_figures(model, windows, segmenter, large) -> dict:
    """Export ``windows`` (a windowed Scorer) for ``large``'s size; time the export and ONNX Runtime on it."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort
    import torch

    from convae.inference.export import export

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scorer.onnx"
        started = time.perf_counter()
        export(model.cpu(), path, scorer=windows.cpu(), segmenter=segmenter, input_size=tuple(large.shape[2:]))
        exported = time.perf_counter() - started
        session = ort.InferenceSession(str(path))
        x = large.cpu().numpy()
        session.run(None, {"input": x})  # warm-up
        started = time.perf_counter()
        for _ in range(2):
            _, onnx_map, _ = session.run(None, {"input": x})
        per_image = (time.perf_counter() - started) / 2
        with torch.no_grad():
            torch_map = windows(large.cpu())[1].numpy()
        return {
            "onnx_export_seconds": round(exported, 1),
            "onnx_mb": round(path.stat().st_size / 2**20, 1),
            "onnx_seconds_per_large_image": float(f"{per_image:.3g}"),
            "onnx_max_difference": float(f"{np.abs(onnx_map - torch_map).max():.2g}"),
        }


if __name__ == "__main__":
    raise SystemExit(main())
