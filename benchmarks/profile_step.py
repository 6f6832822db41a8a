"""Where a training step's time goes: torch.profiler over convae's own training loop.

    python benchmarks/profile_step.py --arch keras --batch 128           # the default device
    python benchmarks/profile_step.py --arch wide --set compile=false    # eager, for comparison

It trains two epochs through `convae.training.train.train` (what `convae train` calls) on
Fashion-MNIST when present, else random data of its shape. The first epoch is
warm-up (compilation, cuDNN autotuning); in the second it times the steps by the
host clock (the loop never waits for the device, so the interval between steps is
the slower of host and device), then profiles a few steps and prints the operators
that take the most host time and the most device time.
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
import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_set_flag, parse_set
from throughput import ARCHS, device_name, fashion_or_random, trainer_settings, write_npy

from convae.config import resolve_config
from convae.runtime import pick_device
from convae.training.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="keras", help=f"{', '.join(ARCHS)} or an architecture string")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (default 10)")
    parser.add_argument("--timed", type=int, default=30, help="steps timed before profiling (default 30)")
    parser.add_argument("--rows", type=int, default=20, help="operators listed per table (default 20)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto) here")
    add_set_flag(parser, "convae settings beyond its defaults, e.g. compile=false")
    args = parser.parse_args()
    extra = parse_set(parser, args.set)
    device = pick_device(args.device)

    # Whole batches only, and enough of them that the profiled steps fall inside the second epoch.
    per_epoch = args.timed + args.steps + 5
    x, source = fashion_or_random(per_epoch * args.batch)
    arch = ARCHS.get(args.arch, args.arch)
    print(f"device: {device_name(device)}; torch {torch.__version__}; data: {source}; arch: {arch}")

    with tempfile.TemporaryDirectory() as tmp:
        data_file = write_npy(os.path.join(tmp, "x.npy"), x, source)
        settings = trainer_settings(arch, data_file, args.batch, 2, device, os.path.join(tmp, "run"), extra)
        config = resolve_config(settings)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        # Steps are numbered from 1; the second epoch starts after `per_epoch` of them, and
        # the profiler warms up on the step before those it records.
        first_timed = per_epoch + 1
        first_profiled = first_timed + args.timed
        prof = profile(
            activities=activities,
            schedule=schedule(wait=first_profiled - 2, warmup=1, active=args.steps, repeat=1),
        )
        stamps: list[float] = []

        def on_step(step: int) -> None:
            if first_timed <= step <= first_profiled:
                stamps.append(time.perf_counter())
            prof.step()

        with prof:
            train(config, on_step=on_step)

    intervals = np.diff(stamps) * 1e3
    chosen = {"amp": config.amp, "channels_last": config.channels_last, "compile": config.compile}
    print(f"batch {args.batch}, settings {chosen}")
    print(
        f"step interval (second epoch, unprofiled): median {statistics.median(intervals):.3f} ms, "
        f"{args.batch / statistics.median(intervals) * 1e3:,.0f} images/s"
    )
    averages = prof.key_averages()
    print(f"\nTop {args.rows} operators by host time ({args.steps} profiled steps):")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if device.type == "cuda":
        print(f"\nTop {args.rows} operators by device time:")
        print(averages.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}")


if __name__ == "__main__":
    main()
