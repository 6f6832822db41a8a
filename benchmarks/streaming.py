"""Data at scale: streamed against resident throughput, time to the first step, memory on huge arrays.

    python3 benchmarks/streaming.py --throughput          # 64x64 RGB .npy: host memory vs streamed, side by side
    python3 benchmarks/streaming.py --first-step 5000     # a folder of PNGs: first step with and without the cache
    python3 benchmarks/streaming.py --big 1,4,40          # sparse .npy files of 1, 4 and 40 GB, --max-steps 40
    python3 benchmarks/streaming.py --dataset 20000       # convae.fit(Dataset of PNGs): streamed vs resident
    python3 benchmarks/streaming.py --throughput --size 128 --device cuda --resident device  # on a GPU

--throughput trains the same run twice per placement (resident, stream,
resident, stream: drift cancels; resident is host memory, or the GPU's) on a generated uint8 array and prints the median
images/s of steps 10 onwards, timed between ``on_step`` calls. --first-step
times `train()` from its call to its first optimizer step on a generated
folder: once with an empty cache (decoding and writing it), once with the cache
built. --big writes a sparse file (it costs no disk), runs `convae train` on it
in a child process with ``--max-steps 40`` and prints the child's peak resident
memory (ru_maxrss, its DataLoader workers apart; PyTorch alone is 0.3-0.4 GB).
--dataset writes N PNGs (128x128 crops of scikit-image's colour photographs)
and trains on a torch ``Dataset`` that decodes them on demand, in a child
process each: ``convae.fit(dataset, placement="stream")`` against the same
images decoded into one array first, printing each child's peak RSS and the
median images/s of its steps 10 onwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch.utils.data
from common import SRC, peak_of

sys.path.insert(0, str(SRC))
ARCH = "conv(32,3,stride=2) relu conv(64,3,stride=2) relu conv(64,3,stride=2) relu dense(64)"


def step_rate(config, skip: int = 10) -> float:
    """Median images/s of a run's steps after the first ``skip``."""
    from convae.training.train import train

    stamps: list[float] = []
    train(config, on_step=lambda step: stamps.append(time.perf_counter()))
    gaps = np.diff(stamps[skip:])
    return config.batch_size / statistics.median(gaps)


def throughput(tmp: Path, size: int, samples: int, steps: int, device: str, workers: int, resident: str) -> None:
    from convae.config import resolve_config

    path = tmp / "x.npy"
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(samples, 3, size, size))
    for i in range(0, samples, 1000):
        x[i : i + 1000] = rng.integers(0, 256, (min(1000, samples - i), 3, size, size), dtype=np.uint8)
    x.flush()
    del x
    rates: dict[str, list[float]] = {resident: [], "stream": []}
    for turn, placement in enumerate([resident, "stream", resident, "stream"]):
        config = resolve_config(
            dict(data=f"npy:{path}", arch=ARCH, epochs=steps, max_steps=steps, batch_size=128, device=device)
            | dict(placement=placement, workers=workers, quiet=True, histograms=False, embedding_samples=0)
            | dict(val_samples=512, out=str(tmp / f"run{turn}"))
        )
        rates[placement].append(step_rate(config))
    host, stream = max(rates[resident]), max(rates["stream"])
    print(
        f"{samples} samples of 3x{size}x{size} uint8 ({samples * 3 * size * size / 2**20:,.0f} MB), {device}, "
        f"batch 128, {workers if workers is not None else 'default'} workers, "
        f"median of steps 10-{steps}, best of two runs each:"
    )
    print(
        f"resident ({resident}) {host:,.0f} img/s; streamed from the file {stream:,.0f} img/s "
        f"({100 * stream / host:.0f} % of resident); all runs: {rates}"
    )


def first_step(tmp: Path, count: int) -> None:
    from PIL import Image

    from convae.config import resolve_config
    from convae.training.train import train

    folder = tmp / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    os.environ["CONVAE_CACHE"] = str(tmp / "cache")
    times = []
    for turn in ("without a cache", "with the cache"):
        config = resolve_config(
            dict(data=f"folder:{folder}", arch=ARCH, max_steps=1, quiet=True, histograms=False)
            | dict(embedding_samples=0, val_samples=256, out=str(tmp / turn.replace(" ", "-")))
        )
        started, stamps = time.perf_counter(), []
        train(config, on_step=lambda step, stamps=stamps: stamps.append(time.perf_counter()))
        times.append(stamps[0] - started)
    print(
        f"{count} PNGs of 64x64 RGB: time to the first step {times[0]:.1f} s without a cache (decoding and "
        f"writing it), {times[1]:.1f} s with it ({times[0] / times[1]:.0f}x)"
    )


def big(tmp: Path, gigabytes: float, placement: str, size: int = 64) -> None:
    row = 3 * size * size
    samples = int(gigabytes * 2**30 // row)
    path = tmp / f"big{gigabytes:g}.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(samples, 3, size, size))  # sparse
    some = min(1000, samples)  # random, the rest zeros: a range to scale by
    x[:some] = np.random.default_rng(0).integers(0, 256, (some, 3, size, size), dtype=np.uint8)
    del x
    command = [sys.executable, "-m", "convae", "train", "--data", f"npy:{path}", "--arch", ARCH, "--max-steps", "40"]
    command += ["--placement", placement, "--quiet", "--histograms", "false", "--out", str(tmp / f"run{gigabytes:g}")]
    peak, seconds, _ = peak_of(command)
    path.unlink()
    print(
        f"{gigabytes:g} GB array ({samples:,} samples of 3x{size}x{size} uint8), --max-steps 40: "
        f"placement {placement}: peak RSS {peak:,.0f} MB (the largest process), {seconds:.0f} s in all"
    )


class PNGFolder(torch.utils.data.Dataset):
    """The torch Dataset a user writes for a folder of images: each item decoded when asked for."""

    def __init__(self, folder: Path):
        self.paths = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        return torch.from_numpy(np.array(Image.open(self.paths[i]))).permute(2, 0, 1)


def write_pngs(folder: Path, count: int, size: int = 128) -> None:
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        Image.fromarray(photo[top : top + size, left : left + size]).save(folder / f"{i:06d}.png")


def dataset_child(folder: Path, placement: str, out: Path, steps: int) -> None:
    """In the child: train on the folder's Dataset, streamed, or decoded into one array first."""
    from convae.config import resolve_config
    from convae.data import PYTHON_SOURCE, from_python
    from convae.training.train import train

    dataset = PNGFolder(folder)
    if placement == "resident":  # the same images decoded into one array first (as fit() did before)
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=2)
        images = np.empty((len(dataset), *dataset[0].shape), np.uint8)
        for i, batch in enumerate(loader):
            images[i * 256 : i * 256 + len(batch)] = batch.numpy()
        dataset = images
    config = resolve_config(
        dict(data=PYTHON_SOURCE, arch=ARCH, epochs=steps, max_steps=steps, batch_size=128, quiet=True)
        | dict(placement="stream" if placement == "stream" else "auto", histograms=False, embedding_samples=0)
        | dict(val_samples=512, out=str(out))
    )
    stamps: list[float] = []
    train(config, on_step=lambda step: stamps.append(time.perf_counter()), dataset=from_python(dataset, labels=False))
    print(f"rate {config.batch_size / statistics.median(np.diff(stamps[10:])):.1f}", file=sys.stderr)


def dataset_benchmark(tmp: Path, count: int, steps: int) -> None:
    started = time.perf_counter()
    write_pngs(tmp / "pngs", count)
    print(f"{count} PNGs of 128x128 RGB written in {time.perf_counter() - started:.0f} s", flush=True)
    for placement in ("stream", "resident"):
        command = [sys.executable, __file__, "--dataset-child", placement, "--tmp", str(tmp), "--steps", str(steps)]
        peak, seconds, err = peak_of(command)
        rate = float(err.split("rate ")[-1].split()[0])
        print(
            f"fit(Dataset) {placement:8s}: peak RSS {peak:,.0f} MB (the largest process), "
            f"{rate:,.0f} img/s (median of steps 10-{steps}, batch 128), {seconds:.0f} s in all",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput", action="store_true", help="host memory against streamed, side by side")
    parser.add_argument("--size", type=int, default=64, help="--throughput: image side (default 64)")
    parser.add_argument("--samples", type=int, default=20_000, help="--throughput: array length (default 20,000)")
    parser.add_argument("--steps", type=int, default=100, help="--throughput: steps a run (default 100)")
    parser.add_argument("--workers", type=int, help="--throughput: DataLoader workers (default: convae's)")
    parser.add_argument("--device", default="cpu", help="--throughput: cpu or cuda")
    parser.add_argument("--resident", default="host", help="--throughput: host or device (a GPU's memory)")
    parser.add_argument("--first-step", type=int, default=0, metavar="N", help="a folder of N PNGs")
    parser.add_argument("--big", default="", metavar="GB,...", help="sparse arrays of these sizes")
    parser.add_argument("--placement", default="stream", help="--big: convae's --placement (default stream)")
    parser.add_argument("--dataset", type=int, default=0, metavar="N", help="fit(Dataset) of N PNGs, both ways")
    parser.add_argument("--dataset-child", choices=["stream", "resident"], help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help="where to write the data (default: the system's temporary folder)")
    args = parser.parse_args()
    if args.dataset_child:
        dataset_child(Path(args.tmp) / "pngs", args.dataset_child, Path(args.tmp) / args.dataset_child, args.steps)
        return 0
    if not (args.throughput or args.first_step or args.big or args.dataset):
        parser.error("give --throughput, --first-step N, --big GB,... or --dataset N")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.throughput:
            throughput(Path(tmp), args.size, args.samples, args.steps, args.device, args.workers, args.resident)
        if args.first_step:
            first_step(Path(tmp), args.first_step)
        for gb in filter(None, args.big.split(",")):
            big(Path(tmp), float(gb), args.placement)
        if args.dataset:
            dataset_benchmark(Path(tmp), args.dataset, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
