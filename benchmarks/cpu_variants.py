"""Where the CPU time goes, and which settings pay off: one training step in several variants.

    python benchmarks/cpu_variants.py --arch wide --batch 128
    python benchmarks/cpu_variants.py --arch bottleneck --profile
    python benchmarks/cpu_variants.py --arch fmnist-16-res --batch 256 --variants cl_bf16,bf16

--arch: throughput.py's models (keras, bottleneck, wide) or any preset name.
Variants: plain (NCHW float32), cl (channels-last), cl_bf16 (channels-last and
bf16 autocast), bf16 (NCHW and bf16 autocast), fused (fused Adam), compile and
cl_compile (torch.compile).
Each: two warm-up steps (compilation included, reported separately), then
--steps timed steps on random data, images/s printed. --profile prints
torch.profiler's table of the channels-last float32 step instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import ARCHS

import convae
from convae import presets

VARIANTS = ("plain", "cl", "cl_bf16", "bf16", "fused", "compile", "cl_compile")


def step_fn(arch: str, batch: int, variant: str):
    torch.manual_seed(0)
    model = convae.build(arch, (1, 28, 28))
    x = torch.rand(batch, 1, 28, 28)
    if variant.startswith("cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if "compile" in variant else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True if variant == "fused" else None)
    amp = variant.endswith("bf16")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = F.binary_cross_entropy(out.float(), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="bottleneck", help=f"{', '.join(ARCHS)} or a preset name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.arch not in ARCHS and not presets.is_preset(args.arch):
        parser.error(f"--arch: expected {', '.join(ARCHS)} or a preset ({', '.join(presets.names())})")
    arch = ARCHS.get(args.arch) or presets.resolve(args.arch)
    print(f"{args.arch}, batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = step_fn(arch, args.batch, "cl")
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    for variant in args.variants.split(","):
        step = step_fn(arch, args.batch, variant)
        started = time.perf_counter()
        for _ in range(2):
            step()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        rate = args.batch * args.steps / (time.perf_counter() - started)
        print(f"{variant:<11} {rate:8.0f} img/s   (warm-up {warm:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
