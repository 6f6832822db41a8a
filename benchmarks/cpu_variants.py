"""Where the CPU time goes, and which settings pay off: one training step in several variants.

    python benchmarks/cpu_variants.py --arch wide --batch 128
    python benchmarks/cpu_variants.py --arch bottleneck --profile
    python benchmarks/cpu_variants.py --arch fmnist-16-res --batch 256 --variants cl_bf16,bf16

--arch: throughput.py's models (keras, bottleneck, wide) or any preset name.
Variants: plain (NCHW float32), or parts joined by "_": cl (channels-last),
bf16 (autocast), compile (torch.compile), fused or foreach (Adam's fused or
multi-tensor implementation; else its per-parameter loop), e.g. cl_bf16_fused.
Each: two warm-up steps (compilation included, reported separately), then
--steps timed steps on random data, images/s printed; with --rounds N the
variants take turns N times and each keeps its best (a shared machine drifts).
--profile prints torch.profiler's table of the channels-last float32 step
instead. --arch and --batch take comma-separated lists.

--isa avx2 runs the same in a child process whose kernels are capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``):
an AVX2-only machine's kernel choices, measured on a newer CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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
    """One training step in ``variant``: ``plain``, or parts joined by ``_`` (cl, bf16, compile,
    fused or foreach for Adam's implementation)."""
    parts = set(variant.split("_")) - {"plain"}
    if parts - {"cl", "bf16", "compile", "fused", "foreach"}:
        raise SystemExit(f"cpu_variants.py: unknown variant {variant!r}")
    torch.manual_seed(0)
    model = convae.build(arch, (1, 28, 28))
    x = torch.rand(batch, 1, 28, 28)
    if "cl" in parts:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if "compile" in parts else model
    adam = {"fused": {"fused": True}, "foreach": {"foreach": True}}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **next((adam[p] for p in parts if p in adam), {}))
    amp = "bf16" in parts

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = F.binary_cross_entropy(out.float(), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def measure(arch: str, batch: int, variants: list[str], steps: int, rounds: int) -> dict[str, float]:
    """Best images/s of each variant over ``rounds`` turns (warm-up and compilation not timed)."""
    steps_of = {variant: step_fn(arch, batch, variant) for variant in variants}
    for step in steps_of.values():
        for _ in range(2):
            step()
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for variant, step in steps_of.items():
            started = time.perf_counter()
            for _ in range(steps):
                step()
            best[variant] = max(best[variant], batch * steps / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="bottleneck", help=f"{', '.join(ARCHS)} or a preset name (comma list)")
    parser.add_argument("--batch", default="128", help="batch sizes (comma list)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="turns per variant; each keeps its best")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--isa", choices=["native", "avx2"], default="native", help="cap the kernels at AVX2")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        argv = [a for a in sys.argv[1:] if a not in ("--isa", "avx2", "--isa=avx2")]
        sys.exit(subprocess.run([sys.executable, __file__, *argv], env={**os.environ, **AVX2}).returncode)
    for name in args.arch.split(","):
        if name not in ARCHS and not presets.is_preset(name):
            parser.error(f"--arch: expected {', '.join(ARCHS)} or a preset ({', '.join(presets.names())})")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels: "
        f"{torch.backends.cpu.get_cpu_capability()} (oneDNN cap {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')})"
    )
    for name in args.arch.split(","):
        arch = ARCHS.get(name) or presets.resolve(name)
        for batch in (int(b) for b in args.batch.split(",")):
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                step = step_fn(arch, batch, "cl")
                for _ in range(3):
                    step()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.steps):
                        step()
                print(f"{name}, batch {batch}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
                continue
            rates = measure(arch, batch, args.variants.split(","), args.steps, args.rounds)
            cells = "  ".join(f"{variant} {rate:6.0f}" for variant, rate in rates.items())
            print(f"{name:<10} b{batch:<5} img/s: {cells}", flush=True)


if __name__ == "__main__":
    main()
